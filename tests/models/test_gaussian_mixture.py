"""GaussianMixture against scipy.stats references and the noising identity."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from dualdiff import GaussianMixture, NonFiniteError, VPSchedule

W = [0.2, 0.5, 0.3]
MU = [[0.0, 1.0], [2.0, -1.0], [-2.0, 0.5]]
COV = [[[1.0, 0.3], [0.3, 0.5]], [[0.7, 0.0], [0.0, 2.0]], [[0.4, -0.1], [-0.1, 0.3]]]


def scipy_logpdf(x: np.ndarray) -> np.ndarray:
    comps = zip(W, MU, COV, strict=True)
    dens = sum(w * stats.multivariate_normal(m, c).pdf(x) for w, m, c in comps)
    return np.log(dens)


@pytest.fixture
def gm() -> GaussianMixture:
    return GaussianMixture(W, MU, COV)


def test_log_prob_matches_scipy(gm):
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    np.testing.assert_allclose(gm.log_prob(x).numpy(), scipy_logpdf(x.numpy()), rtol=0, atol=1e-12)


def test_covariance_forms_agree():
    full = GaussianMixture([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2) * 0.5] * 2)
    diag = GaussianMixture([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]])
    iso = GaussianMixture([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], 0.5)
    x = torch.randn(10, 2, dtype=torch.float64)
    assert torch.allclose(full.log_prob(x), diag.log_prob(x), atol=1e-13)
    assert torch.allclose(full.log_prob(x), iso.log_prob(x), atol=1e-13)
    assert torch.allclose(iso.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_score_is_gradient_of_log_prob(gm):
    x = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    torch.testing.assert_close(gm.score(x), g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [0.05, 0.3, 0.9])
def test_noised_matches_convolution_in_1d(t):
    """p_t(x) = ∫ p0(x0) N(x; a x0, s^2) dx0 by scipy quadrature (independent reference)."""
    p = GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [[[0.3]], [[0.8]]])
    sched = VPSchedule()
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    for xv in [-2.0, 0.0, 1.5]:
        ref = sum(
            w * stats.norm(a * m, math.sqrt(a * a * v + s * s)).pdf(xv)
            for w, m, v in [(0.3, -1.0, 0.3), (0.7, 2.0, 0.8)]
        )
        from scipy.integrate import quad

        def integrand(x0, xv=xv):
            return math.exp(float(p.log_prob(torch.tensor([[x0]], dtype=torch.float64)))) * (
                stats.norm(a * x0, s).pdf(xv)
            )

        quad_ref = quad(integrand, -12, 12, limit=400, epsabs=1e-13)[0]
        got = math.exp(float(p.log_prob(torch.tensor([[xv]], dtype=torch.float64), t)))
        assert got == pytest.approx(ref, rel=1e-10)
        assert got == pytest.approx(quad_ref, rel=1e-7)


def test_per_point_times_match_scalar_times(gm):
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.linspace(0.01, 1.0, 6, dtype=torch.float64)
    s = gm.score(x, t)
    lp = gm.log_prob(x, t)
    for i in range(6):
        torch.testing.assert_close(s[i], gm.score(x[i : i + 1], float(t[i]))[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(lp[i], gm.noised(float(t[i])).log_prob(x[i]), rtol=0, atol=1e-12)


def test_sampling_moments(gm):
    x = gm.sample(200_000, generator=torch.Generator().manual_seed(1))
    # 200k samples: standard error of the mean ~ 3e-3 per coordinate; allow 5 se.
    torch.testing.assert_close(x.mean(0), gm.mean(), rtol=0, atol=0.015)
    torch.testing.assert_close(torch.cov(x.T), gm.covariance(), rtol=0, atol=0.03)


def test_sampling_reproducible(gm):
    a = gm.sample(10, generator=torch.Generator().manual_seed(3))
    b = gm.sample(10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_float32_and_dtype_conversion(gm):
    g32 = gm.to(torch.float32)
    x = torch.randn(5, 2)
    assert g32.log_prob(x).dtype == torch.float32
    assert g32.score(x, 0.5).dtype == torch.float32
    torch.testing.assert_close(g32.log_prob(x).double(), gm.log_prob(x.double()), atol=1e-4, rtol=0)


def test_parameters_are_differentiable():
    mu = torch.tensor([[0.0], [1.0]], dtype=torch.float64, requires_grad=True)
    p = GaussianMixture(torch.tensor([0.5, 0.5], dtype=torch.float64), mu, 0.5)
    x = torch.tensor([[0.3]], dtype=torch.float64)
    (g,) = torch.autograd.grad(p.log_prob(x).sum(), mu)
    eps = 1e-6
    num = []
    for k in range(2):
        d = torch.zeros_like(mu)
        d[k, 0] = eps
        lp = lambda m: float(GaussianMixture([0.5, 0.5], m, 0.5).log_prob(x))  # noqa: E731
        num.append((lp(mu.detach() + d) - lp(mu.detach() - d)) / (2 * eps))
    np.testing.assert_allclose(g[:, 0].numpy(), num, rtol=1e-6)


def test_component_and_dict_roundtrip(gm):
    c = gm.component(1)
    assert c.n_components == 1 and float(c.weights[0]) == 1.0
    assert torch.equal(c.means[0], gm.means[1])
    back = GaussianMixture.from_dict(gm.to_dict())
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(back.log_prob(x), gm.log_prob(x))


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (
            dict(weights=[-0.1, 1.1], means=[[0.0], [1.0]], covariances=1.0),
            ValueError,
            "non-negative",
        ),
        (
            dict(weights=[0.0, 0.0], means=[[0.0], [1.0]], covariances=1.0),
            ValueError,
            "positive sum",
        ),
        (dict(weights=[0.5, 0.5], means=[[0.0]], covariances=1.0), ValueError, r"shape \(K, d\)"),
        (
            dict(weights=[1.0], means=[[0.0, 0.0]], covariances=[[[1.0, 2.0], [2.0, 1.0]]]),
            ValueError,
            "positive definite",
        ),
        (dict(weights=[1.0], means=[[0.0]], covariances=-1.0), ValueError, "must be > 0"),
        (dict(weights=[1.0], means=[[float("nan")]], covariances=1.0), NonFiniteError, "means"),
        (dict(weights=[1.0], means=[[0.0]], covariances=[[1.0, 2.0]]), ValueError, "covariances"),
    ],
)
def test_bad_parameters(kwargs, err, match):
    with pytest.raises(err, match=match):
        GaussianMixture(**kwargs)


def test_bad_points_and_times(gm):
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        gm.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"'t' must lie in \[0, 1.0\]"):
        gm.noised(1.5)
    with pytest.raises(NonFiniteError, match="'t'"):
        gm.score(torch.zeros(2, 2), float("nan"))
    with pytest.raises(IndexError, match="'k'"):
        gm.component(5)
