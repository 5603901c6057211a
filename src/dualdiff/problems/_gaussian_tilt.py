r"""Exact Gaussian tilts: products of powers of Gaussian densities, in closed form.

A product of signed powers of Gaussian densities is an unnormalised Gaussian,

.. math::
    e^{a}\prod_j \mathcal N(x;\mu_j,\Sigma_j)^{s_j}
    = e^{a_0 - \frac12 x^\top A x + h^\top x},\qquad
    A = \sum_j s_j P_j,\quad h = \sum_j s_j P_j\mu_j,

with :math:`P_j = \Sigma_j^{-1}`, finite mass iff :math:`A \succ 0`, and

.. math::
    \log\int = a_0 + \tfrac d2\log 2\pi - \tfrac12\log|A| + \tfrac12 h^\top A^{-1}h,
    \qquad \text{mean } A^{-1}h,\ \text{covariance } A^{-1}.

This gives (see :doc:`/mathematics`, "Exact closed forms"):

* the **exact** LU target for ``likelihood="log"`` with Gaussian :math:`q_i` (component
  :math:`k` of :math:`p_0\prod_i q_i^{-\lambda_i}` has precision :math:`P_k-\sum_i\lambda_iP_i`)
  and the exact RU target for a single-Gaussian :math:`p_0` (precision
  :math:`\beta(P_0-\sum_i\lambda_iP_i)`, :math:`\beta = 1/(1-\Lambda)`), in any dimension;
* **envelopes** (upper bounds made of Gaussians) of the tilted targets that have no closed form,
  used to place integration boxes where the target's mass is and to bound the mass a box
  misses: :math:`q_i \ge v_{ij}\mathcal N_{ij}` gives :math:`q_i^{-c}\le v_{ij}^{-c}
  \mathcal N_{ij}^{-c}` for every component :math:`j`, and for :math:`\beta\ge1`,
  :math:`(\sum_k w_k\mathcal N_k)^\beta \le K^{\beta-1}\sum_k w_k^\beta\mathcal N_k^\beta`.

Log-densities of Gaussians are quadratics :math:`-\frac12 x^\top Bx + b^\top x + c`; their
means and covariances under a Gaussian mixture are closed-form too
(:func:`quadratic_moments`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._constants import FLOAT64 as _DTYPE
from .._constants import LOG_2PI as _LOG_2PI
from ..models.gaussian_mixture import GaussianMixture

__all__ = [
    "Quadratic",
    "TiltedMixture",
    "gaussian_log_quadratic",
    "is_single_gaussian",
    "quadratic_moments",
    "tilted_envelope",
    "tilted_mixture",
]

#: Most (p0-component, q-component choice) combinations an envelope enumerates.
_MAX_COMBOS = 256


@dataclass(frozen=True)
class Quadratic:
    r"""A quadratic function :math:`f(x) = -\tfrac12 x^\top B x + b^\top x + c`.

    Attributes
    ----------
    B
        ``(d, d)`` symmetric.
    b
        ``(d,)``.
    c
        Scalar.
    """

    B: torch.Tensor
    b: torch.Tensor
    c: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Value at ``x`` ``(..., d)``, shape ``(...)``."""
        return -0.5 * torch.einsum("...i,ij,...j->...", x, self.B, x) + x @ self.b + self.c

    def scaled(self, s: float) -> Quadratic:
        """``s * f``."""
        return Quadratic(s * self.B, s * self.b, s * self.c)

    def __add__(self, other: Quadratic) -> Quadratic:
        return Quadratic(self.B + other.B, self.b + other.b, self.c + other.c)


def gaussian_log_quadratic(mean: torch.Tensor, cov: torch.Tensor) -> Quadratic:
    r""":math:`\log\mathcal N(x;\mu,\Sigma)` as a :class:`Quadratic`.

    ``mean`` has shape ``(d,)``, ``cov`` ``(d, d)``.
    """
    mean, cov = mean.to(_DTYPE), cov.to(_DTYPE)
    prec = torch.linalg.inv(cov)
    prec = 0.5 * (prec + prec.T)
    d = mean.shape[0]
    logdet = float(torch.linalg.slogdet(cov)[1])
    c = -0.5 * float(mean @ prec @ mean) - 0.5 * (d * _LOG_2PI + logdet)
    return Quadratic(prec, prec @ mean, c)


def is_single_gaussian(p: GaussianMixture) -> bool:
    """Whether ``p`` has exactly one component of positive weight."""
    return int((p.weights > 0).sum()) == 1


def _single(p: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    k = int(torch.nonzero(p.weights > 0)[0])
    return p.means[k].to(_DTYPE), p.covariances[k].to(_DTYPE)


def _complete_square(f: Quadratic) -> tuple[float, torch.Tensor, torch.Tensor] | None:
    r"""``(log int e^f, mean, cov)`` of :math:`e^{f}`, or ``None`` if :math:`B\not\succ0`."""
    B = 0.5 * (f.B + f.B.T)
    chol, info = torch.linalg.cholesky_ex(B)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        return None
    if float(torch.diagonal(chol).min()) <= 1e-300:
        return None
    cov = torch.cholesky_inverse(chol)
    cov = 0.5 * (cov + cov.T)
    mean = cov @ f.b
    d = f.b.shape[0]
    logdet_B = 2.0 * float(torch.log(torch.diagonal(chol)).sum())
    log_mass = f.c + 0.5 * d * _LOG_2PI - 0.5 * logdet_B + 0.5 * float(f.b @ mean)
    return log_mass, mean, cov


@dataclass(frozen=True)
class TiltedMixture:
    r"""An unnormalised Gaussian mixture :math:`\sum_k e^{\log M_k}\mathcal N(m_k, S_k)`.

    Attributes
    ----------
    log_masses
        ``(K,)``, the log-masses :math:`\log M_k`.
    means
        ``(K, d)``.
    covariances
        ``(K, d, d)``.
    """

    log_masses: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor

    @property
    def log_mass(self) -> float:
        r""":math:`\log\sum_k M_k` (the log-normaliser when the mixture is exact)."""
        return float(torch.logsumexp(self.log_masses, 0))

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights ``(K,)``."""
        return torch.softmax(self.log_masses, 0)

    def mixture(self) -> GaussianMixture:
        """The normalised :class:`~dualdiff.GaussianMixture`."""
        return GaussianMixture(self.weights, self.means, self.covariances)

    def log_outside_mass(self, lo: torch.Tensor, hi: torch.Tensor) -> float:
        r"""Upper bound on :math:`\log` of the mass outside the box ``[lo, hi]`` (``(d,)`` each).

        Union bound over coordinates of each component's Gaussian marginal tails.
        """
        std = torch.sqrt(torch.diagonal(self.covariances, dim1=-2, dim2=-1))  # (K, d)
        z_lo = (lo[None] - self.means) / std
        z_hi = (hi[None] - self.means) / std
        normal = torch.distributions.Normal(
            torch.zeros((), dtype=_DTYPE), torch.ones((), dtype=_DTYPE)
        )
        log_lo = _log_ndtr(z_lo, normal)  # log P(X < lo)
        log_hi = _log_ndtr(-z_hi, normal)  # log P(X > hi)
        per = torch.logaddexp(log_lo, log_hi)  # (K, d)
        per_comp = torch.logsumexp(per, -1).clamp_max(0.0)  # union bound, <= 1
        return float(torch.logsumexp(self.log_masses + per_comp, 0))


def _log_ndtr(z: torch.Tensor, normal: torch.distributions.Normal) -> torch.Tensor:
    """``log Phi(z)`` accurately in both tails."""
    out = torch.log(normal.cdf(z).clamp_min(1e-300))
    far = z < -8
    if bool(far.any()):
        zf = z[far]
        # asymptotic: log Phi(z) ~ -z^2/2 - log(-z) - log sqrt(2 pi) + log(1 - 1/z^2)
        out = out.clone()
        out[far] = -0.5 * zf**2 - torch.log(-zf) - 0.5 * _LOG_2PI + torch.log1p(-1 / zf**2)
    return out


def _components(p: GaussianMixture) -> list[tuple[float, Quadratic]]:
    out = []
    for k in range(p.n_components):
        w = float(p.weights[k])
        if w > 0:
            out.append((math.log(w), gaussian_log_quadratic(p.means[k], p.covariances[k])))
    return out


def tilted_mixture(
    p0: GaussianMixture,
    qs: Sequence[GaussianMixture],
    coefficients: Sequence[float],
    power: float = 1.0,
) -> TiltedMixture | None:
    r"""The exact mixture :math:`p_0^{a}\prod_i q_i^{-c_i}` when it has one.

    Exact when every :math:`q_i` with :math:`c_i\ne0` is a single Gaussian and either
    ``power == 1`` (any :math:`p_0`) or :math:`p_0` is a single Gaussian.

    Parameters
    ----------
    p0
        Pretrained mixture.
    qs
        The :math:`q_i`, length ``m``.
    coefficients
        :math:`c_i`, length ``m``.
    power
        :math:`a`.

    Returns
    -------
    TiltedMixture or None
        ``None`` when there is no closed form (mixture ``q_i``, or ``power != 1`` with a mixture
        ``p0``). Raises ``ValueError`` when a component is not normalisable.
    """
    active = [(float(c), q) for c, q in zip(coefficients, qs, strict=True) if float(c) != 0.0]
    if not all(is_single_gaussian(q) for _, q in active):
        return None
    if power != 1.0 and not is_single_gaussian(p0):
        return None
    tilt = None
    for c, q in active:
        term = gaussian_log_quadratic(*_single(q)).scaled(-c)
        tilt = term if tilt is None else tilt + term
    lm, mu, cov = [], [], []
    for logw, comp in _components(p0):
        f = comp.scaled(power)
        f = Quadratic(f.B, f.b, f.c + power * logw)
        if tilt is not None:
            f = f + tilt
        done = _complete_square(f)
        if done is None:
            raise ValueError(
                "tilted_mixture: a component of p0^a prod q_i^(-c_i) is not normalisable "
                f"(coefficients {list(coefficients)}, power {power})"
            )
        lm.append(done[0])
        mu.append(done[1])
        cov.append(done[2])
    return TiltedMixture(torch.tensor(lm, dtype=_DTYPE), torch.stack(mu), torch.stack(cov))


def tilted_envelope(
    p0: GaussianMixture,
    qs: Sequence[GaussianMixture],
    coefficients: Sequence[float],
    power: float = 1.0,
) -> TiltedMixture | None:
    r"""Gaussian envelopes of :math:`p_0^{a}\prod_i q_i^{-c_i}` (``a >= 1``, ``c_i >= 0``).

    For each component :math:`k` of :math:`p_0` and each choice :math:`j_i` of a component of
    every :math:`q_i`, the Gaussian

    .. math::
        K^{a-1} w_k^{a}\,\mathcal N_k^{a}\prod_i (v_{ij_i}\mathcal N_{ij_i})^{-c_i}

    bounds the contribution of component :math:`k` from above (exact when everything is a
    single Gaussian). The integrand is at most the sum over :math:`k` of the *minimum* over
    choices, so the mass outside a box is at most the smallest, over choice patterns, of the
    envelopes' outside mass; a box covering every returned component covers them all. Choices
    whose precision is not positive definite are skipped (a wider component of the same
    :math:`q_i` bounds that tail).

    Returns
    -------
    TiltedMixture or None
        Every valid (component, choice) Gaussian, or ``None`` if none is valid or there are more
        than 256 combinations.
    """
    if power < 1.0:
        return None
    active = [(float(c), q) for c, q in zip(coefficients, qs, strict=True) if float(c) != 0.0]
    q_parts = [[(c, lw, quad) for lw, quad in _components(q)] for c, q in active]
    p_parts = _components(p0)
    n_combo = len(p_parts) * math.prod(len(p) for p in q_parts)
    if n_combo > _MAX_COMBOS:
        return None
    k_count = len(p_parts)
    lm, mu, cov = [], [], []
    for logw, comp in p_parts:
        base = comp.scaled(power)
        base = Quadratic(base.B, base.b, base.c + power * logw + (power - 1.0) * math.log(k_count))
        for choice in itertools.product(*q_parts) if q_parts else [()]:
            f = base
            for c, lv, quad in choice:
                g = quad.scaled(-c)
                f = f + Quadratic(g.B, g.b, g.c - c * lv)
            done = _complete_square(f)
            if done is None:
                continue
            lm.append(done[0])
            mu.append(done[1])
            cov.append(done[2])
    if not lm:
        return None
    return TiltedMixture(torch.tensor(lm, dtype=_DTYPE), torch.stack(mu), torch.stack(cov))


def quadratic_moments(
    mix: TiltedMixture, fs: Sequence[Quadratic]
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean ``(n,)`` and covariance ``(n, n)`` of quadratics ``fs`` under a Gaussian mixture.

    Under :math:`\mathcal N(m, S)`, with :math:`f = -\frac12 x^\top Bx+b^\top x+c`:

    .. math::
        E f = -\tfrac12(\operatorname{tr}BS + m^\top Bm) + b^\top m + c,\qquad
        \operatorname{Cov}(f, g) = \tfrac12\operatorname{tr}(BSCS) + (b-Bm)^\top S\,(b'-Cm),

    and over the mixture (weights :math:`\pi_k`) the law of total covariance.
    """
    pi = mix.weights
    n = len(fs)
    K = pi.shape[0]
    means_k = torch.empty(K, n, dtype=_DTYPE)
    covs_k = torch.empty(K, n, n, dtype=_DTYPE)
    for k in range(K):
        m, S = mix.means[k], mix.covariances[k]
        lin = []
        for a, f in enumerate(fs):
            means_k[k, a] = -0.5 * (torch.trace(f.B @ S) + m @ f.B @ m) + f.b @ m + f.c
            lin.append(f.b - f.B @ m)
        for a, fa in enumerate(fs):
            for b_, fb in enumerate(fs[: a + 1]):
                v = 0.5 * torch.trace(fa.B @ S @ fb.B @ S) + lin[a] @ S @ lin[b_]
                covs_k[k, a, b_] = v
                covs_k[k, b_, a] = v
    mean = pi @ means_k
    dev = means_k - mean
    cov = torch.einsum("k,kab->ab", pi, covs_k) + torch.einsum("k,ka,kb->ab", pi, dev, dev)
    return mean, cov
