"""Certificates that never lie: regression tests of issue 10 against independent references.

References are scipy ``quad`` integrals (``_quad_reference``) on boxes found by brute force,
never the library's own integration, and closed-form Gaussian algebra checked against them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from _quad_reference import gauss_mix_logpdf, integrate

from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem
from dualdiff.problems import project_capped_box

T = torch.float64


def _t(*a: float) -> torch.Tensor:
    return torch.tensor(a, dtype=T)


def _gm(w, mu, var) -> GaussianMixture:  # 1-D helper
    return GaussianMixture(_t(*w), _t(*mu)[:, None], _t(*var)[:, None, None])


WORKED_W = [0.3314, 0.1890, 0.3556, 0.1241]
WORKED_MU = [2.619, -3.323, -3.360, 1.689]
WORKED_VAR = 1.1072


def _lu_log_reference(w, mu, var, q_idx, tau):
    """lam*, D* of LU-log (q_i = components) by quad + scipy maximisation (independent)."""
    w = np.asarray(w) / np.sum(w)
    mu, var = np.asarray(mu, float), np.full(len(w), var)
    lp0 = gauss_mix_logpdf(w, mu, var)
    lqs = [gauss_mix_logpdf([1.0], mu[[k]], var[[k]]) for k in q_idx]

    def neg_g(lam):
        lz, _ = integrate(
            lambda x: lp0(x) - sum(lv * lq(x) for lv, lq in zip(lam, lqs, strict=True)), []
        )
        return lz + float(np.dot(lam, tau))

    # domain: lam_i >= 0, sum lam < 1 (equal variances)
    cons = [{"type": "ineq", "fun": lambda v: 0.999 - np.sum(v)}]
    res = scipy.optimize.minimize(
        neg_g,
        x0=np.full(len(q_idx), 0.3),
        method="SLSQP",
        bounds=[(0, 0.999)] * len(q_idx),
        constraints=cons,
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return res.x, -res.fun


@pytest.mark.slow
def test_worked_example_far_lu_log_matches_quad():
    """Issue 10's worked example: a far LU-log level, the target far outside p0's box."""
    tau = [-1015.81, -1285.23]
    p0 = _gm(WORKED_W, WORKED_MU, [WORKED_VAR] * 4)
    qs = [p0.component(0), p0.component(1)]
    sol = LikelihoodConstrainedProblem(p0, qs, tau).solve_dual()
    lam_ref, d_ref = _lu_log_reference(WORKED_W, WORKED_MU, WORKED_VAR, [0, 1], tau)
    assert sol.status == "optimal", sol.message
    np.testing.assert_allclose(sol.multipliers.numpy(), lam_ref, atol=2e-4)
    assert abs(sol.dual_value - d_ref) <= 1e-6 * (1 + abs(d_ref))
    assert sol.certificate.feasible is True
    assert abs(sol.certificate.normalisation - 1.0) < 1e-8


def _far_lu_problem(grid_path: bool) -> tuple[LikelihoodConstrainedProblem, torch.Tensor]:
    """LU-log, one constraint, lam* = 0.9 of the bound (target far from p0): exact answer."""
    p0 = _gm([0.6, 0.4], [-2.0, 3.0], [1.0, 1.0])
    q = p0.component(1)
    lam_star = 0.9
    mix = GaussianMixture  # noqa: F841
    # E_{p_lam}[log q] in closed form is checked against quad below; use quad here
    lp0 = gauss_mix_logpdf([0.6, 0.4], np.array([-2.0, 3.0]), np.array([1.0, 1.0]))
    lq = gauss_mix_logpdf([1.0], np.array([3.0]), np.array([1.0]))
    _, (e_lq,) = integrate(lambda x: lp0(x) - lam_star * lq(x), [lq])
    if grid_path:  # the same q as a two-component mixture: no closed form, grid path
        q = GaussianMixture(_t(0.5, 0.5), _t(3.0, 3.0)[:, None], _t(1.0, 1.0)[:, None, None])
    return LikelihoodConstrainedProblem(p0, [q], [e_lq]), _t(lam_star)


@pytest.mark.parametrize("grid_path", [False, True])
def test_far_lu_level_is_right_or_flagged(grid_path):
    """The grid path follows the moving target (box from Gaussian envelopes), like the exact one."""
    prob, lam_star = _far_lu_problem(grid_path)
    assert prob.closed_form is (not grid_path)
    sol = prob.solve_dual()
    assert sol.status in ("optimal", "inaccurate"), sol.message
    if sol.status == "optimal":
        torch.testing.assert_close(sol.multipliers, lam_star, atol=1e-6, rtol=0)
        assert sol.certificate.feasible is True
        assert abs(sol.certificate.normalisation - 1.0) < 1e-6


def test_grid_dual_never_overshoots_its_error_bar():
    """g on a box that truncates the target must carry the truncation in its error bar."""
    prob, lam_star = _far_lu_problem(grid_path=True)
    exact, _ = _far_lu_problem(grid_path=False)
    for frac in (0.5, 0.9, 0.97):
        lam = lam_star * frac / 0.9
        g, err = prob.dual_with_error(lam)
        g_exact, err_exact = exact.dual_with_error(lam)
        assert err_exact < 1e-10 * (1 + abs(g_exact))
        assert g - err <= g_exact + 1e-9 * (1 + abs(g_exact)), (frac, g, err, g_exact)
        assert abs(g - g_exact) <= err + 1e-9 * (1 + abs(g_exact)), (frac, g, err, g_exact)


def test_closed_form_lu_and_ru_match_quad():
    p0 = _gm([0.3, 0.7], [-1.0, 2.0], [1.0, 0.5])
    q = _gm([1.0], [0.5], [2.0])
    lu = LikelihoodConstrainedProblem(p0, [q], [-2.0])
    lam = 0.7
    lp0 = gauss_mix_logpdf([0.3, 0.7], np.array([-1.0, 2.0]), np.array([1.0, 0.5]))
    lq = gauss_mix_logpdf([1.0], np.array([0.5]), np.array([2.0]))
    lz, (e_lq,) = integrate(lambda x: lp0(x) - lam * lq(x), [lq])
    assert abs(lu.dual([lam]) - (-lz + 2.0 * lam)) < 1e-9
    assert abs(float(lu.dual_gradient([lam])[0]) - (e_lq + 2.0)) < 1e-9
    # RU with a single-Gaussian p0
    p1 = _gm([1.0], [0.0], [1.0])
    ru = KLConstrainedProblem(p1, [q], [0.5])
    assert ru.closed_form
    lam = 0.4
    beta = 1 / (1 - lam)
    lp1 = gauss_mix_logpdf([1.0], np.array([0.0]), np.array([1.0]))
    log_u = lambda x: beta * (lp1(x) - lam * lq(x))  # noqa: E731
    lz, (e_lu, e_lq) = integrate(log_u, [log_u, lq])
    kl_q = e_lu - lz - e_lq
    assert abs(ru.dual([lam]) - (-(1 - lam) * lz + 0.5 * lam)) < 1e-9
    assert abs(float(ru.dual_gradient([lam])[0]) - (0.5 - kl_q)) < 1e-9


def test_large_error_bars_never_give_feasible_true():
    p0 = _gm([0.5, 0.5], [-2.0, 2.0], [1.0, 1.0])
    prob = KLConstrainedProblem(p0, [p0.component(0)], [1.0])
    cert = prob.certificate_from_estimates(
        [0.1], objective=1.0, constraint_values=[1.0 - 8600.0], constraint_errors=[7000.0]
    )
    assert cert.feasible is None and cert.status == "unknown"
    cert = prob.certificate_from_estimates(
        [0.1], objective=1.0, constraint_values=[1.0 - 0.5], constraint_errors=[0.01]
    )
    assert cert.feasible is False
    cert = prob.certificate_from_estimates(
        [0.1], objective=1.0, constraint_values=[1.5], constraint_errors=[0.01]
    )
    assert cert.feasible is True


def test_ru_huge_level_feasible_only_if_true():
    """RU level 1e6 (was: feasible=True with slack -998310): now attained far away, or flagged."""
    p0 = _gm([0.5, 0.5], [-2.0, 2.0], [1.0, 1.0])
    sol = KLConstrainedProblem(p0, [p0.component(0)], [1e6]).solve_dual()
    if sol.certificate.feasible is True:
        lam = float(sol.multipliers[0])
        beta = 1 / (1 - lam)
        lp0 = gauss_mix_logpdf([0.5, 0.5], np.array([-2.0, 2.0]), np.array([1.0, 1.0]))
        lq = gauss_mix_logpdf([1.0], np.array([-2.0]), np.array([1.0]))
        log_u = lambda x: beta * (lp0(x) - lam * lq(x))  # noqa: E731
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lz, (e_lu, e_lq) = integrate(log_u, [log_u, lq])
        assert e_lu - lz - e_lq >= 1e6 * (1 - 1e-4)  # independent: KL(p_lam || q) meets 1e6


def test_fu_two_constraints_domain_finds_the_negative_region():
    """Issue 10 repro: the combined ratio exceeds 1 between the rule's points."""
    p0 = _gm([0.39830, 0.22088, 0.38082], [2.63882, 3.74240, -1.13561], [1.80499, 0.23895, 1.97707])
    q1 = _gm([1.0], [3.74240], [0.23895])
    q2 = _gm([1.0], [1.47187], [1.04986])
    prob = KLConstrainedProblem(p0, [q1, q2], [0.1, 0.1], direction="forward")
    lam = _t(0.311913, 0.243741)
    # brute force on a fine grid: max of sum lam q / p0 is 1.00012 near x = 3.875
    x = torch.linspace(-10, 10, 400_001, dtype=T)[:, None]
    ratio = (lam[0] * q1.log_prob(x).exp() + lam[1] * q2.log_prob(x).exp()) / p0.log_prob(x).exp()
    assert float(ratio.max()) > 1.0
    assert not prob.in_domain(lam)
    s = prob.lam_max_along(lam)
    r = (s * (lam[0] * q1.log_prob(x).exp() + lam[1] * q2.log_prob(x).exp())) / p0.log_prob(x).exp()
    assert float(r.max()) <= 1.0 + 1e-9
    assert float(r.max()) >= 1.0 - 1e-4  # bisection reached the boundary


def test_project_capped_box_no_zero_division():
    lam = torch.tensor([2001.1395816848915, 4913.537563613123], dtype=T)
    upper = torch.tensor([0.43859491321592364, 0.5614040867840764], dtype=T)
    out = project_capped_box(lam, upper, 0.999999)
    assert float(out.sum()) <= 0.999999 * (1 + 1e-15)
    assert bool((out <= upper).all()) and bool((out >= 0).all())
    # KKT: the projection is (cap - u_1, u_1)
    torch.testing.assert_close(
        out, torch.stack([0.999999 - upper[1], upper[1]]), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"gtol": math.inf}, ValueError, "'gtol' must be finite and >= 0, got inf"),
        ({"gtol": -1.0}, ValueError, "'gtol' must be finite and >= 0"),
        ({"gtol": math.nan}, ValueError, "'gtol' must be finite"),
        ({"max_iter": 0}, ValueError, "'max_iter' must be an int >= 1, got 0"),
        ({"max_iter": 2.5}, TypeError, "'max_iter' must be an int"),
        ({"atol_integration": 0.0}, ValueError, "'atol_integration' must be finite and > 0"),
    ],
)
def test_solve_dual_rejects_bad_options(kw, exc, match):
    p0 = _gm([0.5, 0.5], [-2.0, 2.0], [1.0, 1.0])
    prob = KLConstrainedProblem(p0, [p0.component(0)], [1.0])
    with pytest.raises(exc, match=rf"KLConstrainedProblem\.solve_dual: parameter {match}"):
        prob.solve_dual(**kw)


def test_lu_density_tiny_level_is_not_infeasible():
    p0 = _gm([0.5, 0.5], [-2.0, 2.0], [1.0, 1.0])
    prob = LikelihoodConstrainedProblem(p0, [p0.component(0)], [1e-9], likelihood="density")
    sol = prob.solve_dual()
    assert sol.status != "infeasible", sol.message
    if sol.status == "optimal":
        cert = sol.certificate  # stationary to gtol = 1e-10 (absolute), up to its error bar
        assert abs(float(cert.constraint_values[0]) - 1e-9) <= 1e-10 + 3 * float(
            cert.constraint_errors[0]
        )
    bad = LikelihoodConstrainedProblem(p0, [p0.component(0)], [0.0], likelihood="density")
    assert bad.solve_dual().status == "infeasible"


def test_lu_callable_narrow_target_is_right_or_flagged():
    """l = x^2, tau = 1e-4: the target N(0, ~tau) is far narrower than p0's grid spacing."""
    p0 = _gm([1.0], [0.0], [1.0])
    prob = LikelihoodConstrainedProblem(p0, [p0], [1e-4], likelihood=lambda x, i: x[..., 0] ** 2)
    sol = prob.solve_dual()
    assert sol.status in ("optimal", "inaccurate", "max_iter"), sol.message
    if sol.status == "optimal":
        # exact: p_lam = N(0, 1/(1 + 2 lam)), E[x^2] = 1/(1 + 2 lam) = tau at lam* = (1/tau - 1)/2
        lam_star = (1 / 1e-4 - 1) / 2
        assert abs(float(sol.multipliers[0]) - lam_star) <= 1e-4 * lam_star
        lam = float(sol.multipliers[0])
        assert abs(1 / (1 + 2 * lam) - 1e-4) <= 1e-8
