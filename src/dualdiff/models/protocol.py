"""The two small protocols every back-end implements: densities and score models."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Density", "SampleableDensity", "ScoreModel", "check_model_dtype", "model_dtype"]


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


def model_dtype(model: Any, *, parameters_only: bool = False) -> torch.dtype | None:
    """Floating dtype of a score model (``None`` when it states none).

    Looks at ``model.dtype`` (unless ``parameters_only``), then ``model.parameters()``, then a
    wrapped ``model.model`` / ``model.module`` (e.g. :class:`~dualdiff.models.Conditioned`
    over a module). With ``parameters_only`` only module-backed models (whose layers fix the
    input dtype) report one.
    """
    seen: set[int] = set()
    obj: Any = model
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        dt = getattr(obj, "dtype", None)
        if not parameters_only and isinstance(dt, torch.dtype) and dt.is_floating_point:
            return dt
        params = getattr(obj, "parameters", None)
        if callable(params):
            try:
                for p in params():
                    if isinstance(p, torch.Tensor) and p.is_floating_point():
                        return p.dtype
            except TypeError:
                pass
        obj = getattr(obj, "model", None) or getattr(obj, "module", None)
    return None


def check_model_dtype(model: Any, dtype: torch.dtype, name: str, owner: str) -> None:
    """Raise ``TypeError`` if a module-backed model's parameters are not of ``dtype``."""
    md = model_dtype(model, parameters_only=True)
    if md is not None and md != dtype:
        raise TypeError(
            f"{owner}: parameter '{name}' is {dtype} but the model's parameters are {md}; "
            f"use {name}={md} (the default follows the model) or convert the model with "
            f"model.to({dtype})"
        )
