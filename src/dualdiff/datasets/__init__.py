r"""Data sets and pretrained models shipped with dualdiff (real data; nothing is downloaded).

- :mod:`dualdiff.datasets.ring`: a 2-D ring of eight Gaussians and the MLP noise predictors
  pretrained on it, the unconditional one and the class-conditional one (eight classes and a
  null class).
- :mod:`dualdiff.datasets.ring_classifier`: a small classifier :math:`\log p(c\mid x)` of the
  ring's components and its exact referee.
- :mod:`dualdiff.datasets.digits`: scikit-learn's 8x8 handwritten digits, fixed split, forget set.
- :mod:`dualdiff.datasets.digits_model`: the class-conditional digits DDPM (diffusers UNet).
- :mod:`dualdiff.datasets.digits_classifier`: the evaluation classifier of digits.

The digits modules need the ``[digits]`` extra; they import scikit-learn / diffusers only when
called, and ``import dualdiff`` imports none of them.
"""

from .digits import (
    FORGET_SIZE,
    N_HELDOUT,
    N_TRAIN,
    NULL_CLASS,
    NUM_CLASSES,
    DigitsSplit,
    forget_indices,
    load_digits_split,
    tensor_sampler,
)
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
    "FORGET_SIZE",
    "NULL_CLASS",
    "NUM_CLASSES",
    "N_HELDOUT",
    "N_TRAIN",
    "ClassLogProbability",
    "DigitsSplit",
    "RingClassifier",
    "conditional_ring_kl",
    "exact_log_posterior",
    "forget_indices",
    "load_digits_split",
    "load_pretrained_conditional_ring",
    "load_pretrained_ring",
    "pretrain_conditional_ring_model",
    "pretrain_ring_model",
    "ring_mixture",
    "sample_labelled",
    "tensor_sampler",
    "train_ring_classifier",
]
