"""Target sampling against quadrature moments; weights and exactness properties."""

import pytest
import torch

from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem

P0 = GaussianMixture([0.5, 0.3, 0.2], [[-3.0], [0.0], [3.0]], 0.5)
Q = P0.component(2)


def _grid_moments(prob, target):
    rule = prob.rule
    lp = target.log_prob(rule.points)
    m1, _ = rule.integral(torch.exp(lp) * rule.points[:, 0])
    m2, _ = rule.integral(torch.exp(lp) * rule.points[:, 0] ** 2)
    return float(m1), float(m2 - m1**2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: KLConstrainedProblem(P0, [Q], bounds=[2.0], direction="forward"),  # rejection
        lambda: LikelihoodConstrainedProblem(P0, [Q], bounds=[0.01], likelihood="density"),
        lambda: KLConstrainedProblem(P0, [Q], bounds=[25.0]),  # SIR + MALA
        lambda: LikelihoodConstrainedProblem(P0, [Q], bounds=[-30.0]),
    ],
)
def test_target_samples_match_quadrature_moments(make):
    prob = make()
    sol = prob.solve_dual()
    assert sol.status == "optimal" and float(sol.multipliers[0]) > 0
    x = sol.target.sample(20_000, generator=torch.Generator().manual_seed(0), mcmc_steps=100)
    mean, var = _grid_moments(prob, sol.target)
    # 20k samples, variance of x about 5: se(mean) ~ 0.016; MALA chains are correlated with
    # their SIR start, so allow 0.08 (5 se) on the mean and 5% on the variance.
    assert float(x[:, 0].mean()) == pytest.approx(mean, abs=0.08)
    assert float(x[:, 0].var()) == pytest.approx(var, rel=0.05)


def test_log_weight_is_normalised_reweighting_of_p0():
    for prob in [
        KLConstrainedProblem(P0, [Q], bounds=[25.0]),
        KLConstrainedProblem(P0, [Q], bounds=[2.0], direction="forward"),
        LikelihoodConstrainedProblem(P0, [Q], bounds=[-30.0]),
    ]:
        tgt = prob.solve_dual().target
        rule = prob.rule
        lp0 = P0.log_prob(rule.points)
        e_w, _ = rule.integral(torch.exp(lp0 + tgt.log_weight(rule.points)))
        assert float(e_w) == pytest.approx(1.0, abs=1e-9)
        ess = tgt.population_ess(rule)
        assert 0.0 < ess <= 1.0


def test_fu_target_is_exact_under_noising():
    """p_lam,t computed from noised p0 and q equals the noised retrained mixture."""
    qr = GaussianMixture([0.5 / 0.8, 0.3 / 0.8], [[-3.0], [0.0]], 0.5)
    tgt = KLConstrainedProblem(P0, [Q], bounds=[1.0], direction="forward").target([0.2])
    x = torch.linspace(-6, 6, 41, dtype=torch.float64)[:, None]
    for t in [0.0, 0.1, 0.5, 1.0]:
        torch.testing.assert_close(tgt.score(x, t), qr.score(x, t), rtol=0, atol=1e-8)
