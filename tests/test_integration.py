"""Integration back-ends against scipy quadrature and closed forms."""

import math

import pytest
import torch
from scipy import integrate, stats

from dualdiff import GaussianMixture, GridQuadrature, MonteCarlo


def test_grid_quadrature_1d_matches_scipy_quad():
    p = GaussianMixture([0.4, 0.6], [[-2.0], [1.5]], [[[0.3]], [[1.2]]])
    rule = GridQuadrature().prepare([p])
    lp = p.log_prob(rule.points)
    # E[x^2] by scipy quad (independent reference)
    f = lambda x: math.exp(float(p.log_prob(torch.tensor([[x]], dtype=torch.float64)))) * x * x  # noqa: E731
    ref = integrate.quad(f, -20, 20, limit=500, epsabs=1e-14, epsrel=1e-13)[0]
    val, err = rule.integral(torch.exp(lp) * rule.points[:, 0] ** 2)
    assert float(val) == pytest.approx(ref, rel=1e-9)
    assert float(err) < 1e-8
    # negative entropy, a KL-like quantity
    ref_h = integrate.quad(
        lambda x: (lambda v: math.exp(v) * v)(
            float(p.log_prob(torch.tensor([[x]], dtype=torch.float64)))
        ),
        -20,
        20,
        limit=500,
        epsabs=1e-14,
    )[0]
    val_h, _ = rule.integral(torch.exp(lp) * lp)
    assert float(val_h) == pytest.approx(ref_h, rel=1e-8)


def test_grid_quadrature_2d_kl_between_gaussians_closed_form():
    a = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.4], [0.4, 0.8]]])
    b = GaussianMixture([1.0], [[1.0, -0.5]], [[[0.6, 0.0], [0.0, 1.5]]])
    rule = GridQuadrature().prepare([a, b])
    la, lb = a.log_prob(rule.points), b.log_prob(rule.points)
    kl, err = rule.integral(torch.exp(la) * (la - lb))
    s0, s1 = a.covariances[0], b.covariances[0]
    dm = b.means[0] - a.means[0]
    s1inv = torch.linalg.inv(s1)
    ref = 0.5 * (
        torch.trace(s1inv @ s0) + dm @ s1inv @ dm - 2 + torch.logdet(s1) - torch.logdet(s0)
    )
    assert float(kl) == pytest.approx(float(ref), rel=1e-8)
    assert float(err) < 1e-7


def test_grid_error_bar_detects_too_coarse_grid():
    p = GaussianMixture([1.0], [[0.0]], 0.01)  # std 0.1
    rule = GridQuadrature(bounds=[(-1.0, 1.0)], points_per_dim=11).prepare([p])
    val, err = rule.log_integral(p.log_prob(rule.points))
    # with spacing 0.2 = 2 std the result is off, and the error bar says so
    assert abs(float(val)) <= float(err) + 1e-12
    assert float(err) > 1e-3


def test_grid_error_bar_is_unknown_for_a_spike_between_the_sub_grid_checks():
    """A target 1e-4 of the spacing wide, centred on a point of the double-spacing sub-grid:
    both sums see only that point and agree (difference 0), so the old bar was ~0 while the
    value is off by log(spacing / (sqrt(2 pi) std)) ~ 8 nats. The bar is now inf; a Gaussian
    resolved by the same grid keeps a finite, correct bar."""
    rule = GridQuadrature(bounds=[(-1.0, 1.0)], points_per_dim=11).prepare(
        [GaussianMixture([1.0], [[0.0]], 1.0)]
    )
    spike = GaussianMixture([1.0], [[0.0]], (2e-5) ** 2)  # spacing 0.2, std 2e-5
    val, err = rule.log_integral(spike.log_prob(rule.points))
    assert abs(float(val)) > 5.0  # the true log-mass in the box is 0
    assert math.isinf(float(err))
    _, e_err = rule.expectation(spike.log_prob(rule.points), rule.points[:, 0] ** 2)
    assert math.isinf(float(e_err))
    _, i_err = rule.integral(torch.exp(spike.log_prob(rule.points)))
    assert math.isinf(float(i_err))
    # f = 0 everywhere carries no mass: not flagged
    assert float(rule.integral(torch.zeros(rule.n_points, dtype=torch.float64))[1]) == 0.0
    wide = GaussianMixture([1.0], [[0.0]], 0.3**2)  # std 1.5 spacings
    w_val, w_err = rule.log_integral(wide.log_prob(rule.points))
    ref = math.log(stats.norm(0, 0.3).cdf(1.0) - stats.norm(0, 0.3).cdf(-1.0))
    assert math.isfinite(float(w_err))
    assert abs(float(w_val) - ref) <= float(w_err) + 1e-12


def test_monte_carlo_within_standard_errors():
    means = torch.tensor([[0.0], [1.0]], dtype=torch.float64).expand(2, 8)
    p = GaussianMixture([0.5, 0.5], means, 0.7)
    q = p.component(0)
    rule = MonteCarlo(n=20_000, seed=1).prepare([p, q])
    lp, lq = p.log_prob(rule.points), q.log_prob(rule.points)
    log_z, err = rule.log_integral(lp)
    assert abs(float(log_z)) < 4 * float(err) + 1e-12
    e, e_err = rule.expectation(lp, rule.points[:, 0])
    assert abs(float(e) - 0.5) < 4 * float(e_err)
    kl, kl_err = rule.integral(torch.exp(lq) * (lq - lp))
    # KL(q || p) with p = (q + q')/2: check against a fine 1-D reference (mixture differs along
    # the diagonal direction only): by symmetry KL = E_q[log q - log p] computed with scipy.
    d = math.sqrt(8.0)  # distance between means
    s = math.sqrt(0.7)
    def f(z):
        a, b = stats.norm(0, s).pdf(z), stats.norm(d, s).pdf(z)
        return a * (math.log(a) - math.log(0.5 * a + 0.5 * b))

    ref = integrate.quad(f, -15, 15, limit=300)[0]
    assert abs(float(kl) - ref) < 4 * float(kl_err)


def test_bad_integration_arguments():
    with pytest.raises(ValueError, match="points_per_dim"):
        GridQuadrature(points_per_dim=2)
    with pytest.raises(ValueError, match="'n' must be an int >= 100"):
        MonteCarlo(n=10)
    p3 = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match="d <= 2"):
        GridQuadrature().prepare([p3])
