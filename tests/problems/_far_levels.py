"""Backward-built far-level instances with exact answers (1-D, independent quad references).

An instance fixes the answer first: multipliers ``lam* = frac * s_max * u`` (``u`` a random
direction of the simplex, ``s_max`` the analytic edge of the dual domain along ``u``, ``frac``
up to 0.97), then the levels that make ``lam*`` optimal, by quad: LU ``tau_i = E_{p_lam*}[log
q_i]``, RU ``b_i = KL(p_lam* || q_i)``. Every ``lam*_i > 0``, so the optimum is interior and
unique, ``D* = g(lam*)`` (quad). Nothing here calls the library's integration.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from _quad_reference import gauss_mix_logpdf, integrate


@dataclass
class FarInstance:
    kind: str  # "LU" or "RU"
    grid_path: bool  # q_i given as 2-component mixtures of one Gaussian (no closed form)
    w: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    q_mu: np.ndarray
    q_var: np.ndarray
    lam_star: np.ndarray
    levels: np.ndarray
    d_star: float
    frac: float


def build(
    rng: np.random.Generator, kind: str, m: int, frac: float, scale: float, grid_path: bool
) -> FarInstance:
    k = int(rng.integers(2, 5))
    w = rng.uniform(0.1, 1.0, k)
    w = w / w.sum()
    mu = rng.uniform(-4, 4, k) * math.sqrt(scale)
    var = scale * rng.uniform(0.5, 2.0, k)
    q_mu, q_var = [], []
    free = list(range(k))
    for _ in range(m):  # distinct q_i (else lam* is not unique)
        if free and rng.random() < 0.5:  # a component of p0 (a concept)
            j = free.pop(int(rng.integers(len(free))))
            q_mu.append(mu[j])
            q_var.append(var[j])
        else:  # an independent Gaussian
            q_mu.append(rng.uniform(-4, 4) * math.sqrt(scale))
            q_var.append(scale * rng.uniform(0.5, 3.0))
    q_mu, q_var = np.array(q_mu), np.array(q_var)
    u = rng.dirichlet(np.ones(m))
    p_min = float(np.min(1.0 / var))
    s_max = p_min / float(u @ (1.0 / q_var))  # lam . P_q < min_k P_k: normalisable
    if kind == "RU":
        s_max = min(s_max, 1.0 / float(u.sum()))
    lam = frac * s_max * u
    lp0 = gauss_mix_logpdf(w, mu, var)
    lqs = [gauss_mix_logpdf([1.0], q_mu[[i]], q_var[[i]]) for i in range(m)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "LU":
            log_u = lambda x: lp0(x) - sum(lv * lq(x) for lv, lq in zip(lam, lqs, strict=True))  # noqa: E731
            lz, e = integrate(log_u, lqs)
            levels = np.array(e)
            d_star = -lz - float(lam @ levels)
        else:
            beta = 1.0 / (1.0 - lam.sum())

            def log_u(x):
                return beta * (lp0(x) - sum(lv * lq(x) for lv, lq in zip(lam, lqs, strict=True)))

            lz, e = integrate(log_u, [log_u, *lqs])
            levels = np.array([e[0] - lz - ei for ei in e[1:]])
            d_star = -(1 - lam.sum()) * lz + float(lam @ levels)
    return FarInstance(kind, grid_path, w, mu, var, q_mu, q_var, lam, levels, d_star, frac)


def dual_quad(inst: FarInstance, lam: np.ndarray) -> float:
    """Independent ``g(lam)`` by quad (``-inf`` outside the analytic domain)."""
    if float(lam @ (1.0 / inst.q_var)) >= float(np.min(1.0 / inst.var)):
        return -math.inf
    lp0 = gauss_mix_logpdf(inst.w, inst.mu, inst.var)
    lqs = [gauss_mix_logpdf([1.0], inst.q_mu[[i]], inst.q_var[[i]]) for i in range(len(lam))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if inst.kind == "LU":
            lz, _ = integrate(
                lambda x: lp0(x) - sum(lv * lq(x) for lv, lq in zip(lam, lqs, strict=True)), []
            )
            return -lz - float(lam @ inst.levels)
        if lam.sum() >= 1:
            return -math.inf
        beta = 1.0 / (1.0 - lam.sum())
        lz, _ = integrate(
            lambda x: beta * (lp0(x) - sum(lv * lq(x) for lv, lq in zip(lam, lqs, strict=True))), []
        )
        return -(1 - lam.sum()) * lz + float(lam @ inst.levels)


def problem(inst: FarInstance):
    import torch

    from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem

    t = lambda a: torch.tensor(np.asarray(a, float), dtype=torch.float64)  # noqa: E731
    p0 = GaussianMixture(t(inst.w), t(inst.mu)[:, None], t(inst.var)[:, None, None])
    qs = []
    for m_, v_ in zip(inst.q_mu, inst.q_var, strict=True):
        if inst.grid_path:
            qs.append(
                GaussianMixture(t([0.5, 0.5]), t([m_, m_])[:, None], t([v_, v_])[:, None, None])
            )
        else:
            qs.append(GaussianMixture(t([1.0]), t([m_])[:, None], t([v_])[:, None, None]))
    if inst.kind == "LU":
        return LikelihoodConstrainedProblem(p0, qs, inst.levels.tolist())
    return KLConstrainedProblem(p0, qs, inst.levels.tolist(), direction="reverse")


def classify(inst: FarInstance, sol) -> tuple[str, str]:
    """``("correct" | "inaccurate" | "wrong", why)`` for one solve against the exact answer."""
    d_star = inst.d_star
    err = float(sol.certificate.dual_error)
    tol_d = 1e-6 * (1 + abs(d_star))
    lam = sol.multipliers.numpy()
    # a reported dual value must never exceed the optimum beyond its error bar
    if sol.dual_value - err > d_star + tol_d:
        return "wrong", f"dual {sol.dual_value} - err {err} above D* {d_star}"
    if sol.status == "optimal":
        if abs(sol.dual_value - d_star) > tol_d + 3 * err:
            return "wrong", f"optimal but D = {sol.dual_value} vs D* = {d_star} (err {err})"
        if not np.allclose(lam, inst.lam_star, rtol=1e-3, atol=1e-6):
            # maximisers need not be unique (a flat ridge): the returned one must attain D*
            g = dual_quad(inst, lam)
            if not abs(g - d_star) <= tol_d:
                return "wrong", f"optimal but lam = {lam} (g = {g}) vs lam* = {inst.lam_star}"
        if sol.certificate.feasible is not True:
            return "wrong", "optimal but not feasible"
        return "correct", ""
    if sol.status == "boundary":  # an interior optimum exists: a boundary claim is wrong
        return "wrong", f"boundary claimed, interior optimum lam* = {inst.lam_star}"
    if sol.status == "infeasible":
        return "wrong", "infeasible claimed for attainable levels"
    return "inaccurate", f"{sol.status}: {sol.message[:160]}"
