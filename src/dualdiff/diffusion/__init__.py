"""Diffusion machinery over any score model: samplers, likelihood estimators, DSM losses.

* :mod:`.sampling` — Euler–Maruyama (reverse SDE) and probability-flow ODE samplers;
* :mod:`.likelihood` — ODE log-likelihood (exact divergence or Hutchinson), ELBO, path KL and
  Monte Carlo KL estimates, each with a standard error;
* :mod:`.losses` — (weighted) denoising score matching.

Everything here needs only :mod:`dualdiff.models` (the ScoreModel protocol and schedules).
"""

from .likelihood import Estimate, elbo, kl_estimate, ode_log_likelihood, path_kl
from .losses import denoising_score_matching_loss
from .sampling import SamplerOutput, prior_sample, sample_ode, sample_sde

__all__ = [
    "Estimate",
    "SamplerOutput",
    "denoising_score_matching_loss",
    "elbo",
    "kl_estimate",
    "ode_log_likelihood",
    "path_kl",
    "prior_sample",
    "sample_ode",
    "sample_sde",
]
