"""Unit tests of the problems: Monte Carlo vs grid, statuses, inactive constraints, iterations.

Also regressions for solver / integration bugs found by the property and reference tests
(a multiplier pinned by the FU domain, the status at lam_max, grids too narrow for wide
tilts).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dualdiff import (
    ForwardKLProblem,
    GaussianMixture,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
    MonteCarlo,
    ReverseKLProblem,
)
from dualdiff.testing import gaussian_reference, pretrained_value, retrain_reference, standard_suite

SUITE = {c.name: c.problem for c in standard_suite()}


# ----------------------------------------------------------------------------- Monte Carlo
def _mc_copy(prob, n: int, seed: int):
    if prob.kind == "LU":
        return LikelihoodConstrainedProblem(
            prob.pretrained,
            prob.unlearn,
            bounds=prob.bounds,
            integration=MonteCarlo(n=n, seed=seed),
        )
    return KLConstrainedProblem(
        prob.pretrained,
        prob.unlearn,
        bounds=prob.bounds,
        direction="reverse" if prob.kind == "RU" else "forward",
        integration=MonteCarlo(n=n, seed=seed),
    )


@pytest.mark.parametrize("name", ["RU-2d-m1", "FU-2d-m1", "LU-2d-m2"])
def test_monte_carlo_agrees_with_grid_within_error_bars(name: str) -> None:
    grid = SUITE[name]
    sol = grid.solve_dual()
    lam = sol.multipliers
    mc = _mc_copy(grid, n=100_000, seed=0)
    cert_grid = grid.certificate(sol.target, lam)
    cert_mc = mc.certificate(sol.target, lam)
    assert cert_mc.method == "monte_carlo" and cert_grid.method == "grid"
    # 4 standard errors: a two-sided 6e-5 false-alarm rate per quantity (seed fixed anyway)
    assert abs(cert_mc.dual_value - cert_grid.dual_value) <= 4 * cert_mc.dual_error
    assert abs(cert_mc.primal_value - cert_grid.primal_value) <= 4 * cert_mc.primal_error
    diff = (cert_mc.constraint_values - cert_grid.constraint_values).abs()
    assert bool((diff <= 4 * cert_mc.constraint_errors).all()), (diff, cert_mc.constraint_errors)
    # sensible (not vacuous) error bars at n = 1e5: a few percent of the values at most
    assert cert_mc.primal_error <= 0.1 * abs(cert_grid.primal_value)
    assert bool((cert_mc.constraint_errors <= 0.05 * cert_grid.constraint_values.abs()).all())
    # the MC dual maximiser is near the grid one
    sol_mc = mc.solve_dual()
    assert sol_mc.status == "optimal", sol_mc.message
    # LU-log with Gaussian q_i is solved in closed form whatever the rule
    expected = "closed_form" if getattr(mc, "closed_form", False) else "monte_carlo"
    assert sol_mc.certificate.method == expected
    torch.testing.assert_close(sol_mc.multipliers, lam, atol=0.02, rtol=0.1)
    assert abs(sol_mc.dual_value - sol.dual_value) <= 4 * sol_mc.certificate.dual_error


def test_monte_carlo_error_bars_are_calibrated() -> None:
    """Across 8 seeds the spread of MC estimates matches the reported standard errors."""
    grid = SUITE["RU-2d-m1"]
    sol = grid.solve_dual()
    lam = sol.multipliers
    ref = grid.certificate(sol.target, lam)
    est, err = [], []
    for seed in range(8):
        cert = _mc_copy(grid, n=20_000, seed=seed).certificate(sol.target, lam)
        est.append([cert.dual_value, cert.primal_value, float(cert.constraint_values[0])])
        err.append([cert.dual_error, cert.primal_error, float(cert.constraint_errors[0])])
    est_a, err_a = np.array(est), np.array(err)
    truth = np.array([ref.dual_value, ref.primal_value, float(ref.constraint_values[0])])
    z = (est_a - truth) / err_a
    assert np.abs(z).max() <= 4.0, z
    # with 8 draws the sample sd is within a factor 2 of the truth with > 99% probability
    ratio = est_a.std(axis=0, ddof=1) / err_a.mean(axis=0)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


# ----------------------------------------------------------------------------- statuses
def test_fu_level_beyond_lam_max_is_boundary() -> None:
    """KL(q || p_lam) <= KL(q || q_r) = 8 on [0, lam_max = 0.3]: a level of 10 is unreachable
    by the closed form; the dual is maximised at lam_max and the status says so."""
    ref = retrain_reference(0.3)  # p0 = 0.7 N(-2, 1) + 0.3 N(2, 1), q = N(2, 1)
    prob = KLConstrainedProblem(
        ref.problem.pretrained, [ref.forget], bounds=[ref.level + 2.0], direction="forward"
    )
    sol = prob.solve_dual()
    assert sol.status == "boundary"
    assert "not attained" in sol.message
    assert float(sol.multipliers[0]) == pytest.approx(0.3, abs=1e-12)
    assert prob.in_domain(sol.multipliers)
    cert = sol.certificate
    assert not cert.feasible
    assert float(cert.slack[0]) == pytest.approx(-2.0, abs=1e-6)  # KL(q || q_r) - (8 + 2)
    assert float(sol.gradient[0]) == pytest.approx(2.0, abs=1e-6)  # still ascending


@pytest.mark.parametrize("tau", [-0.1, 0.0])
def test_lu_density_level_at_or_below_zero_is_infeasible(tau: float) -> None:
    """E_p[q(x)] > 0 for every p: tau <= 0 cannot be met, the dual grows without bound."""
    p0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
    prob = LikelihoodConstrainedProblem(p0, [p0.component(1)], bounds=[tau], likelihood="density")
    sol = prob.solve_dual()
    assert sol.status == "infeasible", sol.message
    assert not sol.certificate.feasible


@pytest.mark.parametrize("kind", ["RU", "FU", "LU"])
def test_inactive_constraint_has_zero_multiplier(kind: str) -> None:
    """A level already met by p0 leaves p0 optimal: lam = 0, gap 0, target = p0."""
    p0 = SUITE[f"{kind}-1d-m1"].pretrained
    q = SUITE[f"{kind}-1d-m1"].unlearn[0]
    base = pretrained_value(kind, p0, q)
    if kind == "LU":
        prob = LikelihoodConstrainedProblem(p0, [q], bounds=[base + 0.5])
    else:
        direction = "reverse" if kind == "RU" else "forward"
        prob = KLConstrainedProblem(p0, [q], bounds=[base - 0.5], direction=direction)
    sol = prob.solve_dual()
    assert sol.status == "optimal"
    assert float(sol.multipliers[0]) == 0.0
    assert sol.iterations == 0
    assert abs(sol.certificate.gap) <= 1e-9
    assert float(sol.certificate.slack[0]) == pytest.approx(0.5, abs=1e-6)
    x = torch.linspace(-6.0, 6.0, 25, dtype=torch.float64)[:, None]
    torch.testing.assert_close(sol.target.log_prob(x), p0.log_prob(x), atol=1e-9, rtol=0)


def test_one_of_two_constraints_inactive() -> None:
    prob = SUITE["RU-1d-m2"]
    b = prob.bounds.clone()
    b[1] = pretrained_value("RU", prob.pretrained, prob.unlearn[1]) - 0.5
    two = KLConstrainedProblem(prob.pretrained, prob.unlearn, bounds=b, direction="reverse")
    one = KLConstrainedProblem(prob.pretrained, prob.unlearn[:1], bounds=b[:1], direction="reverse")
    s2, s1 = two.solve_dual(), one.solve_dual()
    assert s2.status == s1.status == "optimal"
    if float(s2.certificate.slack[1]) > 1e-6:  # the second stays met at the first's optimum
        assert float(s2.multipliers[1]) == 0.0
        assert float(s2.multipliers[0]) == pytest.approx(float(s1.multipliers[0]), abs=1e-8)


# ----------------------------------------------------------------------------- iterations
ONE_CONSTRAINT = [c.name for c in standard_suite() if c.problem.m == 1]


@pytest.mark.parametrize("name", ONE_CONSTRAINT)
def test_one_constraint_needs_a_handful_of_iterations(name: str) -> None:
    sol = SUITE[name].solve_dual()
    assert sol.status == "optimal"
    assert sol.iterations <= 15, sol.history
    assert sol.n_evaluations <= 20


@pytest.mark.parametrize("kind", ["RU", "LU"])
@pytest.mark.parametrize("delta", [0.1, 1.0, 2.0])
def test_gaussian_references_need_a_handful_of_iterations(kind: str, delta: float) -> None:
    sol = gaussian_reference(kind, s0=1.0, mu=2.0, s=1.5, delta=delta).problem.solve_dual()
    assert sol.status == "optimal"
    assert sol.iterations <= 15, sol.history


# ----------------------------------------------------------------------------- regressions
def test_fu_solver_with_a_multiplier_pinned_by_the_domain() -> None:
    p0 = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], 0.5)
    q1, q2 = p0.component(1), GaussianMixture([1.0], [[0.0]], 2.0)
    b = [pretrained_value("FU", p0, q) + 0.3 for q in (q1, q2)]
    prob = KLConstrainedProblem(p0, [q1, q2], bounds=b, direction="forward")
    assert prob.lam_max[1].value == 0.0
    one = KLConstrainedProblem(p0, [q1], bounds=b[:1], direction="forward").solve_dual()
    sol = prob.solve_dual()
    assert sol.status == "boundary"  # constraint 2 cannot be met: lam_2 is stuck at 0
    assert float(sol.multipliers[1]) == 0.0
    assert float(sol.multipliers[0]) == pytest.approx(float(one.multipliers[0]), abs=1e-6)


def test_fu_solver_never_calls_an_infeasible_point_optimal() -> None:
    p0 = GaussianMixture(
        [0.3509, 0.2410, 0.4081], [[2.2341], [1.9263], [0.0]], [[0.5750], [0.4729], [1 / 3]]
    )
    qs = [
        GaussianMixture([1.0], [[0.0]], 1.2),
        p0.component(2),
        GaussianMixture([1.0], [[-2.8821]], 0.9785),
    ]
    prob = KLConstrainedProblem(p0, qs, bounds=[0.5234, 0.8316, 13.9324], direction="forward")
    sol = prob.solve_dual()
    if sol.status == "optimal":
        assert sol.certificate.feasible
    free = torch.tensor([r.value > 0 for r in prob.lam_max])
    # no ascent left along coordinates the domain lets move
    assert float(sol.gradient[free & (sol.gradient > 0)].sum()) <= 1e-8 or sol.status != "optimal"
    assert float(sol.multipliers[1]) > 0.0


def test_grid_box_covers_heavy_tilted_targets() -> None:
    ref = gaussian_reference("LU", s0=1.0, mu=0.0, s=1.0, delta=3.0)
    sol = ref.problem.solve_dual()
    x = torch.linspace(-60.0, 60.0, 48_001, dtype=torch.float64)[:, None]
    mass = float(torch.exp(sol.target.log_prob(x)).sum()) * float(x[1, 0] - x[0, 0])
    assert abs(mass - 1.0) <= 1e-6 + 3 * sol.certificate.dual_error
    assert math.isclose(sol.dual_value, ref.optimal_value, abs_tol=3 * sol.certificate.dual_error)


def test_subclass_direction_is_its_own() -> None:
    p0 = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], 0.5)
    q = p0.component(1)
    assert ForwardKLProblem(p0, [q], [1.0]).direction == "forward"
    assert ReverseKLProblem(p0, [q], [1.0]).direction == "reverse"
    with pytest.raises(ValueError, match=r"'direction'='reverse' contradicts"):
        ForwardKLProblem(p0, [q], [1.0], direction="reverse")
