r"""Likelihood and KL estimators for black-box score models and densities.

* :func:`ode_log_likelihood` — log-density of the probability-flow ODE model
  (exact up to solver tolerance, or unbiased with Hutchinson's trace estimator);
* :func:`elbo` — per-sample variational lower bound on the log-likelihood from the denoising
  loss (continuous-time VP diffusion, Kingma et al., 2021; Song et al., 2021);
* :func:`path_kl` — KL divergence between the reverse-SDE path measures of two score models
  (Girsanov), with a standard error;
* :func:`kl_estimate` — Monte Carlo :math:`\mathrm{KL}(p\,\|\,q)` for objects with ``sample``
  and ``log_prob``.

Monte Carlo estimators return an :class:`Estimate` ``(value, stderr, n)``. All conventions follow
:ref:`the diffusion view <diffusion-view>`: VP forward process
:math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`, prior
:math:`\pi = \mathcal N(0, \sigma_{t_{\max}}^2 I)` (the one the samplers in
:mod:`dualdiff.diffusion.sampling` draw from), time range :math:`[t_{\min}, t_{\max}]`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, NamedTuple, get_args, overload

import torch

from .._constants import LOG_2PI as _LOG_2PI
from .._errors import DataScaleWarning
from .._validation import check_choice, check_finite, check_int, check_positive
from ..models.interface import check_score_model, predict_eps, resolve_schedule
from ..models.parametrization import clamp_time
from ..models.protocol import Density, ScoreModel, model_dtype
from ..models.schedule import NoiseSchedule

__all__ = [
    "Divergence",
    "Estimate",
    "ODELikelihood",
    "TimeSampling",
    "elbo",
    "kl_estimate",
    "log_snr",
    "ode_log_likelihood",
    "path_kl",
    "path_kl_terms",
    "prior_log_prob",
    "sample_times",
]

Divergence = Literal["auto", "exact", "hutchinson"]
_DIVERGENCES: tuple[str, ...] = get_args(Divergence)
TimeSampling = Literal["log_snr", "uniform"]
_TIME_SAMPLINGS: tuple[str, ...] = get_args(TimeSampling)
_AUTO_EXACT_MAX_DIM = 8


class Estimate(NamedTuple):
    r"""A Monte Carlo estimate with its standard error.

    Attributes
    ----------
    value
        The estimate (sample mean).
    stderr
        Standard error of ``value`` (sample standard deviation over :math:`\sqrt n`).
    n
        Number of independent terms averaged.
    """

    value: float
    stderr: float
    n: int

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Normal-approximation confidence interval ``value ± z * stderr``."""
        return (self.value - z * self.stderr, self.value + z * self.stderr)

    def __str__(self) -> str:
        return f"{self.value:.6g} ± {self.stderr:.2g} (n={self.n})"


def _estimate(terms: torch.Tensor) -> Estimate:
    terms = terms.detach().to(torch.float64).flatten()
    n = int(terms.numel())
    value = float(terms.mean())
    stderr = float(terms.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("inf")
    return Estimate(value, stderr, n)


# ---------------------------------------------------------------------- validation helpers
def _check_batch(x: Any, name: str, owner: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{owner}: parameter '{name}' must be a torch.Tensor, got {type(x).__name__}"
        )
    if x.ndim < 2 or not x.is_floating_point() or x.shape[0] < 1:
        raise ValueError(
            f"{owner}: parameter '{name}' must be a floating tensor of shape (n, *event) with "
            f"n >= 1, got shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    return check_finite(x, name, owner)


def _check_model_dtype(model: Any, x: torch.Tensor, name: str, owner: str) -> None:
    """Raise ``TypeError`` if a module-backed model's dtype differs from the data's."""
    md = model_dtype(model, parameters_only=True)
    if md is not None and md != x.dtype:
        raise TypeError(
            f"{owner}: parameter '{name}' has dtype {x.dtype} but the model's parameters are "
            f"{md}; convert one of them, e.g. {name}.to({md}) or model.to({x.dtype})"
        )


#: Largest terminal signal-to-noise ratio :math:`\alpha_T\,\mathrm{rms}(x_0)/\sigma_T`
#: before :class:`~dualdiff.DataScaleWarning`: above 0.1 the prior's KL to the terminal
#: marginal exceeds ~0.005 nats per dimension (:math:`r^2/2`).
SCALE_RATIO_WARNING = 0.1


def warn_if_far_from_schedule(x0: torch.Tensor, schedule: Any, owner: str) -> float:
    r"""Warn when ``x0`` is far from the schedule's scale; returns the terminal ratio.

    The ratio is :math:`r = lpha_T\,\mathrm{rms}(x_0)/\sigma_T`: the standard deviation of the
    data's remaining signal at :math:`T` relative to the prior's. Likelihoods assume
    :math:`r pprox 0` (the prior is the terminal marginal); a :class:`~dualdiff.DataScaleWarning`
    is issued when :math:`r >` :data:`SCALE_RATIO_WARNING`.

    Parameters
    ----------
    x0
        Data ``(n, *event)``.
    schedule
        The model's noise schedule.
    owner
        Function name for the message.
    """
    t_max = torch.tensor(float(schedule.t_max), dtype=torch.float64)
    alpha = float(_coef(schedule.alpha, t_max, torch.float64))
    sigma = float(_coef(schedule.sigma, t_max, torch.float64))
    rms = float(x0.detach().to(torch.float64).pow(2).mean().sqrt())
    ratio = alpha * rms / sigma if sigma > 0 else math.inf
    if ratio > SCALE_RATIO_WARNING:
        warnings.warn(
            f"{owner}: the data's root-mean-square {rms:.3g} is far from the noise schedule's "
            f"scale: at t_max the remaining signal alpha_T*rms = {alpha * rms:.3g} is "
            f"{ratio:.3g} x the prior's std sigma_T = {sigma:.3g} (warning above "
            f"{SCALE_RATIO_WARNING}), so the prior N(0, sigma_T^2 I) is not the terminal "
            "marginal and likelihoods are biased and samples too narrow. Standardise the data "
            "(and train the model on it) or use a schedule whose terminal variance covers it",
            DataScaleWarning,
            stacklevel=3,
        )
    return ratio


def _check_int(value: Any, name: str, owner: str, low: int = 1) -> int:
    return check_int(value, name, owner, low=low)


def _coef(fn: Any, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(fn(t)).to(dtype)


def _score(model: ScoreModel, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
    out = model.score(x, t, cond) if cond is not None else model.score(x, t)
    return out.to(x.dtype)


# ---------------------------------------------------------------------- time sampling
def log_snr(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    r"""Log signal-to-noise ratio :math:`\lambda(t) = \log(\alpha_t^2/\sigma_t^2)`, any schedule."""
    return 2.0 * (torch.log(_coef(schedule.alpha, t, t.dtype)) - torch.log(
        _coef(schedule.sigma, t, t.dtype)
    ))


def _inverse_log_snr(schedule: NoiseSchedule, lam: torch.Tensor) -> torch.Tensor:
    """Solve ``log_snr(t) = lam`` on ``[t_min, t_max]`` by bisection (``lambda`` decreasing)."""
    lo = torch.full_like(lam, float(schedule.t_min))
    hi = torch.full_like(lam, float(schedule.t_max))
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = log_snr(schedule, mid) > lam  # mid is too early
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def sample_times(
    n: int,
    schedule: NoiseSchedule,
    time_sampling: TimeSampling = "log_snr",
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draw times and importance weights for Monte Carlo time integrals.

    The integrals are :math:`\int_{t_{\min}}^{t_{\max}} \frac{g(t)^2}{\sigma_t^2} h(t)\,dt`.

    With ``"uniform"``, :math:`t\sim\mathcal U(t_{\min}, t_{\max})` and the weight is
    :math:`(t_{\max}-t_{\min})\,g(t)^2/\sigma_t^2`. With ``"log_snr"`` (default), the log-SNR
    :math:`\lambda` is uniform on :math:`[\lambda(t_{\max}), \lambda(t_{\min})]` and, since
    :math:`d\lambda/dt = -g(t)^2/\sigma_t^2` for any schedule with
    :math:`d\alpha_t/dt = f(t)\alpha_t` and :math:`d\sigma_t^2/dt = 2f(t)\sigma_t^2 + g(t)^2`,
    the weight is the constant :math:`\lambda(t_{\min}) - \lambda(t_{\max})`. Either way
    :math:`\mathbb E[w\,h(t)]` equals the integral; the log-SNR proposal removes the
    :math:`1/t` singularity of :math:`g^2/\sigma^2` at small times.

    Parameters
    ----------
    n
        Number of times.
    schedule
        Noise schedule.
    time_sampling
        ``"log_snr"`` or ``"uniform"``.
    generator
        Random generator of the times.
    dtype
        Dtype of the returned tensors.
    device
        Device of the returned tensors.

    Returns
    -------
    tuple of torch.Tensor
        Times ``(n,)`` in ``[t_min, t_max]`` and weights ``(n,)``.
    """
    check_choice(time_sampling, "time_sampling", "sample_times", _TIME_SAMPLINGS)
    u = torch.rand(n, dtype=torch.float64, device=device, generator=generator)
    t_min = torch.tensor(float(schedule.t_min), dtype=torch.float64, device=device)
    t_max = torch.tensor(float(schedule.t_max), dtype=torch.float64, device=device)
    if time_sampling == "uniform":
        t = t_min + (t_max - t_min) * u
        g2 = _coef(schedule.g, t, torch.float64) ** 2
        s2 = _coef(schedule.sigma, t, torch.float64) ** 2
        w = (t_max - t_min) * g2 / s2
    else:
        lam_hi, lam_lo = log_snr(schedule, t_min), log_snr(schedule, t_max)
        t = _inverse_log_snr(schedule, lam_lo + (lam_hi - lam_lo) * u)
        w = (lam_hi - lam_lo).expand(n)
    return t.to(dtype), w.to(dtype)


# ---------------------------------------------------------------------- prior
def prior_log_prob(x: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    r"""Log-density of the sampler prior :math:`\mathcal N(0, \sigma_{t_{\max}}^2 I)`.

    Parameters
    ----------
    x
        Shape ``(n, *event)``.
    schedule
        Noise schedule.

    Returns
    -------
    torch.Tensor
        Shape ``(n,)``: :math:`-\frac D2\log(2\pi\sigma_{t_{\max}}^2) - \frac{\|x\|^2}
        {2\sigma_{t_{\max}}^2}`.
    """
    t_max = torch.tensor(float(schedule.t_max), dtype=x.dtype, device=x.device)
    s2 = _coef(schedule.sigma, t_max, x.dtype) ** 2
    d = x[0].numel()
    return -0.5 * d * (_LOG_2PI + torch.log(s2)) - 0.5 * x.flatten(1).pow(2).sum(1) / s2


# ---------------------------------------------------------------------- ODE likelihood
class ODELikelihood(NamedTuple):
    r"""Details of :func:`ode_log_likelihood` (``return_details=True``).

    Attributes
    ----------
    log_prob
        :math:`\log p(x)`, shape ``(n,)``: ``prior_log_prob + delta_log_prob``.
    prior_log_prob
        :math:`\log\pi(x_{t_{\max}})`, shape ``(n,)``.
    delta_log_prob
        :math:`\int_{t_{\min}}^{t_{\max}}\nabla\cdot v(x_t, t)\,dt`, shape ``(n,)``.
    x_end
        The ODE end point :math:`x_{t_{\max}}`, shape ``(n, *event)``.
    nfe
        Number of velocity evaluations.
    """

    log_prob: torch.Tensor
    prior_log_prob: torch.Tensor
    delta_log_prob: torch.Tensor
    x_end: torch.Tensor
    nfe: int


def _divergence(
    s: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None
) -> torch.Tensor:
    """Divergence of ``s(x)`` per sample: exact (``probes is None``) or Hutchinson."""
    n = x.shape[0]
    if probes is None:
        s_flat = s.reshape(n, -1)
        d = s_flat.shape[1]
        div = torch.zeros(n, dtype=x.dtype, device=x.device)
        for i in range(d):
            (grad,) = torch.autograd.grad(
                s_flat[:, i].sum(), x, retain_graph=i < d - 1, allow_unused=True
            )
            if grad is not None:
                div = div + grad.reshape(n, -1)[:, i]
        return div
    est = torch.zeros(n, dtype=x.dtype, device=x.device)
    k = probes.shape[0]
    for j in range(k):
        (grad,) = torch.autograd.grad(
            (s * probes[j]).sum(), x, retain_graph=j < k - 1, allow_unused=True
        )
        if grad is not None:
            est = est + (grad * probes[j]).reshape(n, -1).sum(1)
    return est / k


@overload
def ode_log_likelihood(
    model: ScoreModel,
    x0: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    divergence: Divergence = "auto",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: Literal["dopri5", "dopri8", "bosh3", "adaptive_heun"] = "dopri5",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    prior: Density | None = None,
    cond: Any = None,
    return_details: Literal[False] = False,
) -> torch.Tensor: ...


@overload
def ode_log_likelihood(
    model: ScoreModel,
    x0: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    divergence: Divergence = "auto",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: Literal["dopri5", "dopri8", "bosh3", "adaptive_heun"] = "dopri5",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    prior: Density | None = None,
    cond: Any = None,
    return_details: Literal[True],
) -> ODELikelihood: ...


def ode_log_likelihood(
    model: ScoreModel,
    x0: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    divergence: Divergence = "auto",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: Literal["dopri5", "dopri8", "bosh3", "adaptive_heun"] = "dopri5",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    prior: Density | None = None,
    cond: Any = None,
    return_details: bool = False,
) -> torch.Tensor | ODELikelihood:
    r"""Log-likelihood under the probability-flow ODE model (Song et al., 2021, §4.3).

    The model density is the prior pushed through the ODE
    :math:`\dot x = v(x,t) = f(t)x - \tfrac12 g(t)^2 s_\theta(x,t)` from :math:`t_{\max}` down
    to :math:`t_{\min}` — the distribution
    :func:`~dualdiff.diffusion.sampling.sample_ode` draws from.
    Integrating forwards from :math:`x_{t_{\min}} = x` with the instantaneous
    change of variables,

    .. math::
        \log p_{t_{\min}}(x) = \log\pi(x_{t_{\max}})
            + \int_{t_{\min}}^{t_{\max}} \nabla\!\cdot v(x_t,t)\,dt,\qquad
        \nabla\!\cdot v = f(t)D - \tfrac12 g(t)^2\,\nabla\!\cdot s_\theta(x_t,t),

    with :math:`\pi = \mathcal N(0,\sigma_{t_{\max}}^2 I)` unless ``prior`` is given.

    Parameters
    ----------
    model
        Score model; its score must be differentiable in ``x`` and independent across the
        batch (no batch normalisation in training mode).
    x0
        Points at which to evaluate the density, shape ``(n, *event)`` (``D`` event entries).
        They are treated as states at time ``t_min`` (see Notes). Use float64 for accuracy.
    schedule
        Noise schedule; default ``model.schedule`` or :class:`~dualdiff.models.VPSchedule`.
    divergence
        ``"exact"`` (``D`` backward passes per evaluation), ``"hutchinson"`` (Rademacher
        probes :math:`\mathbb E[v^\top J v] = \operatorname{tr}J`, drawn once per call and
        kept fixed along the trajectory, unbiased) or ``"auto"`` (exact when ``D <= 8``).
    rtol
        Relative tolerance of the adaptive solver (:func:`torchdiffeq.odeint`), applied to the
        state and to the accumulated log-density.
    atol
        Absolute tolerance of the adaptive solver, applied likewise.
    method
        Adaptive torchdiffeq solver.
    n_probes
        Hutchinson probes per evaluation (averaged).
    generator
        Random generator of the Hutchinson probes.
    prior
        Optional density (``log_prob`` on ``(n, *event)``) replacing the default prior, e.g. the
        exact marginal at ``t_max`` of an analytic model.
    cond
        Optional condition passed to ``model.score``.
    return_details
        Return an :class:`ODELikelihood` instead of the tensor.

    Returns
    -------
    torch.Tensor or ODELikelihood
        :math:`\log p_{t_{\min}}(x)`, shape ``(n,)`` (detached; no gradients flow to the model).

    Notes
    -----
    Two approximations separate this value from the log-density of the *data* at ``t = 0``:
    (i) the ODE starts at ``t_min > 0``, so it is the density of the marginal at ``t_min``
    (for a Gaussian mixture: ``p.noised(t_min).log_prob``); a tiny ``t_min`` makes the two
    agree; (ii) the prior :math:`\pi` differs from the true marginal at ``t_max``
    (:math:`\alpha_{t_{\max}} \approx 6.6\cdot10^{-3}` for the default VP schedule), an error
    of order :math:`\alpha_{t_{\max}}\,\|x_{t_{\max}}\|\,\|\mathbb E x_0\|/\sigma_{t_{\max}}^2`.
    Both are part of what the sampler produces, so the value is the exact log-density of
    samples from :func:`~dualdiff.diffusion.sampling.sample_ode` up to solver error.
    """
    owner = "ode_log_likelihood"
    check_score_model(model, "model", owner)
    x0 = _check_batch(x0, "x0", owner)
    _check_model_dtype(model, x0, "x0", owner)
    check_choice(divergence, "divergence", owner, _DIVERGENCES)
    check_choice(method, "method", owner, ("dopri5", "dopri8", "bosh3", "adaptive_heun"))
    rtol = check_positive(rtol, "rtol", owner)
    atol = check_positive(atol, "atol", owner)
    n_probes = _check_int(n_probes, "n_probes", owner)
    sched = resolve_schedule(model, schedule, owner)
    if prior is not None and not callable(getattr(prior, "log_prob", None)):
        raise TypeError(
            f"{owner}: parameter 'prior' must have a log_prob(x) method, got "
            f"{type(prior).__name__}"
        )
    if prior is None:
        warn_if_far_from_schedule(x0, sched, owner)
    n = x0.shape[0]
    d = x0[0].numel()
    if divergence == "auto":
        divergence = "exact" if d <= _AUTO_EXACT_MAX_DIM else "hutchinson"
    probes: torch.Tensor | None = None
    if divergence == "hutchinson":
        bits = torch.randint(
            0, 2, (n_probes, *x0.shape), generator=generator, device=x0.device
        )
        probes = (2 * bits - 1).to(x0.dtype)
    nfe = 0

    def func(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[
        torch.Tensor, torch.Tensor
    ]:
        nonlocal nfe
        nfe += 1
        x = state[0]
        tc = clamp_time(t, sched)
        f = _coef(sched.drift_coef, tc, x.dtype)
        g2 = _coef(sched.g, tc, x.dtype) ** 2
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = _score(model, xg, tc, cond)
            div_s = _divergence(s, xg, probes)
        dx = f * x - 0.5 * g2 * s.detach()
        ddelta = f * d - 0.5 * g2 * div_s.detach()
        return dx, ddelta

    from torchdiffeq import odeint

    times = torch.tensor(
        [float(sched.t_min), float(sched.t_max)], dtype=x0.dtype, device=x0.device
    )
    state0 = (x0.detach(), torch.zeros(n, dtype=x0.dtype, device=x0.device))
    with torch.no_grad():
        xs, deltas = odeint(func, state0, times, method=method, rtol=rtol, atol=atol)
    x_end, delta = xs[-1], deltas[-1]
    if prior is None:
        log_prior = prior_log_prob(x_end, sched)
    else:
        log_prior = torch.as_tensor(prior.log_prob(x_end)).to(x0.dtype).reshape(n)
    log_p = log_prior + delta
    check_finite(log_p, "log_prob (result)", owner)
    if return_details:
        return ODELikelihood(log_p, log_prior, delta, x_end, nfe)
    return log_p


# ---------------------------------------------------------------------- ELBO
def elbo(
    model: ScoreModel,
    x0: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    n_t: int = 1,
    generator: torch.Generator | None = None,
    *,
    time_sampling: TimeSampling = "log_snr",
    cond: Any = None,
) -> torch.Tensor:
    r"""Per-sample evidence lower bound on :math:`\log p_\theta(x_0)` from the denoising loss.

    The generative model is the reverse SDE from :math:`\pi=\mathcal N(0,\sigma_{t_{\max}}^2I)`
    down to :math:`t_{\min}`, followed by the Gaussian decoder
    :math:`p(x_0\mid z) = \mathcal N(x_0;\ \hat x_0(z),\ \sigma_{t_{\min}}^2/
    \alpha_{t_{\min}}^2 I)` with the model's own denoised mean :math:`\hat x_0(z) =
    (z - \sigma_{t_{\min}}\hat\varepsilon_\theta(z, t_{\min}))/\alpha_{t_{\min}}`.
    With the forward process as the variational posterior (Girsanov; Kingma et al., 2021,
    eq. 17; Song et al., 2021, Thm. 1):

    .. math::
        \log p_\theta(x_0) \ge
        -\frac D2\log\frac{2\pi\sigma_{t_{\min}}^2}{\alpha_{t_{\min}}^2}
        - \frac12\mathbb E\|\varepsilon-\hat\varepsilon_\theta(x_{t_{\min}}, t_{\min})\|^2
        - \frac{\alpha_{t_{\max}}^2\|x_0\|^2}{2\sigma_{t_{\max}}^2}
        - \frac12\int_{t_{\min}}^{t_{\max}}\frac{g(t)^2}{\sigma_t^2}\,
          \mathbb E\|\varepsilon-\hat\varepsilon_\theta(x_t, t)\|^2\,dt,

    with :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`. The third term is
    :math:`\mathrm{KL}(q(x_{t_{\max}}\mid x_0)\,\|\,\pi)`; :math:`g^2/\sigma^2 = -d\lambda/dt`
    (log-SNR), so the last term is :math:`\frac12\int\|\varepsilon-\hat\varepsilon\|^2 d\lambda`.
    Expectations are estimated with ``n_t`` draws of :math:`(t,\varepsilon)` per sample
    (:func:`sample_times`); the reconstruction term uses one fresh :math:`\varepsilon` per draw.

    Parameters
    ----------
    model
        Score model (``model.eps`` is used when present, else :math:`-\sigma_t s_\theta`).
    x0
        Data points, shape ``(n, *event)``.
    schedule
        Noise schedule; default ``model.schedule`` or :class:`~dualdiff.models.VPSchedule`.
    n_t
        Monte Carlo draws per sample.
    generator
        Random generator for times and noise.
    time_sampling
        ``"log_snr"`` (default; low variance) or ``"uniform"``.
    cond
        Optional condition passed to the model.

    Returns
    -------
    torch.Tensor
        Shape ``(n,)``: an unbiased estimate of each sample's ELBO. Differentiable in the
        model's parameters (wrap in :func:`torch.no_grad` when only evaluating).

    Notes
    -----
    With the exact score the bound is tight up to the prior mismatch at ``t_max`` and the
    decoder's Gaussian approximation of the posterior at ``t_min`` (both small for the default
    schedule). The decoder makes :math:`p_\theta(x_0)` a density at ``t = 0``, unlike
    :func:`ode_log_likelihood`, which is the density of the ODE model at ``t_min``.

    Variance reduction: each squared error is replaced by
    :math:`\|\varepsilon-\hat\varepsilon\|^2 - c_t(\|\varepsilon\|^2 - D)` with
    :math:`c_t = (\alpha_t^2/(\alpha_t^2+\sigma_t^2))^2` (a control variate of mean zero, exact
    for unit-variance Gaussian data), which removes most of the :math:`\chi^2_D` noise at
    small ``t`` where :math:`\hat\varepsilon\approx 0`. The per-sample standard deviation is
    still a few nats per draw (the log-SNR range is ~19 for the default schedule); when
    comparing two models (log-density ratios) pass identically seeded generators so that the
    draws are shared (common random numbers).
    """
    owner = "elbo"
    check_score_model(model, "model", owner)
    x0 = _check_batch(x0, "x0", owner)
    _check_model_dtype(model, x0, "x0", owner)
    n_t = _check_int(n_t, "n_t", owner)
    check_choice(time_sampling, "time_sampling", owner, _TIME_SAMPLINGS)
    sched = resolve_schedule(model, schedule, owner)
    warn_if_far_from_schedule(x0, sched, owner)
    n, d = x0.shape[0], x0[0].numel()
    dtype, device = x0.dtype, x0.device
    shape = (n * n_t,) + (1,) * (x0.ndim - 1)
    xr = x0.repeat_interleave(n_t, dim=0)

    def sq_err(t: torch.Tensor) -> torch.Tensor:
        alpha = _coef(sched.alpha, t, dtype).reshape(shape)
        sigma = _coef(sched.sigma, t, dtype).reshape(shape)
        eps = torch.randn(xr.shape, dtype=dtype, device=device, generator=generator)
        x_t = alpha * xr + sigma * eps
        eps_hat = predict_eps(model, x_t, t, sigma, cond)
        err = (eps - eps_hat).pow(2).reshape(n * n_t, -1).sum(1)
        # Control variate with known mean zero: ||eps||^2 - D (see Notes).
        c = (alpha**2 / (alpha**2 + sigma**2)).reshape(-1) ** 2
        return err - c * (eps.pow(2).reshape(n * n_t, -1).sum(1) - d)

    t, w = sample_times(n * n_t, sched, time_sampling, generator=generator, dtype=dtype,
                        device=device)
    diffusion = 0.5 * w * sq_err(t)
    t_lo = torch.full((n * n_t,), float(sched.t_min), dtype=dtype, device=device)
    recon_err = 0.5 * sq_err(t_lo)
    a0 = _coef(sched.alpha, t_lo[0], dtype)
    s0 = _coef(sched.sigma, t_lo[0], dtype)
    t_hi = torch.tensor(float(sched.t_max), dtype=dtype, device=device)
    a1 = _coef(sched.alpha, t_hi, dtype)
    s1 = _coef(sched.sigma, t_hi, dtype)
    recon_const = -0.5 * d * (_LOG_2PI + 2.0 * torch.log(s0 / a0))
    prior_kl = 0.5 * a1**2 * x0.reshape(n, -1).pow(2).sum(1) / s1**2
    mc = (diffusion + recon_err).reshape(n, n_t).mean(1)
    return recon_const - prior_kl - mc


# ---------------------------------------------------------------------- path KL
def path_kl_terms(
    model_a: ScoreModel,
    model_b: ScoreModel,
    x0: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    n_t: int = 1,
    generator: torch.Generator | None = None,
    time_sampling: TimeSampling = "log_snr",
    cond_a: Any = None,
    cond_b: Any = None,
) -> torch.Tensor:
    r"""Per-sample unbiased terms of :func:`path_kl`, shape ``(n,)`` (differentiable).

    Each term averages ``n_t`` draws of
    :math:`\tfrac12 w(t)\,\sigma_t^2\|s_a(x_t,t)-s_b(x_t,t)\|^2` with
    :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` and :math:`(t, w)` from
    :func:`sample_times` (so that :math:`w\sigma_t^2 \to g(t)^2` in expectation). Parameters as
    in :func:`path_kl`.
    """
    owner = "path_kl"
    check_score_model(model_a, "model_a", owner)
    check_score_model(model_b, "model_b", owner)
    x0 = _check_batch(x0, "x0", owner)
    _check_model_dtype(model_a, x0, "x0", owner)
    _check_model_dtype(model_b, x0, "x0", owner)
    n_t = _check_int(n_t, "n_t", owner)
    check_choice(time_sampling, "time_sampling", owner, _TIME_SAMPLINGS)
    sched = resolve_schedule(model_a, schedule, owner)
    n = x0.shape[0]
    dtype, device = x0.dtype, x0.device
    shape = (n * n_t,) + (1,) * (x0.ndim - 1)
    xr = x0.repeat_interleave(n_t, dim=0)
    t, w = sample_times(n * n_t, sched, time_sampling, generator=generator, dtype=dtype,
                        device=device)
    alpha = _coef(sched.alpha, t, dtype).reshape(shape)
    sigma = _coef(sched.sigma, t, dtype).reshape(shape)
    eps = torch.randn(xr.shape, dtype=dtype, device=device, generator=generator)
    x_t = alpha * xr + sigma * eps
    diff = _score(model_a, x_t, t, cond_a) - _score(model_b, x_t, t, cond_b)
    # sigma^2 ||s_a - s_b||^2 = ||eps_a - eps_b||^2: bounded as t -> t_min.
    sq = (sigma * diff).pow(2).reshape(n * n_t, -1).sum(1)
    return (0.5 * w * sq).reshape(n, n_t).mean(1)


def path_kl(
    model_a: ScoreModel,
    model_b: ScoreModel,
    x0: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    n_t: int = 1,
    generator: torch.Generator | None = None,
    time_sampling: TimeSampling = "log_snr",
    cond_a: Any = None,
    cond_b: Any = None,
) -> Estimate:
    r"""KL divergence between the reverse-SDE path measures of two score models (Girsanov).

    .. math::
        \mathrm{KL}(\mathbb P^a\,\|\,\mathbb P^b) = \frac12\int_{t_{\min}}^{t_{\max}} g(t)^2\,
        \mathbb E_{x_t\sim p^a_t}\|s_a(x_t,t) - s_b(x_t,t)\|^2\,dt,

    for two reverse SDEs started from the same prior (no terminal term), with
    :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`, :math:`x_0` samples of model ``a``.
    By data processing it upper-bounds the KL between the two samplers' outputs at
    :math:`t_{\min}`. If both scores are exact for their own noised marginals the identity
    :math:`\mathrm{KL}(p^a_{t_{\min}}\|p^b_{t_{\min}}) = \mathrm{KL}(p^a_{t_{\max}}\|
    p^b_{t_{\max}}) + \text{path-KL}` holds (the de Bruijn-type identity
    :math:`\frac{d}{dt}\mathrm{KL}(p^a_t\|p^b_t) = -\frac12 g^2\,\mathbb E_{p^a_t}\|s_a-s_b\|^2`).

    Parameters
    ----------
    model_a
        Score model of the reference measure :math:`\mathbb P^a` (the one ``x0`` comes from).
    model_b
        Score model of :math:`\mathbb P^b`.
    x0
        Samples from model ``a`` at ``t = 0`` (or ``t_min``), shape ``(n, *event)``.
    schedule
        Noise schedule; default ``model_a.schedule`` or :class:`~dualdiff.models.VPSchedule`.
    n_t
        Time/noise draws per sample (averaged before the standard error is computed).
    generator
        Random generator for the times and the noise.
    time_sampling
        ``"log_snr"`` (default) or ``"uniform"`` (:func:`sample_times`).
    cond_a
        Optional condition for ``model_a`` (e.g. one conditional network, two prompts).
    cond_b
        Optional condition for ``model_b``.

    Returns
    -------
    Estimate
        Value, standard error over the ``n`` samples, and ``n``.
    """
    with torch.no_grad():
        terms = path_kl_terms(
            model_a, model_b, x0, schedule, n_t=n_t, generator=generator,
            time_sampling=time_sampling, cond_a=cond_a, cond_b=cond_b,
        )
    return _estimate(terms)


# ---------------------------------------------------------------------- sample KL
def kl_estimate(
    p: Any,
    q: Any,
    n: int,
    generator: torch.Generator | None = None,
    *,
    batch_size: int | None = None,
) -> Estimate:
    r"""Monte Carlo :math:`\mathrm{KL}(p\,\|\,q) = \mathbb E_{x\sim p}[\log p(x) - \log q(x)]`.

    Parameters
    ----------
    p
        Object with ``log_prob(x)`` and ``sample(n, generator=)`` (e.g.
        :class:`~dualdiff.models.GaussianMixture`).
    q
        Object with ``log_prob(x)``.
    n
        Number of samples from ``p``.
    generator
        Random generator passed to ``p.sample``.
    batch_size
        Optional chunk size to bound memory.

    Returns
    -------
    Estimate
        Sample mean of the log-ratios, its standard error and ``n``.
    """
    owner = "kl_estimate"
    for name, obj in (("p", p), ("q", q)):
        if not callable(getattr(obj, "log_prob", None)):
            raise TypeError(
                f"{owner}: parameter '{name}' must have a log_prob(x) method, got "
                f"{type(obj).__name__}"
            )
    if not callable(getattr(p, "sample", None)):
        raise TypeError(
            f"{owner}: parameter 'p' must have a sample(n, generator=) method, got "
            f"{type(p).__name__}"
        )
    n = _check_int(n, "n", owner, low=2)
    bs = n if batch_size is None else _check_int(batch_size, "batch_size", owner)
    terms = []
    with torch.no_grad():
        done = 0
        while done < n:
            m = min(bs, n - done)
            x = p.sample(m, generator=generator)
            terms.append((p.log_prob(x) - q.log_prob(x)).to(torch.float64))
            done += m
    values = torch.cat(terms)
    check_finite(values, "log p - log q", owner)
    return _estimate(values)
