r"""Dual domains: normalisability of geometric tilts and the FU bound :math:`\lambda_{\max}`.

Normalisability (RU, LU with :math:`\ell=\log q`). The integrand
:math:`p_0^{a}\prod_i q_i^{-c_i}` of Gaussian mixtures behaves along a ray :math:`x=r u` like
:math:`\exp(-\tfrac{r^2}{2} Q(u))` with

.. math::
    Q(u) = a \min_k u^\top P_{0k} u - \sum_i c_i \min_j u^\top P_{ij} u ,

:math:`P` the component precisions (the widest component dominates each tail). The
normaliser is finite when :math:`\min_{|u|=1} Q(u) > 0` and infinite when it is negative
(the boundary case ``= 0`` is treated as not normalisable). When every :math:`q_i` has one
component the minimum is exact: :math:`\min_k \lambda_{\min}(aP_{0k}-\sum_i c_iP_i)`.

FU bound. :math:`\lambda_{\max} = \operatorname{ess\,inf} p_0/q`, found as the smallest value of
:math:`p_0/q` over (i) the integration points and component means, (ii) local minimisers
(L-BFGS from the best points) and (iii) rays to infinity (the infimum of Gaussian-mixture
ratios often lies at infinity). Each is an upper bound on the infimum. When every component
of ``q`` is a component of ``p0``, :math:`p_0 \ge \min_j (w_{k_j}/v_j)\, q` gives a certified lower
bound; if the numerical value meets it, :math:`\lambda_{\max}` is certified exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from .models.gaussian_mixture import GaussianMixture

__all__ = [
    "RatioInfimum",
    "combined_ratio_max",
    "directions",
    "log_tilt_in_domain",
    "log_tilt_upper_bounds",
    "normalisability_margin",
    "ratio_infimum",
    "tilt_bound",
]


def directions(d: int, dtype: torch.dtype = torch.float64, n_random: int = 4096) -> torch.Tensor:
    """Unit directions used for tail checks: exact for d=1, 2048 angles for d=2, random else."""
    if d == 1:
        return torch.tensor([[1.0], [-1.0]], dtype=dtype)
    if d == 2:
        ang = torch.linspace(0, 2 * math.pi, 2049, dtype=dtype)[:-1]
        return torch.stack([ang.cos(), ang.sin()], -1)
    g = torch.Generator().manual_seed(1234)
    u = torch.randn(n_random, d, dtype=dtype, generator=g)
    u = torch.cat([u, torch.eye(d, dtype=dtype), -torch.eye(d, dtype=dtype)])
    return u / u.norm(dim=-1, keepdim=True)


def _precisions(p: GaussianMixture) -> torch.Tensor:
    return torch.cholesky_inverse(p._chol)


def _tail_precision(p: GaussianMixture, u: torch.Tensor) -> torch.Tensor:
    r""":math:`\min_k u^T P_k u` over components with positive weight, shape ``(n_dir,)``."""
    prec = _precisions(p)[p.weights > 0]
    return torch.einsum("ni,kij,nj->nk", u, prec, u).min(-1).values


def normalisability_margin(
    power: float, p0: GaussianMixture, coefficients: Sequence[float], qs: Sequence[GaussianMixture]
) -> float:
    r""":math:`\min_{|u|=1} Q(u)`; the tilt is normalisable iff this is > 0.

    Exact when every ``q`` with a nonzero coefficient has one component; otherwise evaluated
    on :func:`directions` (exact in d=1, dense in d=2, sampled for d > 2).
    """
    active = [(float(c), q) for c, q in zip(coefficients, qs, strict=True) if float(c) != 0.0]
    if all(q.n_components == 1 for _, q in active):
        p0_prec = _precisions(p0)[p0.weights > 0]
        mat = power * p0_prec
        for c, q in active:
            mat = mat - c * _precisions(q)[0]
        return float(torch.linalg.eigvalsh(mat)[:, 0].min())
    u = directions(p0.dim, p0.dtype)
    qv = power * _tail_precision(p0, u)
    for c, q in active:
        qv = qv - c * _tail_precision(q, u)
    return float(qv.min())


def tilt_bound(p0: GaussianMixture, q: GaussianMixture) -> float:
    r"""Largest :math:`c` with :math:`p_0\,q^{-c}` normalisable: :math:`\min_u \tau_0(u)/\tau_q(u)`.

    Exact for a one-component ``q`` (smallest generalised eigenvalue of the precisions);
    otherwise the minimum over a fixed set of unit directions :math:`u` (both of them in
    d=1, 2048 angles in d=2, 4096 random ones plus the coordinate axes for d > 2).
    """
    if q.n_components == 1:
        pq = _precisions(q)[0]
        lq = torch.linalg.cholesky(pq)
        linv = torch.linalg.inv(lq)
        vals = [
            torch.linalg.eigvalsh(linv @ pk @ linv.T)[0] for pk in _precisions(p0)[p0.weights > 0]
        ]
        return float(torch.stack(vals).min())
    u = directions(p0.dim, p0.dtype)
    return float((_tail_precision(p0, u) / _tail_precision(q, u)).min())


def log_tilt_in_domain(
    p0: GaussianMixture, qs: Sequence[GaussianMixture], lam: torch.Tensor
) -> tuple[bool, str]:
    r"""Whether :math:`p_0\prod_i q_i^{-\lambda_i}` is normalisable, with a reason if not.

    Also decides RU's tilt: the power :math:`1/(1-\Lambda)` does not change the sign of the
    tail curvature.
    """
    margin = normalisability_margin(1.0, p0, lam.tolist(), qs)
    if margin > 1e-12:
        return True, ""
    return False, (
        f"p0 * prod q_i^(-lam_i) is not normalisable (tail curvature {margin:.3g} <= 0): some "
        "q_i has lighter tails than p0 in a direction"
    )


def log_tilt_upper_bounds(
    p0: GaussianMixture, qs: Sequence[GaussianMixture], cap: float = math.inf
) -> torch.Tensor:
    """Per-constraint bounds ``min(cap, tilt_bound(p0, q_i))``, shape ``(m,)``."""
    return torch.tensor([min(cap, tilt_bound(p0, q)) for q in qs], dtype=torch.float64)


@dataclass(frozen=True)
class RatioInfimum:
    r"""Result of :func:`ratio_infimum`: :math:`\operatorname{ess\,inf}_x p_0(x)/q(x)`.

    Attributes
    ----------
    value
        The value used as :math:`\lambda_{\max}`.
    lower_bound
        Certified lower bound (component containment), or ``None``.
    certified
        Whether ``value`` equals the certified lower bound (then it is exact).
    at_infinity
        Whether the smallest ratio was found along a ray far from all components.
    argmin
        The point of the smallest finite-radius ratio found, shape ``(d,)``.
    method
        Human-readable description of how the value was obtained.
    """

    value: float
    lower_bound: float | None
    certified: bool
    at_infinity: bool
    argmin: torch.Tensor
    method: str


def component_containment_bound(p0: GaussianMixture, q: GaussianMixture) -> float | None:
    r"""Certified lower bound :math:`\inf p_0/q \ge \min_j w_{k_j}/v_j`, or ``None``.

    Valid when each component of ``q`` is a distinct component of ``p0`` (same mean and
    covariance to 1e-10).
    """
    used: set[int] = set()
    bound = math.inf
    for j in range(q.n_components):
        if float(q.weights[j]) == 0.0:
            continue
        match = None
        for k in range(p0.n_components):
            if k in used:
                continue
            if torch.allclose(q.means[j], p0.means[k], rtol=0, atol=1e-10) and torch.allclose(
                q.covariances[j], p0.covariances[k], rtol=0, atol=1e-10
            ):
                match = k
                break
        if match is None:
            return None
        used.add(match)
        bound = min(bound, float(p0.weights[match] / q.weights[j]))
    return bound


def _log_ratio(p0: GaussianMixture, q: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return p0.log_prob(x) - q.log_prob(x)


def ratio_infimum(
    p0: GaussianMixture,
    q: GaussianMixture,
    points: torch.Tensor | None = None,
    *,
    n_starts: int = 5,
) -> RatioInfimum:
    r"""Estimate :math:`\operatorname{ess\,inf} p_0/q` robustly (see module docstring)."""
    dtype = torch.float64
    p0d, qd = p0.to(dtype), q.to(dtype)
    cand = torch.cat([p0d.means, qd.means] + ([points.to(dtype)] if points is not None else []))
    with torch.no_grad():
        lr = _log_ratio(p0d, qd, cand)
    best_val, best_idx = float(lr.min()), int(lr.argmin())
    argmin = cand[best_idx].clone()
    # (ii) local refinement from the best starting points
    order = torch.argsort(lr)[:n_starts]

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        with torch.enable_grad():  # callers may be inside torch.no_grad()
            x = torch.tensor(z, dtype=dtype, requires_grad=True)
            v = _log_ratio(p0d, qd, x.unsqueeze(0))[0]
            (g,) = torch.autograd.grad(v, x)
        return float(v.detach()), g.numpy()

    for i in order.tolist():
        res = scipy.optimize.minimize(
            fun, cand[i].numpy(), jac=True, method="L-BFGS-B", options={"maxiter": 200}
        )
        if np.isfinite(res.fun) and res.fun < best_val:
            best_val, argmin = float(res.fun), torch.tensor(res.x, dtype=dtype)
    # (iii) rays to infinity
    scale = float(
        torch.cat([p0d.means, qd.means]).abs().max()
        + torch.linalg.eigvalsh(torch.cat([p0d.covariances, qd.covariances])).max().sqrt()
    )
    u = directions(p0.dim, dtype, n_random=512)
    radii = 10.0 * max(scale, 1.0) * 2.0 ** torch.arange(0, 6, dtype=dtype)
    with torch.no_grad():
        ray_pts = (radii[:, None, None] * u[None]).reshape(-1, p0.dim)
        ray_lr = _log_ratio(p0d, qd, ray_pts)
    ray_lr = torch.nan_to_num(ray_lr, nan=math.inf)
    ray_best = float(ray_lr.min())
    at_inf = ray_best < best_val
    log_value = min(best_val, ray_best)
    value = math.exp(log_value) if log_value > -700 else 0.0
    lower = component_containment_bound(p0d, qd)
    method = "numerical: grid/means, L-BFGS refinement and rays to infinity (upper bound)"
    certified = False
    if lower is not None and value <= lower * (1 + 1e-6) + 1e-12:
        value, certified = lower, True
        method = "certified: q's components are components of p0 (weight ratio), met numerically"
    return RatioInfimum(
        value=value,
        lower_bound=lower,
        certified=certified,
        at_infinity=at_inf,
        argmin=argmin,
        method=method,
    )




def combined_ratio_max(
    p0: GaussianMixture,
    qs: Sequence[GaussianMixture],
    lam: torch.Tensor,
    starts: torch.Tensor,
) -> tuple[float, torch.Tensor]:
    r""":math:`\max_x \log\sum_i\lambda_i q_i(x)/p_0(x)` by local maximisation (FU, m >= 2).

    The FU dual domain is :math:`p_0-\sum_i\lambda_iq_i\ge0`, i.e. this maximum is
    :math:`\le 0`. L-BFGS runs from every start (the caller passes the largest values on its
    points, every component mean of :math:`p_0` and of the :math:`q_i`, and far points); the
    best local maximum found is returned with its location (a lower bound on the true
    maximum: a basin no start reaches can be missed, hence the caller's safety margin).

    Parameters
    ----------
    p0, qs
        The mixtures.
    lam
        Multipliers ``(m,)``, ``>= 0`` with at least one positive.
    starts
        Start points ``(n, d)``.

    Returns
    -------
    value : float
        Best local maximum of the log-ratio.
    argmax : torch.Tensor
        Its location ``(d,)``.
    """
    dtype = torch.float64
    pos = [
        (math.log(float(v)), q.to(dtype))
        for v, q in zip(lam.tolist(), qs, strict=True)
        if v > 0
    ]
    p0d = p0.to(dtype)

    def log_r(x: torch.Tensor) -> torch.Tensor:
        terms = torch.stack([lv + q.log_prob(x) for lv, q in pos])
        return torch.logsumexp(terms, 0) - p0d.log_prob(x)

    def value_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # log r and its gradient from log-densities and exact scores (no autograd)
        with torch.no_grad():
            lqs = torch.stack([lv + q.log_prob(x) for lv, q in pos])  # (m', n)
            sqs = torch.stack([q.score(x) for _, q in pos])  # (m', n, d)
            resp = torch.softmax(lqs, 0)
            v = torch.logsumexp(lqs, 0) - p0d.log_prob(x)
            g = (resp[..., None] * sqs).sum(0) - p0d.score(x)
        return v, g

    # Batched gradient ascent with per-start adaptive steps (all starts at once), then a
    # tight L-BFGS polish of the best few.
    x = starts.to(dtype).clone()
    v, g = value_grad(x)
    v = torch.nan_to_num(v, nan=-math.inf)
    step = torch.full((x.shape[0],), 0.1, dtype=dtype)
    quiet = 0
    for _ in range(150):
        trial = x + step[:, None] * g
        vt, gt = value_grad(trial)
        vt = torch.nan_to_num(vt, nan=-math.inf)
        ok = vt >= v
        gain = float(torch.where(ok, vt - v, torch.zeros_like(v)).max())
        x = torch.where(ok[:, None], trial, x)
        v = torch.where(ok, vt, v)
        g = torch.where(ok[:, None], gt, g)
        step = torch.where(ok, step * 1.5, step * 0.3)
        quiet = quiet + 1 if gain <= 1e-12 else 0
        if quiet >= 3:
            break

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        val, grad = value_grad(torch.tensor(z, dtype=dtype)[None])
        return -float(val[0]), -grad[0].numpy()

    best_val, argmax = float(v.max()), x[int(v.argmax())].clone()
    for i in torch.argsort(v, descending=True)[:1].tolist():
        res = scipy.optimize.minimize(
            fun,
            x[i].numpy(),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 200, "gtol": 1e-13, "ftol": 1e-16},
        )
        if np.isfinite(res.fun) and -res.fun > best_val:
            best_val, argmax = float(-res.fun), torch.tensor(res.x, dtype=dtype)
    return best_val, argmax
