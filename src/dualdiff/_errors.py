"""Typed exceptions raised by dualdiff.

Every error names the object, the parameter, the value received and what is allowed,
so a user can fix the call from the message alone.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ClosedFormUnavailableError",
    "DataScaleWarning",
    "DualDomainError",
    "DualEstimateUnavailableError",
    "DualdiffError",
    "IllPosedProblemError",
    "LowEffectiveSampleSizeWarning",
    "NonFiniteError",
]


class DualdiffError(Exception):
    """Base class of all dualdiff-specific errors."""


class DualDomainError(DualdiffError, ValueError):
    """A dual variable lies outside the problem's dual domain."""


class IllPosedProblemError(DualdiffError, ValueError):
    """The requested problem has no meaningful solution (e.g. its dual is ``-inf``)."""


class NonFiniteError(DualdiffError, ValueError):
    """A NaN or infinite value was found where a finite one is required."""


class CheckpointError(DualdiffError, ValueError):
    """A checkpoint file is missing, empty, truncated, corrupt or holds invalid values."""


class DataScaleWarning(UserWarning):
    r"""Data far from the noise schedule's scale: the prior is not the terminal marginal.

    Likelihoods (ODE, ELBO) assume :math:`p_T \approx \mathcal N(0, \sigma_T^2 I)`; data with
    :math:`\alpha_T\,\mathrm{rms}(x_0) \gtrsim 0.1\,\sigma_T` violate it (standardise the
    data, or use a schedule with a larger terminal variance).
    """


class ClosedFormUnavailableError(DualdiffError, NotImplementedError):
    """A closed-form operation on a problem stated with models (no analytic density).

    ``solve_dual``, ``target`` and ``certificate`` need densities to integrate.

    Such problems are solved by ``problem.estimate_dual(...)`` (Monte Carlo over pretrained
    samples) and ``PrimalDualTrainer`` (primal-dual fine-tuning).
    """


class DualEstimateUnavailableError(DualdiffError, NotImplementedError):
    """``estimate_dual`` cannot estimate this problem's dual from what it was given."""


class LowEffectiveSampleSizeWarning(UserWarning):
    """The (population or Monte Carlo) effective sample size of a reweighting is low."""
