"""The two small protocols every back-end implements: densities and score models."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Density", "SampleableDensity", "ScoreModel"]


@runtime_checkable
class Density(Protocol):
    """Anything with a normalised log-density: ``log_prob(x)`` maps ``(..., d)`` to ``(...)``."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-density at ``x`` of shape ``(..., d)``; returns shape ``(...)``."""
        ...


@runtime_checkable
class SampleableDensity(Density, Protocol):
    """A density that can also draw i.i.d. samples ``(n, d)``."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples, shape ``(n, d)``."""
        ...


@runtime_checkable
class ScoreModel(Protocol):
    r"""A (diffusion) model seen through its score :math:`\nabla_x \log p_t(x)`.

    ``score(x, t, cond)`` takes ``x`` of shape ``(n, *event)`` and ``t`` either a float or a
    tensor broadcastable to ``(n,)``; it returns a tensor shaped like ``x``. ``log_prob`` is
    optional (analytic models provide it; diffusion networks get it from the probability-flow
    ODE in :mod:`dualdiff.diffusion.likelihood`).
    """

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        """Score of the noised marginal at time ``t``; same shape as ``x``."""
        ...
