r"""Data and shipped pretrained models of the experiments (no downloads).

``ring``: a 2-D ring of eight Gaussians, the unconditional MLP noise predictor pretrained on it
and the class-conditional one (eight classes and a null class); ``ring_classifier``: a small
classifier :math:`\log p(c\mid x)` of the ring's components and its exact referee.
"""

from .ring import (
    conditional_ring_kl,
    load_pretrained_conditional_ring,
    load_pretrained_ring,
    pretrain_conditional_ring_model,
    pretrain_ring_model,
    ring_mixture,
    sample_labelled,
)
from .ring_classifier import (
    ClassLogProbability,
    RingClassifier,
    exact_log_posterior,
    train_ring_classifier,
)

__all__ = [
    "ClassLogProbability",
    "RingClassifier",
    "conditional_ring_kl",
    "exact_log_posterior",
    "load_pretrained_conditional_ring",
    "load_pretrained_ring",
    "pretrain_conditional_ring_model",
    "pretrain_ring_model",
    "ring_mixture",
    "sample_labelled",
    "train_ring_classifier",
]
