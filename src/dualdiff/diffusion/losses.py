r"""Training losses for score models: (weighted) denoising score matching.

The reweighted form (primal form (a) of :ref:`the primal–dual algorithm <primal-dual>`) minimises
:math:`\mathbb E_{x_0\sim p_0}[w(x_0)\,\ell_\theta(x_0)]`, whose minimiser is the exact noised
score of :math:`w\,p_0` at every time; :func:`denoising_score_matching_loss` takes the
per-sample weights :math:`w` directly.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch

from .._validation import check_choice, check_finite
from ..models.interface import check_score_model, predict_eps, resolve_schedule
from ..models.parametrization import broadcast_time, clamp_time, schedule_coefficients
from ..models.protocol import ScoreModel
from ..models.schedule import NoiseSchedule

__all__ = [
    "Reduction",
    "check_siss_options",
    "denoising_score_matching_loss",
    "gradient_norm_scale",
    "mixture_importance_weights",
    "siss_terms",
]

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


# ------------------------------------------------------------------ SISS's importance sampling
def check_siss_options(kappa: Any, scaling_norm: Any, owner: str) -> tuple[float, float | None]:
    """Validate SISS's ``kappa`` and ``scaling_norm``.

    ``kappa`` must be a number in the open interval (0, 1), ``scaling_norm`` ``None`` or a
    finite number > 0; otherwise ``TypeError`` / ``ValueError`` naming the parameter.
    """
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)):
        raise TypeError(f"{owner}: parameter 'kappa' must be a float in (0, 1), got {kappa!r}")
    k = float(kappa)
    if not (0.0 < k < 1.0):
        raise ValueError(
            f"{owner}: parameter 'kappa' must be in the open interval (0, 1) (the forget "
            f"transition's weight in the defensive mixture), got {kappa!r}"
        )
    if scaling_norm is None:
        return k, None
    if isinstance(scaling_norm, bool) or not isinstance(scaling_norm, (int, float)) or not (
        math.isfinite(float(scaling_norm)) and float(scaling_norm) > 0
    ):
        raise ValueError(
            f"{owner}: parameter 'scaling_norm' must be None or a finite number > 0, got "
            f"{scaling_norm!r}"
        )
    return k, float(scaling_norm)


def mixture_importance_weights(
    x_t: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    kappa: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Importance weights of the two Gaussian transitions against their defensive mixture.

    With :math:`q(x_t\mid y) = \mathcal N(x_t;\ \alpha_t y,\ \sigma_t^2 I)` and the mixture
    :math:`m_\kappa(x_t) = (1-\kappa)\,q(x_t\mid x) + \kappa\,q(x_t\mid a)`,

    .. math::
        w_x = \frac{q(x_t\mid x)}{m_\kappa(x_t)} = \frac{1}{(1-\kappa) + \kappa\,e^{r}},\qquad
        w_a = \frac{q(x_t\mid a)}{m_\kappa(x_t)} = \frac{1}{(1-\kappa)\,e^{-r} + \kappa},\qquad
        r = \log\frac{q(x_t\mid a)}{q(x_t\mid x)}
          = \frac{\|x_t-\alpha_t x\|^2 - \|x_t-\alpha_t a\|^2}{2\sigma_t^2},

    computed with ``logaddexp`` (no overflow for large :math:`|r|`). The normalising constants
    of the two Gaussians are equal and cancel. :math:`(1-\kappa)w_x + \kappa w_a = 1` exactly,
    and :math:`w_x \le 1/(1-\kappa)`, :math:`w_a \le 1/\kappa` (bounded weights: the point of
    a *defensive* mixture).

    Parameters
    ----------
    x_t, x, a
        Noisy points, data points and forget points, ``(n, *event)``.
    alpha, sigma
        :math:`\alpha_t`, :math:`\sigma_t` per row, broadcastable to ``(n, *event)``.
    kappa
        Mixture weight of the forget transition, in ``(0, 1)`` (not checked here; see
        :func:`~dualdiff.siss_loss`).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        :math:`w_x`, :math:`w_a`, each ``(n,)``, in the dtype of ``x_t``.
    """
    d_x = (x_t - alpha * x).pow(2).flatten(1).sum(1)
    d_a = (x_t - alpha * a).pow(2).flatten(1).sum(1)
    two_var = 2.0 * sigma.reshape(sigma.shape[0], -1)[:, 0].pow(2)
    r = (d_x - d_a) / two_var
    log_1mk = torch.log1p(torch.tensor(-kappa, dtype=r.dtype, device=r.device))
    log_k = torch.log(torch.tensor(kappa, dtype=r.dtype, device=r.device))
    w_x = torch.exp(-torch.logaddexp(log_1mk.expand_as(r), log_k + r))
    w_a = torch.exp(-torch.logaddexp(log_1mk - r, log_k.expand_as(r)))
    return w_x, w_a


def siss_terms(
    model: ScoreModel,
    x: torch.Tensor,
    a: torch.Tensor,
    t: torch.Tensor | float,
    noise: torch.Tensor,
    from_forget: torch.Tensor,
    kappa: float,
    *,
    schedule: NoiseSchedule | None = None,
    model_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-pair importance-weighted denoising losses of SISS, from one network evaluation.

    For pair :math:`j` (data point :math:`x_j`, forget point :math:`a_j`, time :math:`t_j`,
    noise :math:`\varepsilon_j`, mixture label :math:`b_j\in\{0,1\}`) the noisy point is
    :math:`x_t = \alpha_t\,(b_j a_j + (1-b_j) x_j) + \sigma_t\varepsilon_j`, a draw of the
    defensive mixture :math:`(1-\kappa)\,q(\cdot\mid x_j) + \kappa\,q(\cdot\mid a_j)` when
    :math:`b_j\sim\mathrm{Bernoulli}(\kappa)`. With one prediction
    :math:`\hat\varepsilon = \hat\varepsilon_\theta(x_t, t)`,

    .. math::
        L_x = \frac{w_x}{D}\Big\|\hat\varepsilon - \frac{x_t-\alpha_t x}{\sigma_t}\Big\|^2,
        \qquad
        L_a = \frac{w_a}{D}\Big\|\hat\varepsilon - \frac{x_t-\alpha_t a}{\sigma_t}\Big\|^2,

    (weights of :func:`mixture_importance_weights`), so that :math:`E[L_x] = E[\ell_\theta(x)]`
    and :math:`E[L_a] = E[\ell_\theta(a)]`, the per-sample denoising losses of
    :func:`denoising_score_matching_loss` at the same times.

    Parameters
    ----------
    model
        Score model (``eps`` if it has one, else ``-sigma * score``).
    x, a
        Data and forget points, ``(n, *event)``, same shape.
    t
        Times ``(n,)`` (clamped into the schedule's range).
    noise
        :math:`\varepsilon`, ``(n, *event)``.
    from_forget
        :math:`b_j`, ``(n,)``, 1 where :math:`x_t` is noised from ``a`` (bool or 0/1 floats).
    kappa
        Mixture weight in ``(0, 1)``.
    schedule
        Noise schedule (default ``model.schedule``, else VP).
    model_dtype
        Dtype of the network's input (default: that of ``x``). The noisy points, weights,
        regression targets and losses stay in the dtype of ``x`` (pass float64 batches for
        exact weights); only the network runs in ``model_dtype``.

    Returns
    -------
    (L_x, L_a, w_x, w_a)
        Four ``(n,)`` tensors; ``L_x`` and ``L_a`` carry the gradient of the model.
    """
    owner = "siss_terms"
    sched = resolve_schedule(model, schedule, owner)
    tt = clamp_time(broadcast_time(t, x, owner), sched)
    alpha, sigma = schedule_coefficients(tt, x, sched, owner)
    b = from_forget.to(dtype=x.dtype).reshape(alpha.shape)
    x_t = alpha * (b * a + (1.0 - b) * x) + sigma * noise
    with torch.no_grad():
        w_x, w_a = mixture_importance_weights(x_t, x, a, alpha, sigma, kappa)
    eps_x = (x_t - alpha * x) / sigma
    eps_a = (x_t - alpha * a) / sigma
    dt = x.dtype if model_dtype is None else model_dtype
    eps_hat = predict_eps(model, x_t.to(dt), tt.to(dt), sigma.to(dt)).to(x.dtype)
    l_x = (eps_hat - eps_x).pow(2).flatten(1).mean(1)
    l_a = (eps_hat - eps_a).pow(2).flatten(1).mean(1)
    return w_x * l_x, w_a * l_a, w_x, w_a


def gradient_norm_scale(
    loss: torch.Tensor, parameters: list[torch.Tensor], norm: float
) -> tuple[float, float]:
    r"""The factor :math:`c = \text{norm}/\|\nabla_\theta\,\text{loss}\|_2` and that gradient norm.

    The gradient is taken with ``retain_graph=True`` (the caller backpropagates the same graph
    afterwards), over every tensor of ``parameters`` (unused ones count as zero). Multiplying
    ``loss`` by the detached :math:`c` gives a term whose gradient has norm exactly ``norm``:
    SISS's ``scaling_norm`` (:func:`~dualdiff.siss_loss`).

    Returns
    -------
    (float, float)
        :math:`c` and :math:`\|\nabla_\theta\,\text{loss}\|_2`.

    Raises
    ------
    NonFiniteError
        The gradient norm is zero or not finite (no direction to rescale).
    """
    from .._errors import NonFiniteError

    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    sq = [g.detach().double().pow(2).sum() for g in grads if g is not None]
    g_norm = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
    if not (g_norm > 0.0 and g_norm < float("inf")):
        raise NonFiniteError(
            f"gradient_norm_scale: the forget term's gradient norm is {g_norm}; it cannot be "
            f"rescaled to scaling_norm={norm}"
        )
    return norm / g_norm, g_norm
