r"""Training losses for score models: (weighted) denoising score matching.

The reweighted form (primal form (a) of :ref:`the primal–dual algorithm <primal-dual>`) minimises
:math:`\mathbb E_{x_0\sim p_0}[w(x_0)\,\ell_\theta(x_0)]`, whose minimiser is the exact noised
score of :math:`w\,p_0` at every time; :func:`denoising_score_matching_loss` takes the
per-sample weights :math:`w` directly.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch

from .._validation import check_choice, check_finite
from ..models.interface import check_score_model, predict_eps, resolve_schedule
from ..models.parametrization import broadcast_time, clamp_time
from ..models.protocol import ScoreModel
from ..models.schedule import NoiseSchedule

__all__ = ["Reduction", "denoising_score_matching_loss"]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def denoising_score_matching_loss(
    model: ScoreModel,
    x0: torch.Tensor,
    t: torch.Tensor | float | None = None,
    generator: torch.Generator | None = None,
    weights: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    *,
    schedule: NoiseSchedule | None = None,
    noise: torch.Tensor | None = None,
    cond: Any = None,
) -> torch.Tensor:
    r"""Denoising score-matching loss in noise-prediction form (Ho et al., 2020).

    .. math::
        \ell_\theta(x_0^{(i)}) = \frac1D \big\|\hat\varepsilon_\theta(\alpha_{t_i} x_0^{(i)}
        + \sigma_{t_i}\varepsilon_i,\ t_i) - \varepsilon_i\big\|^2,\qquad
        t_i\sim\mathcal U(t_{\min}, t_{\max}),\ \varepsilon_i\sim\mathcal N(0, I),

    multiplied by ``weights[i]`` when given. With :math:`\hat\varepsilon = -\sigma_t s_\theta`
    this is :math:`\sigma_t^2/D` times the denoising score-matching loss
    :math:`\|s_\theta - \nabla\log p_{t|0}\|^2`; for every fixed ``t`` its minimiser over
    score functions is the score of the (weighted) noised data distribution.

    Parameters
    ----------
    model
        A score model; if it has ``eps(x, t[, cond])`` (e.g.
        :class:`~dualdiff.models.ModuleScoreModel`) that is used, else
        :math:`\hat\varepsilon = -\sigma_t\,\mathrm{score}(x_t, t)`.
    x0
        Clean samples, shape ``(n, *event)`` (``D`` = number of event entries).
    t
        Times: ``None`` (default) draws :math:`t_i\sim\mathcal U(t_{\min}, t_{\max})` with
        ``generator``; a float or a tensor of shape ``(n,)`` fixes them. Clamped into
        ``[t_min, t_max]``.
    generator
        Random generator for ``t`` and the noise.
    weights
        Optional per-sample weights, shape ``(n,)``, finite (negative values are allowed for
        the signed forward-KL loss, primal form (b) of
        :ref:`the primal–dual algorithm <primal-dual>`). For self-normalised importance
        weights pass them normalised to mean one with ``reduction="mean"`` (or to sum one with
        ``reduction="sum"``).
    reduction
        ``"mean"`` (sum of weighted losses divided by ``n``, not by the weight sum),
        ``"sum"`` or ``"none"`` (per-sample weighted losses, shape ``(n,)``).
    schedule
        Noise schedule; default ``model.schedule`` or :class:`~dualdiff.models.VPSchedule`.
    noise
        Optional fixed noise :math:`\varepsilon`, shape of ``x0`` (common random numbers).
    cond
        Optional condition passed to the model.

    Returns
    -------
    torch.Tensor
        A scalar, or shape ``(n,)`` for ``reduction="none"``; differentiable in the model's
        parameters.

    Raises
    ------
    ValueError
        Bad shapes, unknown ``reduction``.
    NonFiniteError
        Non-finite ``x0``, ``t`` or ``weights``.
    """
    owner = "denoising_score_matching_loss"
    check_choice(reduction, "reduction", owner, _REDUCTIONS)
    check_score_model(model, "model", owner)
    sched = resolve_schedule(model, schedule, owner)
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2 or not x0.is_floating_point():
        got = f"shape {tuple(x0.shape)}, dtype {x0.dtype}" if isinstance(x0, torch.Tensor) else (
            type(x0).__name__
        )
        raise ValueError(
            f"{owner}: parameter 'x0' must be a floating tensor of shape (n, *event), got {got}"
        )
    check_finite(x0, "x0", owner)
    n = x0.shape[0]
    if t is None:
        u = torch.rand(n, dtype=x0.dtype, device=x0.device, generator=generator)
        tt = sched.t_min + (sched.t_max - sched.t_min) * u
    else:
        tt = clamp_time(broadcast_time(t, x0, owner), sched)
    if noise is None:
        noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    elif noise.shape != x0.shape:
        raise ValueError(
            f"{owner}: parameter 'noise' must have the shape of x0 {tuple(x0.shape)}, got "
            f"{tuple(noise.shape)}"
        )
    shape = (n,) + (1,) * (x0.ndim - 1)
    alpha = torch.as_tensor(sched.alpha(tt)).to(x0.dtype).reshape(shape)
    sigma = torch.as_tensor(sched.sigma(tt)).to(x0.dtype).reshape(shape)
    x_t = alpha * x0 + sigma * noise
    eps_hat = predict_eps(model, x_t, tt, sigma, cond)
    per_sample = (eps_hat - noise).pow(2).flatten(1).mean(1)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=per_sample.dtype, device=per_sample.device)
        if w.shape != (n,):
            raise ValueError(
                f"{owner}: parameter 'weights' must have shape ({n},) (one per sample), got "
                f"{tuple(w.shape)}"
            )
        check_finite(w, "weights", owner)
        per_sample = w * per_sample
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean()
