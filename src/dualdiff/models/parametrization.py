r"""Conversions between the four common outputs of a diffusion network.

For the forward marginal :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` a network may predict
the noise :math:`\varepsilon`, the clean sample :math:`x_0`, the velocity
:math:`v = \alpha_t \varepsilon - \sigma_t x_0` (Salimans & Ho, 2022) or the score
:math:`s = \nabla_x \log p_t(x_t)`. Given :math:`x_t` and the schedule they determine each
other:

.. math::
    s = -\frac{\varepsilon}{\sigma_t}, \qquad
    x_0 = \frac{x_t - \sigma_t \varepsilon}{\alpha_t}, \qquad
    \varepsilon = \frac{\alpha_t v + \sigma_t x_t}{\alpha_t^2 + \sigma_t^2}, \qquad
    x_0 = \frac{\alpha_t x_t - \sigma_t v}{\alpha_t^2 + \sigma_t^2}.

(For VP schedules :math:`\alpha_t^2 + \sigma_t^2 = 1`; the general form is kept so that the
functions are exact inverses for any :math:`(\alpha_t, \sigma_t)`.) The identification
:math:`s = -\varepsilon/\sigma_t` holds for the *optimal* predictions (Tweedie's formula);
for a network it *defines* the score the network represents.

The small pure functions take the coefficients already broadcast against ``x_t``; the
dispatchers :func:`to_score`, :func:`score_to` and :func:`convert` evaluate them from a
schedule at ``t`` clamped into ``[schedule.t_min, schedule.t_max]`` (where
:math:`\sigma_t > 0` and :math:`\alpha_t > 0`, so every conversion is finite).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from .._validation import check_choice, check_finite
from .schedule import NoiseSchedule

__all__ = [
    "PREDICTIONS",
    "Prediction",
    "broadcast_time",
    "clamp_time",
    "convert",
    "eps_to_score",
    "eps_to_v",
    "eps_to_x0",
    "from_eps",
    "schedule_coefficients",
    "score_to",
    "score_to_eps",
    "to_eps",
    "to_score",
    "v_to_eps",
    "v_to_x0",
    "x0_to_eps",
    "x0_to_v",
]

Prediction = Literal["eps", "x0", "v", "score"]
"""What a network predicts, noise ``"eps"``, clean sample ``"x0"``, velocity ``"v"`` or
``"score"``."""

PREDICTIONS: tuple[Prediction, ...] = get_args(Prediction)


# ---------------------------------------------------------------------- pure conversions
def eps_to_score(eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r"""Score from a noise prediction, :math:`s = -\varepsilon/\sigma_t`.

    Parameters
    ----------
    eps
        Noise prediction, shape ``(n, *event)``.
    sigma
        :math:`\sigma_t`, broadcastable to ``eps`` (e.g. ``(n, 1, ..., 1)``).
    """
    return -eps / sigma


def score_to_eps(score: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r"""Noise prediction from a score, :math:`\varepsilon = -\sigma_t s`.

    Parameters
    ----------
    score
        Score, shape ``(n, *event)``.
    sigma
        :math:`\sigma_t`, broadcastable to ``score``.
    """
    return -sigma * score


def eps_to_x0(
    eps: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    r"""Clean-sample prediction :math:`x_0 = (x_t - \sigma_t\varepsilon)/\alpha_t`.

    Parameters
    ----------
    eps
        Noise prediction, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    alpha
        :math:`\alpha_t`, broadcastable to ``x_t`` (e.g. ``(n, 1, ..., 1)``).
    sigma
        :math:`\sigma_t`, broadcastable to ``x_t``.
    """
    return (x_t - sigma * eps) / alpha


def x0_to_eps(
    x0: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    r"""Noise prediction :math:`\varepsilon = (x_t - \alpha_t x_0)/\sigma_t`.

    Parameters
    ----------
    x0
        Clean-sample prediction, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    alpha
        :math:`\alpha_t`, broadcastable to ``x_t`` (e.g. ``(n, 1, ..., 1)``).
    sigma
        :math:`\sigma_t`, broadcastable to ``x_t``.
    """
    return (x_t - alpha * x0) / sigma


def v_to_eps(
    v: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    r"""Noise prediction from a velocity.

    .. math:: \varepsilon = (\alpha_t v + \sigma_t x_t)/(\alpha_t^2+\sigma_t^2)

    Parameters
    ----------
    v
        Velocity prediction, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    alpha
        :math:`\alpha_t`, broadcastable to ``x_t`` (e.g. ``(n, 1, ..., 1)``).
    sigma
        :math:`\sigma_t`, broadcastable to ``x_t``.
    """
    return (alpha * v + sigma * x_t) / (alpha**2 + sigma**2)


def v_to_x0(
    v: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    r"""Clean sample from a velocity.

    .. math:: x_0 = (\alpha_t x_t - \sigma_t v)/(\alpha_t^2+\sigma_t^2)

    Parameters
    ----------
    v
        Velocity prediction, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    alpha
        :math:`\alpha_t`, broadcastable to ``x_t`` (e.g. ``(n, 1, ..., 1)``).
    sigma
        :math:`\sigma_t`, broadcastable to ``x_t``.
    """
    return (alpha * x_t - sigma * v) / (alpha**2 + sigma**2)


def eps_to_v(
    eps: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    r"""Velocity from a noise prediction.

    .. math:: v = \alpha_t\varepsilon - \sigma_t x_0,\qquad
        x_0 = (x_t - \sigma_t\varepsilon)/\alpha_t

    Parameters
    ----------
    eps
        Noise prediction, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    alpha
        :math:`\alpha_t`, broadcastable to ``x_t`` (e.g. ``(n, 1, ..., 1)``).
    sigma
        :math:`\sigma_t`, broadcastable to ``x_t``.
    """
    return alpha * eps - sigma * eps_to_x0(eps, x_t, alpha, sigma)


def x0_to_v(
    x0: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    r"""Velocity from a clean-sample prediction.

    .. math:: v = \alpha_t\varepsilon - \sigma_t x_0,\qquad
        \varepsilon = (x_t - \alpha_t x_0)/\sigma_t

    Parameters
    ----------
    x0
        Clean-sample prediction, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    alpha
        :math:`\alpha_t`, broadcastable to ``x_t`` (e.g. ``(n, 1, ..., 1)``).
    sigma
        :math:`\sigma_t`, broadcastable to ``x_t``.
    """
    return alpha * x0_to_eps(x0, x_t, alpha, sigma) - sigma * x0


# ---------------------------------------------------------------------- time handling
def broadcast_time(t: torch.Tensor | float, x: torch.Tensor, owner: str) -> torch.Tensor:
    """Turn ``t`` (a float, a one-element tensor or a tensor of shape ``(n,)``) into ``(n,)``.

    Parameters
    ----------
    t
        Diffusion time(s).
    x
        Batch of shape ``(n, *event)``; fixes ``n``, the dtype (if floating) and the device.
    owner
        Function or class name used in error messages.

    Returns
    -------
    torch.Tensor
        Shape ``(n,)``, dtype of ``x``, on ``x``'s device.

    Raises
    ------
    ValueError
        If ``x`` has no batch dimension or ``t`` cannot be broadcast to ``(n,)``.
    NonFiniteError
        If ``t`` contains NaN or inf.
    """
    if x.ndim < 1:
        raise ValueError(
            f"{owner}: parameter 'x' must have shape (n, *event), got a 0-d tensor"
        )
    n = x.shape[0]
    dtype = x.dtype if x.is_floating_point() else torch.float64
    try:
        t_t = torch.as_tensor(t, dtype=dtype, device=x.device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{owner}: parameter 't' must be a float or a tensor, got {type(t).__name__}"
        ) from None
    check_finite(t_t, "t", owner)
    if t_t.numel() == 1:
        return t_t.reshape(()).expand(n)
    if t_t.shape != (n,):
        raise ValueError(
            f"{owner}: parameter 't' must be a scalar or have shape ({n},) to match x of "
            f"shape {tuple(x.shape)}, got shape {tuple(t_t.shape)}"
        )
    return t_t


def clamp_time(t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Clamp ``t`` into ``[schedule.t_min, schedule.t_max]`` (any shape)."""
    return t.clamp(float(schedule.t_min), float(schedule.t_max))


def schedule_coefficients(
    t: torch.Tensor | float, x: torch.Tensor, schedule: NoiseSchedule, owner: str
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Coefficients :math:`(\alpha_t, \sigma_t)` shaped ``(n, 1, ..., 1)`` to broadcast with ``x``.

    ``t`` is broadcast to ``(n,)`` (:func:`broadcast_time`) and clamped into
    ``[schedule.t_min, schedule.t_max]`` before the schedule is queried.
    """
    tt = clamp_time(broadcast_time(t, x, owner), schedule)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    alpha = torch.as_tensor(schedule.alpha(tt)).to(dtype=tt.dtype).reshape(shape)
    sigma = torch.as_tensor(schedule.sigma(tt)).to(dtype=tt.dtype).reshape(shape)
    return alpha, sigma


# ---------------------------------------------------------------------- dispatchers
def to_eps(
    pred: torch.Tensor,
    x_t: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    prediction: Prediction,
) -> torch.Tensor:
    r"""Noise prediction from ``pred`` of kind ``prediction`` (coefficients already broadcast).

    Parameters
    ----------
    pred
        Network output, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    alpha
        :math:`\alpha_t`, broadcastable to ``x_t`` (e.g. ``(n, 1, ..., 1)``).
    sigma
        :math:`\sigma_t`, broadcastable to ``x_t``.
    prediction
        One of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``.
    """
    check_choice(prediction, "prediction", "to_eps", PREDICTIONS)
    if prediction == "eps":
        return pred
    if prediction == "x0":
        return x0_to_eps(pred, x_t, alpha, sigma)
    if prediction == "v":
        return v_to_eps(pred, x_t, alpha, sigma)
    return score_to_eps(pred, sigma)


def from_eps(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    prediction: Prediction,
) -> torch.Tensor:
    r"""Inverse of :func:`to_eps`: the ``prediction``-kind output equivalent to ``eps``.

    Parameters
    ----------
    eps
        Noise prediction, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    alpha
        :math:`\alpha_t`, broadcastable to ``x_t`` (e.g. ``(n, 1, ..., 1)``).
    sigma
        :math:`\sigma_t`, broadcastable to ``x_t``.
    prediction
        One of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``.
    """
    check_choice(prediction, "prediction", "from_eps", PREDICTIONS)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return eps_to_x0(eps, x_t, alpha, sigma)
    if prediction == "v":
        return eps_to_v(eps, x_t, alpha, sigma)
    return eps_to_score(eps, sigma)


def to_score(
    pred: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    schedule: NoiseSchedule,
    prediction: Prediction,
) -> torch.Tensor:
    r"""Score :math:`\nabla_x\log p_t(x_t)` represented by a network output.

    Parameters
    ----------
    pred
        Network output of kind ``prediction``, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    t
        Float or tensor broadcastable to ``(n,)``; clamped into ``[t_min, t_max]``.
    schedule
        Noise schedule giving :math:`\alpha_t, \sigma_t`.
    prediction
        One of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``.

    Returns
    -------
    torch.Tensor
        Shape ``(n, *event)``: :math:`s = -\varepsilon/\sigma_t` with :math:`\varepsilon`
        recovered from ``pred``.

    Raises
    ------
    ValueError
        If ``prediction`` is unknown (the message lists the allowed values).
    """
    check_choice(prediction, "prediction", "to_score", PREDICTIONS)
    if prediction == "score":
        return pred
    alpha, sigma = schedule_coefficients(t, x_t, schedule, "to_score")
    return eps_to_score(to_eps(pred, x_t, alpha, sigma, prediction), sigma)


def score_to(
    prediction: Prediction,
    score: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    r"""Convert a score into a ``prediction``-kind output (inverse of :func:`to_score`).

    Parameters
    ----------
    prediction
        Target kind: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``.
    score
        Score :math:`\nabla_x\log p_t(x_t)`, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    t
        Float or tensor broadcastable to ``(n,)``; clamped into ``[t_min, t_max]``.
    schedule
        Noise schedule giving :math:`\alpha_t, \sigma_t`.

    Returns
    -------
    torch.Tensor
        Shape ``(n, *event)``, e.g. :math:`\varepsilon = -\sigma_t s`.
    """
    check_choice(prediction, "prediction", "score_to", PREDICTIONS)
    if prediction == "score":
        return score
    alpha, sigma = schedule_coefficients(t, x_t, schedule, "score_to")
    return from_eps(score_to_eps(score, sigma), x_t, alpha, sigma, prediction)


def convert(
    pred: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    schedule: NoiseSchedule,
    source: Prediction,
    target: Prediction,
) -> torch.Tensor:
    r"""Convert a ``source``-kind prediction into a ``target``-kind one (via :math:`\varepsilon`).

    Parameters
    ----------
    pred
        Network output, shape ``(n, *event)``.
    x_t
        Noisy input, shape ``(n, *event)``.
    t
        Float or tensor broadcastable to ``(n,)``; clamped into ``[t_min, t_max]``.
    schedule
        Noise schedule.
    source
        Kind of ``pred``: one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``.
    target
        Kind of the result: one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``.
    """
    check_choice(source, "source", "convert", PREDICTIONS)
    check_choice(target, "target", "convert", PREDICTIONS)
    if source == target:
        return pred
    alpha, sigma = schedule_coefficients(t, x_t, schedule, "convert")
    return from_eps(to_eps(pred, x_t, alpha, sigma, source), x_t, alpha, sigma, target)
