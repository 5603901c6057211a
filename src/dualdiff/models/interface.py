"""Helpers every consumer of a score model uses: its schedule, its noise prediction, a type check.

They belong to the model interface (not to a loss or a sampler), so an adapter, a sampler, an
estimator and the engine all call the same three functions.
"""

from __future__ import annotations

from typing import Any

import torch

from .parametrization import score_to_eps
from .protocol import ScoreModel
from .schedule import NoiseSchedule, VPSchedule

__all__ = ["check_score_model", "predict_eps", "resolve_schedule"]


def resolve_schedule(model: Any, schedule: NoiseSchedule | None, owner: str) -> NoiseSchedule:
    """The schedule to use: ``schedule`` if given, else ``model.schedule``, else a default VP.

    Raises
    ------
    TypeError
        If ``schedule`` does not implement :class:`~dualdiff.models.NoiseSchedule`.
    """
    if schedule is None:
        schedule = getattr(model, "schedule", None)
        if schedule is None:
            return VPSchedule()
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(
            f"{owner}: parameter 'schedule' must implement NoiseSchedule (t_min, t_max, alpha, "
            f"sigma, g, drift_coef), got {type(schedule).__name__}"
        )
    return schedule


def check_score_model(model: Any, name: str, owner: str) -> None:
    """Raise :class:`TypeError` unless ``model`` has a callable ``score(x, t, cond)``."""
    if not callable(getattr(model, "score", None)):
        raise TypeError(
            f"{owner}: parameter '{name}' must be a ScoreModel (an object with a method "
            f"score(x, t, cond)), got {type(model).__name__}"
        )


def predict_eps(
    model: ScoreModel,
    x_t: torch.Tensor,
    t: torch.Tensor,
    sigma: torch.Tensor,
    cond: Any = None,
) -> torch.Tensor:
    r"""Noise prediction of any score model.

    Uses ``model.eps`` if it has one, else :math:`-\sigma_t\, s(x_t, t)`.

    Parameters
    ----------
    model
        A :class:`~dualdiff.models.ScoreModel` (optionally with ``eps(x, t, cond)``).
    x_t
        Shape ``(n, *event)``.
    t
        Shape ``(n,)``.
    sigma
        :math:`\sigma_t` broadcastable to ``x_t``.
    cond
        Optional condition.
    """
    eps_fn = getattr(model, "eps", None)
    if callable(eps_fn):
        out = eps_fn(x_t, t, cond) if cond is not None else eps_fn(x_t, t)
    else:
        score = model.score(x_t, t, cond) if cond is not None else model.score(x_t, t)
        out = score_to_eps(score.to(x_t.dtype), sigma)
    return out.to(x_t.dtype)
