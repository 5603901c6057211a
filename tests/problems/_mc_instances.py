"""Backward-built Monte Carlo instances (d >= 3) with exact or independent references.

* LU-log: p0 a 3-component isotropic mixture, q one Gaussian written as a two-component
  mixture of itself (so the library takes the Monte Carlo path, not its closed form); the
  reference is the same problem with q as one Gaussian (the exact closed form in any d,
  itself checked against scipy quad in ``test_far_levels.py``).
* RU: p0 one Gaussian written as two equal components, q one Gaussian; reference likewise.
* FU: q a component of p0 (``p0 - lam q`` is a mixture with positive weights); the reference
  dual is computed here by sampling the exact mixtures' components (numpy, stratified, the
  known Gaussian part split off; not the library's importance sampler).

The optimum is fixed first (``lam* = frac * edge`` of the domain), the level follows from the
reference, so ``lam*`` is optimal and ``D* = g(lam*)``.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any

import numpy as np
import torch

from dualdiff import (
    GaussianMixture,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
    MonteCarlo,
)

Z95 = 1.959963984540054


def _iso(means: np.ndarray, var: np.ndarray, w: np.ndarray) -> GaussianMixture:
    d = means.shape[1]
    cov = torch.tensor(var, dtype=torch.float64)[:, None, None] * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(torch.tensor(w), torch.tensor(means), cov)


def _doubled(g: GaussianMixture) -> GaussianMixture:
    """The same single Gaussian as a two-component mixture (defeats the closed-form test)."""
    return GaussianMixture(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        g.means.repeat(2, 1),
        g.covariances.repeat(2, 1, 1),
    )


def build(kind: str, d: int, frac: float, rng: np.random.Generator) -> dict[str, Any]:
    """A backward-built instance: MC problem factory, reference oracle, lam*, D*."""
    if kind == "LU":
        w = rng.uniform(0.2, 1.0, 3)
        w /= w.sum()
        mu = rng.uniform(-2, 2, (3, d))
        var = rng.uniform(0.6, 1.5, 3)
        p0 = _iso(mu, var, w)
        qv = rng.uniform(0.8, 2.0)
        q = _iso(rng.uniform(-2, 2, (1, d)), np.array([qv]), np.ones(1))
        lam = np.array([frac * qv / var.max()])  # lam P_q < P_k for every k
        exact = LikelihoodConstrainedProblem(p0, [q], [0.0])
        tau = float(exact._oracle(torch.tensor(lam)).grad[0])  # E_{p_lam}[log q]
        ref = LikelihoodConstrainedProblem(p0, [q], [tau])

        def make(seed: int, n: int) -> LikelihoodConstrainedProblem:
            return LikelihoodConstrainedProblem(
                p0, [_doubled(q)], [tau], integration=MonteCarlo(n, seed=seed)
            )

        d_star = ref.dual(lam)
        oracle = lambda lt: ref._oracle(lt)  # noqa: E731
        return dict(make=make, lam=lam, d_star=d_star, oracle=oracle, ref=ref)
    if kind == "RU":
        v0 = rng.uniform(0.8, 1.5)
        p0 = _iso(rng.uniform(-1, 1, (1, d)), np.array([v0]), np.ones(1))
        qv = rng.uniform(0.5, 1.2)
        q = _iso(rng.uniform(-2, 2, (1, d)), np.array([qv]), np.ones(1))
        edge = min(1.0, qv / v0)  # lam < 1 and lam P_q < P_0
        lam = np.array([frac * edge])
        exact = KLConstrainedProblem(p0, [q], [0.0])
        b = float(-exact._oracle(torch.tensor(lam)).grad[0])  # KL(p_lam || q)
        ref = KLConstrainedProblem(p0, [q], [b])

        def make(seed: int, n: int) -> KLConstrainedProblem:
            return KLConstrainedProblem(
                _doubled(p0), [q], [b], integration=MonteCarlo(n, seed=seed)
            )

        return dict(
            make=make, lam=lam, d_star=ref.dual(lam), oracle=lambda lt: ref._oracle(lt), ref=ref
        )
    # FU: q = component 0 of p0; p0 - lam q = (w0 - lam) N0 + sum_{k>0} w_k N_k
    w = rng.uniform(0.3, 1.0, 3)
    w /= w.sum()
    mu = rng.uniform(-2, 2, (3, d))
    var = rng.uniform(0.6, 1.5, 3)
    p0 = _iso(mu, var, w)
    q = _iso(mu[:1], var[:1], np.ones(1))
    lam = np.array([frac * w[0]])
    fu = _FUReference(w, mu, var, rng)
    b = fu.grad_level(lam[0])

    def make(seed: int, n: int) -> KLConstrainedProblem:
        return KLConstrainedProblem(
            p0, [q], [b], direction="forward", integration=MonteCarlo(n, seed=seed)
        )

    fu.b = b
    return dict(make=make, lam=lam, d_star=fu.dual(lam[0]), oracle=fu.oracle, ref=None)


class _FUReference:
    """FU dual by plain sampling from the exact mixtures' components (numpy, not the library).

    Every expectation under a mixture is stratified by component, and under component ``k``
    the exactly known part ``log(w_k N_k)`` is split off (a control variate), so the sampled
    residual ``log(p / (w_k N_k))`` has a small variance: with 1e6 draws per component the
    reference's error is far below the library's standard errors.
    """

    def __init__(self, w, mu, var, rng, n=1_000_000):
        self.w, self.mu, self.var, self.n = w, mu, var, n
        self.b = 0.0
        d = mu.shape[1]
        self.z = rng.standard_normal((len(w), n, d))  # common random numbers
        self._const: float | None = None

    def _logpdf(self, x, w):
        d = x.shape[-1]
        out = []
        for k in range(len(w)):
            if w[k] <= 0:
                continue
            r2 = ((x - self.mu[k]) ** 2).sum(-1) / self.var[k]
            out.append(math.log(w[k]) - 0.5 * (r2 + d * math.log(2 * math.pi * self.var[k])))
        a = np.stack(out)
        mx = a.max(0)
        return mx + np.log(np.exp(a - mx).sum(0))

    def _comp(self, k):
        return self.mu[k] + np.sqrt(self.var[k]) * self.z[k]

    def _neg_entropy(self, w):
        """E_p[log p] for the mixture with weights ``w`` (stratified, control variate)."""
        d = self.mu.shape[1]
        total = 0.0
        for k in range(len(w)):
            if w[k] <= 0:
                continue
            x = self._comp(k)
            wk = np.zeros_like(w)
            wk[k] = w[k]
            exact = math.log(w[k]) - 0.5 * d * (1.0 + math.log(2 * math.pi * self.var[k]))
            resid = float((self._logpdf(x, w) - self._logpdf(x, wk)).mean())
            total += w[k] * (exact + resid)
        return total

    def parts(self, lam):
        """int p0 log p0, int q log q, int w log w, KL(q || p_lam), 1 - lam."""
        d = self.mu.shape[1]
        w0 = self.w
        wq = np.zeros_like(w0)
        wq[0] = 1.0
        wl = w0 - lam * wq
        one_m = 1.0 - lam
        if self._const is None:
            self._const = self._neg_entropy(w0)
        h0 = self._const
        hq = -0.5 * d * (1.0 + math.log(2 * math.pi * self.var[0]))  # exact
        hw = one_m * (self._neg_entropy(wl / one_m) + math.log(one_m))
        x = self._comp(0)
        kl = float((self._logpdf(x, wq) - self._logpdf(x, wl / one_m)).mean())
        return h0, hq, hw, kl, one_m

    def grad_level(self, lam):
        """The level b = KL(q || p_lam*) that makes lam* optimal."""
        return self.parts(lam)[3]

    def dual(self, lam):
        h0, hq, hw, _, one_m = self.parts(lam)
        return h0 - lam * hq - hw + one_m * math.log(one_m) + lam * self.b

    def oracle(self, lt):
        lam = float(lt[0])
        h0, hq, hw, kl, one_m = self.parts(lam)
        val = h0 - lam * hq - hw + one_m * math.log(one_m) + lam * self.b

        class _E:
            value = val
            grad = torch.tensor([self.b - kl])

        return _E()


def coverage(kind: str, d: int, frac: float, repeats: int, n: int, seed: int) -> dict[str, Any]:
    """Solve one backward-built instance ``repeats`` times (Monte Carlo seeds 1000, 1001, ...).

    Returns the statuses and the fractions of repeats in which the nominal 95% intervals
    ``dual_value +- 1.96 dual_error`` cover the true ``g(lam_hat)`` and ``D*``, and
    ``gradient +- 1.96 grad_err`` covers the true gradient at ``lam_hat`` (every entry); the
    mean z-score of ``D*``, the relative bias and spread of ``lam_hat``, the median reported
    dual error and the observed spread of the dual values.
    """
    rng = np.random.default_rng([seed, d, int(frac * 100), ord(kind[0])])
    inst = build(kind, d, frac, rng)
    stat: collections.Counter[str] = collections.Counter()
    cov_g = cov_d = cov_grad = 0
    zs, lam_rel, errs, vals = [], [], [], []
    t0 = time.perf_counter()
    for r in range(repeats):
        prob = inst["make"](1000 + r, n)
        sol = prob.solve_dual()
        stat[sol.status] += 1
        lt = sol.multipliers
        c = sol.certificate
        true = inst["oracle"](lt)
        g_hat, g_err = c.dual_value, c.dual_error
        ev = prob._oracle(lt)
        cov_g += abs(g_hat - true.value) <= Z95 * g_err
        cov_d += abs(g_hat - inst["d_star"]) <= Z95 * g_err
        cov_grad += bool((torch.abs(ev.grad - true.grad) <= Z95 * ev.grad_err).all())
        zs.append((g_hat - inst["d_star"]) / g_err if g_err > 0 else math.inf)
        lam_rel.append(float(lt[0]) / inst["lam"][0] - 1.0)
        errs.append(g_err)
        vals.append(g_hat)
    return dict(
        kind=kind,
        d=d,
        frac=frac,
        n=n,
        repeats=repeats,
        seed=seed,
        statuses=dict(stat),
        coverage_g_at_lam_hat=cov_g / repeats,
        coverage_d_star=cov_d / repeats,
        coverage_gradient=cov_grad / repeats,
        z_d_star_mean=float(np.mean(zs)),
        lam_bias_rel=float(np.mean(lam_rel)),
        lam_sd_rel=float(np.std(lam_rel)),
        dual_err_median=float(np.median(errs)),
        dual_sd_observed=float(np.std(vals, ddof=1)),
        seconds=time.perf_counter() - t0,
    )
