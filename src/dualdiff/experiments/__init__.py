"""Experiments and their evaluation: the ring demo, metrics of unlearned diffusion models.

These modules exercise the public API; the library itself never imports them.
:mod:`dualdiff.experiments.ring` is ``dualdiff demo``.
:mod:`dualdiff.experiments.digits` is ``dualdiff digits`` (class removal and data unlearning
of the shipped digits DDPM against ESD, SISS and NegGrad).
:mod:`dualdiff.experiments.metrics` holds the metric functions (classifier-based accuracies,
Fréchet distance / KID via torchmetrics, ODE and ELBO likelihoods, path-KL deviation).
torchmetrics is imported only when a distance is computed.
"""

from .metrics import (
    NLL,
    ClassProportions,
    RetainedAccuracy,
    class_proportions,
    deviation,
    elbo_nll,
    forget_accuracy,
    frechet_distance,
    kid,
    nll,
    retained_accuracy,
)

__all__ = [
    "NLL",
    "ClassProportions",
    "RetainedAccuracy",
    "class_proportions",
    "deviation",
    "elbo_nll",
    "forget_accuracy",
    "frechet_distance",
    "kid",
    "nll",
    "retained_accuracy",
]
