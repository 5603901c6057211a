"""Exact identities of the closed-form targets and duals, checked against independent formulas.

* RU score = ESD's negative-guidance target (both of ESD's parametrisations), at t = 0 and
  composed at t > 0, with scores from plain numpy (``dualdiff.testing.mixture_score``);
* FU with ``p0 = (1-a) q_r + a q`` at ``lam = a`` is exactly the retrained model ``q_r``, at
  every diffusion time; its ``lam_max`` is certified equal to ``a``;
* RU and LU tilts of Gaussians are the hand-derived Gaussians (scipy.stats);
* single-Gaussian RU / LU references (closed-form dual, Brent root for ``lam*``) match
  ``solve_dual``;
* the library's dual equals the Lagrangian ``f(p_lam) - lam . slack(p_lam)`` evaluated through
  ``certificate`` (objective and constraints of the target: an independent formula path), and
  the Danskin gradient equals ``-slack``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem
from dualdiff.testing import (
    gaussian_reference,
    mixture_log_pdf,
    mixture_score,
    retrain_reference,
    standard_suite,
)

SUITE = {c.name: c.problem for c in standard_suite()}
TIMES = [0.0, 0.05, 0.3, 0.8]


def _points(d: int, n: int = 40, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, d, dtype=torch.float64, generator=gen)


# ----------------------------------------------------------------------------- RU = ESD
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("lam", [0.1, 0.45, 0.8])
def test_ru_score_is_esd_negative_guidance(d: int, lam: float) -> None:
    p0 = GaussianMixture(
        [0.5, 0.3, 0.2], [[-2.0] * d, [0.0] * d, [2.5] * d], [[1.0] * d, [0.5] * d, [0.7] * d]
    )
    # q = p0(. | c): a concept component as wide as p0's widest, so every lam < 1 is in the
    # RU domain (a narrower concept caps lam at var_c / var_max)
    concept = p0.component(0)
    prob = KLConstrainedProblem(p0, [concept], bounds=[1.0], direction="reverse")
    target = prob.target([lam])
    eta = lam / (1.0 - lam)  # ESD guidance scale chosen by duality
    x = _points(d)
    xn = x.numpy()
    for t in TIMES:
        s0, sc = mixture_score(p0, xn, t), mixture_score(concept, xn, t)
        # ESD (original code, anchored on the unconditional score): s0 + eta (s0 - s_c)
        esd = s0 + eta * (s0 - sc)
        # ESD (current code, anchored on the conditional one): (1 - e) s_c + e s0, e = 1/(1-lam)
        e = 1.0 / (1.0 - lam)
        esd_cond = (1.0 - e) * sc + e * s0
        got = target.score(x, t).numpy()
        np.testing.assert_allclose(got, esd, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(got, esd_cond, rtol=1e-10, atol=1e-9)
    assert target.score_at_positive_t == "composed"


def test_ru_score_with_two_concepts_and_per_point_times() -> None:
    p0 = SUITE["RU-2d-m2"].pretrained
    qs = SUITE["RU-2d-m2"].unlearn
    prob = KLConstrainedProblem(p0, qs, bounds=[1.0, 1.0], direction="reverse")
    lam = np.array([0.2, 0.3])
    eta = lam / (1.0 - lam.sum())  # eta_i = lam_i / (1 - Lam)
    x = _points(2, 12)
    t = torch.linspace(0.0, 0.9, 12, dtype=torch.float64)
    got = prob.target(lam).score(x, t).numpy()
    for j in range(12):
        xj, tj = x[j : j + 1].numpy(), float(t[j])
        s0 = mixture_score(p0, xj, tj)
        ref = s0 + sum(e * (s0 - mixture_score(q, xj, tj)) for e, q in zip(eta, qs, strict=True))
        np.testing.assert_allclose(got[j : j + 1], ref, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- FU retrain
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("a", [0.1, 0.3, 0.6])
def test_fu_at_forget_weight_is_the_retrained_model(dim: int, a: float) -> None:
    ref = retrain_reference(a, dim=dim)
    target = ref.problem.target([a])
    x = _points(dim)
    xn = x.numpy()
    for t in TIMES:
        lp = target.log_prob(x, t) if t > 0 else target.log_prob(x)
        np.testing.assert_allclose(lp.numpy(), mixture_log_pdf(ref.retained, xn, t), atol=1e-10)
        np.testing.assert_allclose(
            target.score(x, t).numpy(), mixture_score(ref.retained, xn, t), atol=1e-9, rtol=1e-9
        )


@pytest.mark.parametrize("a", [0.1, 0.3, 0.6])
def test_fu_lam_max_is_certified_forget_weight(a: float) -> None:
    ref = retrain_reference(a)
    (info,) = ref.problem.lam_max
    assert info.certified
    assert info.value == pytest.approx(a, abs=1e-12)
    assert ref.problem.in_domain([a])
    assert not ref.problem.in_domain([a * (1 + 1e-6)])


@pytest.mark.parametrize("a", [0.1, 0.3, 0.6])
def test_fu_retrain_reference_dual_solution(a: float) -> None:
    """With b = KL(q || q_r) the dual maximiser is lam* = a and D* = KL(p0 || q_r) (quad)."""
    ref = retrain_reference(a)
    sol = ref.problem.solve_dual()
    assert float(sol.multipliers[0]) == pytest.approx(a, abs=1e-9)
    assert sol.dual_value == pytest.approx(ref.optimal_value, abs=1e-8)
    cert = sol.certificate
    assert cert.feasible
    assert abs(cert.gap) <= 1e-8
    assert abs(float(cert.slack[0])) <= 1e-8  # KL(q || q_r) = b exactly: active, attained


def test_fu_retrain_reference_status_is_optimal() -> None:
    sol = retrain_reference(0.3).problem.solve_dual()
    assert sol.status == "optimal", sol.message


# ----------------------------------------------------------------------------- Gaussian tilts
@pytest.mark.parametrize("kind", ["RU", "LU"])
@pytest.mark.parametrize("frac", [0.1, 0.3, 0.5])  # tilts that stay inside the library's box
def test_gaussian_tilt_is_the_hand_derived_gaussian(kind: str, frac: float) -> None:
    ref = gaussian_reference(kind, s0=1.2, mu=1.5, s=1.0)
    lam = frac * min(ref.upper, 1.0)
    mean, var = ref.target_params(lam)
    target = ref.problem.target([lam])
    x = torch.linspace(-4.0, 4.0, 17, dtype=torch.float64)[:, None]
    expected = scipy.stats.norm.logpdf(x[:, 0].numpy(), mean, math.sqrt(var))
    # log Z comes from the library's grid: accurate to ~1e-10 while the tilt is inside its box
    np.testing.assert_allclose(target.log_prob(x).numpy(), expected, atol=1e-8)
    np.testing.assert_allclose(
        target.score(x, 0.0)[:, 0].numpy(), -(x[:, 0].numpy() - mean) / var, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize(
    ("kind", "s0", "mu", "s", "delta"),
    [
        ("RU", 1.0, 2.0, 1.5, 0.5),
        ("RU", 1.0, 2.0, 0.8, 0.5),
        ("RU", 1.5, -1.0, 1.0, 1.0),
        ("RU", 1.0, 1.0, 1.2, 3.0),
        ("LU", 1.0, 2.0, 1.5, 0.5),
        ("LU", 1.0, 2.0, 0.8, 0.5),
        ("LU", 1.5, -1.0, 1.0, 0.3),
        ("LU", 1.0, 0.0, 1.0, 0.3),
    ],
)
def test_single_gaussian_reference_matches_solve_dual(
    kind: str, s0: float, mu: float, s: float, delta: float
) -> None:
    ref = gaussian_reference(kind, s0=s0, mu=mu, s=s, delta=delta)
    lam_star = ref.multiplier
    assert lam_star > 0  # the level is active by construction
    sol = ref.problem.solve_dual()
    assert sol.status == "optimal"
    # gtol = 1e-10 on the gradient -> |lam - lam*| <= 1e-10 / |g''|; grid error ~1e-10
    assert float(sol.multipliers[0]) == pytest.approx(lam_star, abs=1e-8)
    assert sol.dual_value == pytest.approx(ref.optimal_value, abs=1e-9)
    # P* = KL(p_lam* || p0) = D*: strong duality in closed form
    assert ref.objective(lam_star) == pytest.approx(ref.optimal_value, abs=1e-12)
    for frac in (0.2, 0.6):
        lam = frac * lam_star
        assert ref.problem.dual([lam]) == pytest.approx(ref.dual(lam), abs=1e-9)
        grad = float(ref.problem.dual_gradient([lam])[0])
        assert grad == pytest.approx(ref.dual_gradient(lam), abs=1e-8)


def _quad(f, lo: float = -60.0, hi: float = 60.0) -> float:
    return float(scipy.integrate.quad(f, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)[0])


def _check_reference_at(ref, lam: float) -> None:
    norm = scipy.stats.norm
    a, c = (1 / (1 - lam), lam / (1 - lam)) if ref.kind == "RU" else (1.0, lam)

    def log_u(x: float) -> float:
        return a * norm.logpdf(x, 0.0, ref.s0) - c * norm.logpdf(x, ref.mu, ref.s)

    log_z = math.log(_quad(lambda x: math.exp(log_u(x))))
    assert ref.log_normalizer(lam) == pytest.approx(log_z, abs=1e-9)
    m, v = ref.target_params(lam)
    for x in (-1.0, 0.3, 2.0):  # the normalised tilt is N(m, v)
        assert log_u(x) - log_z == pytest.approx(norm.logpdf(x, m, math.sqrt(v)), abs=1e-9)

    def p_log_ratio(log_other) -> float:
        return _quad(lambda x: norm.pdf(x, m, math.sqrt(v)) * log_other(x))

    kl_p0 = -p_log_ratio(lambda x: norm.logpdf(x, 0.0, ref.s0)) - 0.5 * math.log(
        2 * math.pi * math.e * v
    )
    assert ref.objective(lam) == pytest.approx(kl_p0, abs=1e-9)
    e_logq = p_log_ratio(lambda x: norm.logpdf(x, ref.mu, ref.s))
    if ref.kind == "RU":  # KL(p || q) = -H(p) - E_p[log q]
        expected = -0.5 * math.log(2 * math.pi * math.e * v) - e_logq
    else:
        expected = e_logq
    assert ref.constraint(lam) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("kind", ["RU", "LU"])
def test_reference_closed_forms_against_quadrature(kind: str) -> None:
    """The references themselves (no library code): log Z, KL and E[log q] by scipy quad."""
    ref = gaussian_reference(kind, s0=1.2, mu=1.5, s=1.0)
    for frac in (0.2, 0.6):
        _check_reference_at(ref, frac * ref.upper)
    # the reported optimum solves the first-order condition of the closed-form dual
    lam_star, h = ref.multiplier, 1e-6
    assert (ref.dual(lam_star + h) - ref.dual(lam_star - h)) / (2 * h) == pytest.approx(
        0.0, abs=1e-7
    )


def test_wide_lu_tilt_matches_closed_form() -> None:
    ref = gaussian_reference("LU", s0=1.0, mu=0.0, s=1.0, delta=3.0)
    assert ref.multiplier == pytest.approx(6.0 / 7.0, abs=1e-12)  # the reference itself
    sol = ref.problem.solve_dual()
    assert float(sol.multipliers[0]) == pytest.approx(6.0 / 7.0, abs=1e-6)
    assert sol.dual_value == pytest.approx(ref.optimal_value, abs=1e-6)


# ----------------------------------------------------------------------------- Lagrangian
@pytest.mark.parametrize(
    "name", ["RU-1d-m1", "RU-1d-m2", "FU-1d-m1", "FU-1d-m2", "LU-1d-m2", "FU-2d-m1", "LU-2d-m2"]
)
def test_dual_equals_lagrangian_at_the_target(name: str) -> None:
    """g(lam) = f(p_lam) - lam . slack(p_lam), and grad g(lam) = -slack(p_lam)."""
    prob = SUITE[name]
    lam_star = prob.solve_dual().multipliers
    for frac in (0.0, 0.4, 1.0):
        lam = frac * lam_star
        cert = prob.certificate(prob.target(lam), lam)
        lagrangian = cert.primal_value - float(lam @ cert.slack)
        assert cert.dual_value == pytest.approx(lagrangian, abs=1e-9)
        assert prob.dual(lam) == pytest.approx(lagrangian, abs=1e-9)
        torch.testing.assert_close(prob.dual_gradient(lam), -cert.slack, atol=1e-9, rtol=0)
        assert cert.normalisation == pytest.approx(1.0, abs=1e-9)


def test_lu_certificate_matches_hand_computed_lagrangian() -> None:
    """LU at fixed lam: objective/constraint of the Gaussian target from the closed forms."""
    ref = gaussian_reference("LU", s0=1.0, mu=2.0, s=1.5)
    prob = ref.problem
    assert isinstance(prob, LikelihoodConstrainedProblem)
    for lam in (0.1, 0.4):
        cert = prob.certificate(prob.target([lam]), [lam])
        assert cert.primal_value == pytest.approx(ref.objective(lam), abs=1e-9)
        assert float(cert.constraint_values[0]) == pytest.approx(ref.constraint(lam), abs=1e-9)
        assert cert.dual_value == pytest.approx(ref.dual(lam), abs=1e-9)
