"""The standard suite of named RU/FU/LU problems (``dualdiff verify``).

Part of :mod:`dualdiff.testing`; see the package docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..models.gaussian_mixture import GaussianMixture
from ..problems import AnalyticProblem as UnlearningProblem  # the closed-form problems
from ..problems import (
    LikelihoodConstrainedProblem,
)
from .densities import _kl_problem, mixture_log_pdf

__all__ = [
    "SuiteCase",
    "pretrained_value",
    "standard_suite",
]


@dataclass(frozen=True)
class SuiteCase:
    """One named problem of :func:`standard_suite`.

    Attributes
    ----------
    name
        Stable identifier, e.g. ``"RU-1d-m1"``.
    problem
        The problem (every constraint active at the pretrained model).
    tolerance
        Bound on the absolute duality gap ``|certificate.gap|`` of ``problem.solve_dual()``
        (nats), and, for 1-D cases, on ``|P_bruteforce - D*|`` of the 121-point discretisation.
    """

    name: str
    problem: UnlearningProblem
    tolerance: float


def standard_suite() -> list[SuiteCase]:
    r"""Named RU/FU/LU problems (``m = 1, 2``; ``d = 1, 2``) with active constraints.

    1-D: :math:`p_0` has three modes (at -3, 0, 3); the unlearning distributions are its
    right and left modes. 2-D: four anisotropic modes on a square; unlearn two opposite
    corners. Levels are set relative to the pretrained model so every constraint binds at the
    optimum (both are active for ``m = 2``):

    * RU: :math:`b_i = \mathrm{KL}(p_0\|q_i) + 4`;
    * FU: :math:`b_i = \mathrm{KL}(q_i\|p_0) + 0.5` (small enough that :math:`\lambda^\star`
      stays inside the domain, :math:`\lambda_i < \lambda_{\max,i}`);
    * LU: :math:`\tau_i = E_{p_0}[\log q_i] - 4`.

    The values at :math:`p_0` are computed here by trapezoid sums of numpy densities on a
    fine grid, not by the library.

    Names are ``"{kind}-{d}d-m{m}"`` (e.g. ``"FU-2d-m2"``), in the order RU, FU, LU for
    ``d = 1`` then ``d = 2``. Every ``tolerance`` is ``1e-6``: the grid certificates reach
    ~1e-9 or better (1-D ~1e-13), and 121-point brute force agrees with the discrete dual to
    ~1e-14.

    Returns
    -------
    list of SuiteCase
        Twelve cases; building them takes well under a second (nothing is solved).
    """
    p0_1 = GaussianMixture([0.45, 0.3, 0.25], [[-3.0], [0.0], [3.0]], [[1.0], [0.6], [0.8]])
    p0_2 = GaussianMixture(
        [0.3, 0.3, 0.2, 0.2],
        [[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]],
        [[1.0, 1.0], [0.8, 1.2], [1.0, 0.7], [0.9, 0.9]],
    )
    setups = [
        (1, p0_1, [p0_1.component(2), p0_1.component(0)]),
        (2, p0_2, [p0_2.component(3), p0_2.component(0)]),
    ]
    deltas = {"RU": 4.0, "FU": 0.5, "LU": 4.0}
    cases: list[SuiteCase] = []
    for d, p0, qs in setups:
        x, log_w = _reference_grid(d)
        lp0 = mixture_log_pdf(p0, x)
        base = {
            kind: [_value_at_p0(kind, lp0, mixture_log_pdf(q, x), log_w) for q in qs]
            for kind in ("RU", "FU", "LU")
        }
        for kind in ("RU", "FU", "LU"):
            for m in (1, 2):
                q, dlt = qs[:m], deltas[kind]
                problem: UnlearningProblem
                if kind == "LU":
                    problem = LikelihoodConstrainedProblem(
                        p0, q, bounds=[v - dlt for v in base[kind][:m]]
                    )
                else:
                    problem = _kl_problem(
                        p0,
                        q,
                        [v + dlt for v in base[kind][:m]],
                        "reverse" if kind == "RU" else "forward",
                    )
                cases.append(SuiteCase(f"{kind}-{d}d-m{m}", problem, 1e-6))
    return cases


def pretrained_value(kind: str, p0: GaussianMixture, q: GaussianMixture) -> float:
    r"""The constraint functional at the pretrained model, by numpy quadrature.

    RU: :math:`\mathrm{KL}(p_0\|q)`; FU: :math:`\mathrm{KL}(q\|p_0)`; LU:
    :math:`E_{p_0}[\log q]`. Levels that bind are on the far side of this value
    (RU/FU: :math:`b` above it; LU: :math:`\tau` below it).

    Computed by the trapezoid rule on a fixed fine grid (``[-30, 30]`` with 6001 points in
    1-D, ``[-14, 14]^2`` with 281 points per axis in 2-D), so the mixtures must lie well
    inside that box (``d <= 2``).
    """
    if kind not in ("RU", "FU", "LU"):
        raise ValueError(f"pretrained_value: 'kind' must be 'RU', 'FU' or 'LU', got {kind!r}")
    if p0.dim > 2:
        raise ValueError(f"pretrained_value: needs d <= 2, got d={p0.dim}")
    x, log_h = _reference_grid(p0.dim)
    return _value_at_p0(kind, mixture_log_pdf(p0, x), mixture_log_pdf(q, x), log_h)


def _reference_grid(d: int) -> tuple[np.ndarray, float]:
    """Fine trapezoid grid ``(N, d)`` on ``[-30, 30]`` / ``[-14, 14]^2`` and its log cell size."""
    if d == 1:
        ax = np.linspace(-30.0, 30.0, 6001)
        return ax[:, None], math.log(ax[1] - ax[0])
    ax = np.linspace(-14.0, 14.0, 281)
    xx, yy = np.meshgrid(ax, ax, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], -1), 2 * math.log(ax[1] - ax[0])


def _value_at_p0(kind: str, lp0: np.ndarray, lq: np.ndarray, log_h: float) -> float:
    """RU: KL(p0||q); FU: KL(q||p0); LU: E_p0[log q] from log-densities on a reference grid.

    The integrands vanish at the grid's edge, so the plain sum times the cell size is the
    trapezoid rule (spectrally accurate for these smooth, rapidly decaying integrands).
    """
    if kind == "RU":
        f = np.exp(lp0) * (lp0 - lq)
    elif kind == "FU":
        f = np.exp(lq) * (lq - lp0)
    else:
        f = np.exp(lp0) * lq
    return float(np.sum(f) * math.exp(log_h))
