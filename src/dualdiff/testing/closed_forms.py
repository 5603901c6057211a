"""Closed-form references: FU retrain identity and one-Gaussian RU/LU problems.

Part of :mod:`dualdiff.testing`; see the package docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special
import scipy.stats

from ..models.gaussian_mixture import GaussianMixture
from ..problems import AnalyticProblem as UnlearningProblem  # the closed-form problems
from ..problems import (
    LikelihoodConstrainedProblem,
)
from .densities import _kl_problem, gaussian_kl, mixture_log_pdf

__all__ = [
    "GaussianReference",
    "RetrainReference",
    "gaussian_reference",
    "retrain_reference",
]


@dataclass(frozen=True)
class RetrainReference:
    r"""FU retraining identity: :math:`p_0 = (1-a)\,q_r + a\,q` and :math:`p_a = q_r`.

    The level is :math:`b = \mathrm{KL}(q\|q_r)` (closed form, both Gaussian), so the dual
    maximiser is :math:`\lambda^\star = a` (its Danskin gradient
    :math:`b-\mathrm{KL}(q\|p_a)` vanishes there), the optimal value is
    :math:`P^\star = \mathrm{KL}(p_0\|q_r)`, and :math:`\lambda_{\max}=\operatorname{ess\,inf}
    p_0/q = a` (``q_r/q -> 0`` along the axis through both means: equal covariances).

    Attributes
    ----------
    problem
        The FU problem (``m = 1``).
    retained
        :math:`q_r`, one Gaussian.
    forget
        :math:`q`, one Gaussian (a component of :math:`p_0`).
    weight
        :math:`a`, the forget set's share of the pretraining mixture (= ``lam*`` = ``lam_max``).
    level
        :math:`b=\mathrm{KL}(q\|q_r)`.
    optimal_value
        :math:`\mathrm{KL}(p_0\|q_r)`, by :func:`scipy.integrate.quad` (``d = 1``) or ``nan``.
    """

    problem: UnlearningProblem
    retained: GaussianMixture
    forget: GaussianMixture
    weight: float
    level: float
    optimal_value: float


def retrain_reference(
    a: float = 0.3,
    *,
    separation: float = 4.0,
    variance: float = 1.0,
    dim: int = 1,
    integration: Any = "auto",
) -> RetrainReference:
    r"""FU problem whose optimal target is exactly the model retrained without the forget set.

    :math:`q_r=\mathcal N(-\tfrac{\delta}{2}e_1, vI)`, :math:`q=\mathcal N(\tfrac{\delta}{2}e_1,
    vI)`, :math:`p_0=(1-a)q_r+a\,q` and :math:`b=\mathrm{KL}(q\|q_r)=\delta^2/(2v)`.

    Parameters
    ----------
    a
        Forget weight in ``(0, 1)``.
    separation
        :math:`\delta`, the distance between the two means.
    variance
        :math:`v`, the shared isotropic variance.
    dim
        Dimension ``d``.
    integration
        Passed to :class:`~dualdiff.KLConstrainedProblem`.
    """
    if not 0.0 < a < 1.0:
        raise ValueError(f"retrain_reference: parameter 'a' must lie in (0, 1), got {a}")
    e1 = np.zeros(dim)
    e1[0] = 1.0
    mu_r, mu_q = -0.5 * separation * e1, 0.5 * separation * e1
    retained = GaussianMixture([1.0], [mu_r.tolist()], variance)
    forget = GaussianMixture([1.0], [mu_q.tolist()], variance)
    p0 = GaussianMixture([1.0 - a, a], [mu_r.tolist(), mu_q.tolist()], variance)
    level = separation**2 / (2.0 * variance)
    problem = _kl_problem(p0, [forget], [level], "forward", integration)
    opt = math.nan
    if dim == 1:
        sd = math.sqrt(variance)

        def integrand(x: float) -> float:
            lp0 = float(mixture_log_pdf(p0, np.array([x]))[0])
            lr = float(scipy.stats.norm.logpdf(x, mu_r[0], sd))
            return math.exp(lp0) * (lp0 - lr)

        lo, hi = mu_r[0] - 15 * sd, mu_q[0] + 15 * sd
        opt = float(
            scipy.integrate.quad(
                integrand, lo, hi, points=[mu_r[0], mu_q[0]], epsabs=1e-13, epsrel=1e-12, limit=200
            )[0]
        )
    return RetrainReference(
        problem=problem,
        retained=retained,
        forget=forget,
        weight=a,
        level=level,
        optimal_value=opt,
    )


@dataclass(frozen=True)
class GaussianReference:
    r"""RU or LU with :math:`p_0=\mathcal N(0,s_0^2)` and :math:`q=\mathcal N(\mu,s^2)` (1-D).

    The tilted target is Gaussian. With :math:`a` the power of :math:`p_0` and :math:`c` the
    coefficient of :math:`\log q` (RU: :math:`a=\beta=1/(1-\lambda)`, :math:`c=\lambda\beta`;
    LU: :math:`a=1`, :math:`c=\lambda`):

    .. math::
        p_\lambda \propto p_0^{a} q^{-c} = \mathcal N(m_\lambda, v_\lambda),\quad
        v_\lambda^{-1} = \frac{a}{s_0^2}-\frac{c}{s^2},\quad
        m_\lambda = -\frac{c\,\mu}{s^2}\,v_\lambda,

    .. math::
        \log Z = -\tfrac a2\log(2\pi s_0^2) + \tfrac c2\log(2\pi s^2) + \frac{c\mu^2}{2s^2}
        + \frac{m_\lambda^2}{2v_\lambda} + \tfrac12\log(2\pi v_\lambda),

    RU: :math:`g(\lambda) = -(1-\lambda)\log Z + \lambda b`, constraint
    :math:`\mathrm{KL}(p_\lambda\|q)`; LU: :math:`g(\lambda) = -\log Z - \lambda\tau`,
    constraint :math:`E_{p_\lambda}[\log q] = -\tfrac12\log(2\pi s^2)
    - ((m_\lambda-\mu)^2+v_\lambda)/(2s^2)`. The domain is :math:`v_\lambda^{-1}>0` (and
    :math:`\lambda<1` for RU); the optimal multiplier solves "constraint = level" by
    :func:`scipy.optimize.brentq` on these formulas.

    Attributes
    ----------
    problem
        The library problem built from the same data (``m = 1``, ``d = 1``).
    kind
        ``"RU"`` or ``"LU"``.
    s0
        Standard deviation of :math:`p_0=\mathcal N(0,s_0^2)`.
    mu
        Mean of :math:`q=\mathcal N(\mu,s^2)`.
    s
        Standard deviation of :math:`q`.
    level
        :math:`b` (RU) or :math:`\tau` (LU).
    """

    problem: UnlearningProblem
    kind: str
    s0: float
    mu: float
    s: float
    level: float

    def _powers(self, lam: float) -> tuple[float, float]:
        if self.kind == "RU":
            beta = 1.0 / (1.0 - lam)
            return beta, lam * beta
        return 1.0, lam

    @property
    def upper(self) -> float:
        """The supremum of the dual domain, ``min(1, s^2/s0^2)`` (RU) or ``s^2/s0^2`` (LU)."""
        r = self.s**2 / self.s0**2
        return min(1.0, r) if self.kind == "RU" else r

    def target_params(self, lam: float) -> tuple[float, float]:
        """Mean and variance ``(m_lam, v_lam)`` of the Gaussian target."""
        a, c = self._powers(lam)
        prec = a / self.s0**2 - c / self.s**2
        if not prec > 0:
            raise ValueError(f"GaussianReference: lam={lam} outside the domain [0, {self.upper})")
        v = 1.0 / prec
        return -c * self.mu / self.s**2 * v, v

    def log_normalizer(self, lam: float) -> float:
        r""":math:`\log\int p_0^{a} q^{-c}\,dx` in closed form."""
        a, c = self._powers(lam)
        m, v = self.target_params(lam)
        return (
            -0.5 * a * math.log(2 * math.pi * self.s0**2)
            + 0.5 * c * math.log(2 * math.pi * self.s**2)
            + c * self.mu**2 / (2 * self.s**2)
            + m**2 / (2 * v)
            + 0.5 * math.log(2 * math.pi * v)
        )

    def constraint(self, lam: float) -> float:
        r"""RU: :math:`\mathrm{KL}(p_\lambda\|q)`; LU: :math:`E_{p_\lambda}[\log q]`."""
        m, v = self.target_params(lam)
        if self.kind == "RU":
            return gaussian_kl(m, v, self.mu, self.s**2)
        return -0.5 * math.log(2 * math.pi * self.s**2) - ((m - self.mu) ** 2 + v) / (2 * self.s**2)

    def objective(self, lam: float) -> float:
        r""":math:`\mathrm{KL}(p_\lambda\|p_0)` (closed form)."""
        m, v = self.target_params(lam)
        return gaussian_kl(m, v, 0.0, self.s0**2)

    def dual(self, lam: float) -> float:
        r""":math:`g(\lambda)` in closed form."""
        if self.kind == "RU":
            return -(1.0 - lam) * self.log_normalizer(lam) + lam * self.level
        return -self.log_normalizer(lam) - lam * self.level

    def dual_gradient(self, lam: float) -> float:
        r"""Danskin gradient of :meth:`dual`.

        RU: :math:`b-\mathrm{KL}(p_\lambda\|q)`; LU: :math:`E_{p_\lambda}[\log q]-\tau`.
        """
        if self.kind == "RU":
            return self.level - self.constraint(lam)
        return self.constraint(lam) - self.level

    @property
    def multiplier(self) -> float:
        r"""Optimal :math:`\lambda^\star` (Brent root of the gradient; 0 if inactive)."""
        if self.dual_gradient(0.0) <= 0:
            return 0.0
        hi = self.upper * (1 - 1e-12)
        return float(scipy.optimize.brentq(self.dual_gradient, 0.0, hi, xtol=1e-15, rtol=1e-15))

    @property
    def optimal_value(self) -> float:
        r""":math:`P^\star = D^\star = g(\lambda^\star) = \mathrm{KL}(p_{\lambda^\star}\|p_0)`."""
        return self.dual(self.multiplier)


def gaussian_reference(
    kind: str = "RU",
    *,
    s0: float = 1.0,
    mu: float = 2.0,
    s: float = 1.5,
    delta: float = 0.5,
    integration: Any = "auto",
) -> GaussianReference:
    r"""Single-Gaussian RU or LU reference with an active constraint.

    RU: :math:`b = \mathrm{KL}(p_0\|q) + \delta` (the constraint value at :math:`p_0` plus
    ``delta``); LU: :math:`\tau = E_{p_0}[\log q] - \delta`.

    Parameters
    ----------
    kind
        ``"RU"`` or ``"LU"``.
    s0
        Standard deviation of :math:`p_0=\mathcal N(0,s_0^2)`.
    mu
        Mean of :math:`q=\mathcal N(\mu,s^2)`.
    s
        Standard deviation of :math:`q`.
    delta
        How far beyond the pretrained model's value the level is (``> 0``: active).
    integration
        Passed to the library problem.
    """
    if kind not in ("RU", "LU"):
        raise ValueError(f"gaussian_reference: parameter 'kind' must be 'RU' or 'LU', got {kind!r}")
    p0 = GaussianMixture([1.0], [[0.0]], s0**2)
    q = GaussianMixture([1.0], [[mu]], s**2)
    problem: UnlearningProblem
    if kind == "RU":
        level = gaussian_kl(0.0, s0**2, mu, s**2) + delta
        problem = _kl_problem(p0, [q], [level], "reverse", integration)
    else:
        e_logq = -0.5 * math.log(2 * math.pi * s**2) - (mu**2 + s0**2) / (2 * s**2)
        level = e_logq - delta
        problem = LikelihoodConstrainedProblem(p0, [q], bounds=[level], integration=integration)
    return GaussianReference(problem=problem, kind=kind, s0=s0, mu=mu, s=s, level=level)
