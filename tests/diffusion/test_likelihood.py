"""Likelihood and KL estimators against closed forms (Gaussians, Gaussian mixtures)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from scipy import integrate

from dualdiff._errors import NonFiniteError
from dualdiff.diffusion.likelihood import (
    Estimate,
    elbo,
    kl_estimate,
    log_snr,
    ode_log_likelihood,
    path_kl,
    path_kl_terms,
    prior_log_prob,
    sample_times,
)
from dualdiff.models.gaussian_mixture import GaussianMixture
from dualdiff.models.schedule import VPSchedule


def _gm(schedule: VPSchedule | None = None) -> GaussianMixture:
    return GaussianMixture(
        [0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], [[0.5, 0.8], [0.6, 0.3]], schedule=schedule
    )


def _kl_gauss(m0, s0, m1, s1) -> float:
    """Closed-form KL(N(m0, s0) || N(m1, s1)) for full covariances."""
    d = m0.shape[0]
    s1_inv = torch.linalg.inv(s1)
    dm = m1 - m0
    return float(
        0.5 * (torch.trace(s1_inv @ s0) + dm @ s1_inv @ dm - d + torch.logdet(s1)
               - torch.logdet(s0))
    )


class _ShiftedGaussianScore:
    """Exact noised score of N(m, v I) with a differentiable mean ``m`` (for gradcheck)."""

    def __init__(self, m: torch.Tensor, v: float, schedule: VPSchedule) -> None:
        self.m, self.v, self.schedule = m, v, schedule

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        a = self.schedule.alpha(t)[:, None]
        s2 = self.schedule.sigma(t)[:, None] ** 2
        return -(x - a * self.m) / (a**2 * self.v + s2)


# ---------------------------------------------------------------------- ODE log-likelihood
def test_ode_log_likelihood_matches_noised_mixture_density():
    # Exact score, exact terminal marginal as prior: the only error is the solver's.
    # rtol=atol=1e-6 in float64 gives ~1e-5 nats (measured 8e-6); requirement 1e-3.
    p = _gm()
    sched = p.schedule
    x = p.sample(100, generator=torch.Generator().manual_seed(0))
    out = ode_log_likelihood(p, x, rtol=1e-6, atol=1e-6, prior=p.noised(sched.t_max),
                             return_details=True)
    # The ODE starts at t_min, so the reference is the marginal at t_min, not p itself.
    ref = p.noised(sched.t_min).log_prob(x)
    assert float((out.log_prob - ref).abs().mean()) < 1e-3
    assert out.log_prob.shape == (100,) and out.x_end.shape == (100, 2) and out.nfe > 10
    torch.testing.assert_close(out.log_prob, out.prior_log_prob + out.delta_log_prob)


def test_ode_log_likelihood_default_prior_and_tiny_t_min_recovers_clean_density():
    # With t_min = 1e-5 the marginal at t_min is the clean mixture to ~1e-5 nats, and for a
    # zero-mean mixture the N(0, sigma_T^2 I) prior is off by O(alpha_T^2) ~ 4e-5 per unit:
    # both well below the 1e-3 requirement (measured 5e-5).
    sched = VPSchedule(t_min=1e-5)
    p = GaussianMixture([0.5, 0.5], [[-1.0, 0.5], [1.0, -0.5]], [[0.5, 0.8], [0.6, 0.3]],
                        schedule=sched)
    x = p.sample(60, generator=torch.Generator().manual_seed(1))
    lp = ode_log_likelihood(p, x, rtol=1e-6, atol=1e-6)
    assert float((lp - p.log_prob(x)).abs().mean()) < 1e-3


def test_ode_log_likelihood_hutchinson_is_unbiased_and_auto_is_exact_in_low_dim():
    p = _gm()
    x = p.sample(200, generator=torch.Generator().manual_seed(2))
    exact = ode_log_likelihood(p, x, divergence="exact")
    auto = ode_log_likelihood(p, x, divergence="auto")
    torch.testing.assert_close(auto, exact, rtol=0, atol=0)
    hutch = ode_log_likelihood(p, x, divergence="hutchinson", n_probes=2,
                               generator=torch.Generator().manual_seed(3))
    diff = hutch - exact
    # Unbiased: the mean error is within 4 standard errors of zero (200 independent probes).
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(200) + 1e-4
    assert float(diff.abs().max()) > 1e-6  # it really is a stochastic estimate


def test_ode_log_likelihood_high_dim_gaussian_uses_hutchinson():
    # d = 10 > 8: "auto" switches to Hutchinson; the density is still right on average.
    # A full covariance: Rademacher probes are exact for diagonal Jacobians.
    d = 10
    a = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    cov = a @ a.T / d + 0.3 * torch.eye(d, dtype=torch.float64)
    p = GaussianMixture([1.0], torch.zeros(1, d, dtype=torch.float64), cov[None])
    x = p.sample(100, generator=torch.Generator().manual_seed(4))
    lp = ode_log_likelihood(p, x, prior=p.noised(p.schedule.t_max),
                            generator=torch.Generator().manual_seed(5))
    diff = lp - p.noised(p.schedule.t_min).log_prob(x)
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(100) + 1e-3
    assert float(diff.abs().max()) > 1e-4  # stochastic: auto did not pick the exact trace


def test_prior_log_prob_is_isotropic_gaussian():
    sched = VPSchedule()
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    s_t = sched.terminal_std
    ref = torch.distributions.Normal(0.0, s_t).log_prob(x).sum(1)
    torch.testing.assert_close(prior_log_prob(x, sched), ref)


# ---------------------------------------------------------------------- time sampling
@pytest.mark.parametrize("time_sampling", ["log_snr", "uniform"])
def test_sample_times_integrates_weighted_functions(time_sampling):
    # E[w h(t)] = int g^2/sigma^2 h dt; check h(t) = t against scipy quadrature.
    sched = VPSchedule()

    def integrand(t: float) -> float:
        tt = torch.tensor(t, dtype=torch.float64)
        return float(sched.g(tt) ** 2 / sched.sigma(tt) ** 2) * t

    exact, _ = integrate.quad(integrand, sched.t_min, sched.t_max, limit=200)
    t, w = sample_times(100_000, sched, time_sampling, generator=torch.Generator().manual_seed(7))
    assert float(t.min()) >= sched.t_min and float(t.max()) <= sched.t_max
    terms = w * t
    se = float(terms.std()) / math.sqrt(terms.numel())
    assert abs(float(terms.mean()) - exact) < 4 * se


def test_log_snr_inverse_is_accurate():
    sched = VPSchedule()
    t, _ = sample_times(50, sched, "log_snr", generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(log_snr(sched, t), sched.log_snr(t))


# ---------------------------------------------------------------------- ELBO
def test_elbo_is_a_tight_lower_bound_for_exact_scores():
    # E_p[ELBO] <= E_p[log p_model] <= E_p[log p] (Gibbs), and with the exact score the gap is
    # only the prior/decoder mismatch (~1e-3). 4000 samples x 8 draws: stderr ~0.05 nats.
    p = _gm()
    g = torch.Generator().manual_seed(9)
    x = p.sample(4000, generator=g)
    gap = elbo(p, x, n_t=8, generator=g) - p.log_prob(x)
    se = float(gap.std()) / math.sqrt(gap.numel())
    assert float(gap.mean()) <= 4 * se  # a lower bound, up to Monte Carlo error (4 sigma)
    assert float(gap.mean()) >= -(4 * se + 0.01)  # and tight for the exact score


def test_elbo_of_wrong_model_is_lower():
    p = _gm()
    q = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.5)
    g = torch.Generator().manual_seed(10)
    x = p.sample(2000, generator=g)
    e_p = elbo(p, x, n_t=4, generator=torch.Generator().manual_seed(11))
    e_q = elbo(q, x, n_t=4, generator=torch.Generator().manual_seed(11))  # common randomness
    d = e_q - e_p
    # E_p[ELBO_q] <~ E_p[log q] = E_p[log p] - KL(p||q) < E_p[ELBO_p] + gap.
    kl = kl_estimate(p, q, 20_000, generator=g)
    assert float(d.mean()) < -kl.value + 4 * float(d.std()) / math.sqrt(2000)


def test_elbo_uniform_time_sampling_agrees_with_log_snr_sampling():
    p = GaussianMixture([1.0], [[0.5]], 0.3)
    g = torch.Generator().manual_seed(12)
    x = p.sample(4000, generator=g)
    a = elbo(p, x, n_t=4, generator=g, time_sampling="log_snr")
    b = elbo(p, x, n_t=4, generator=g, time_sampling="uniform")
    se = math.sqrt(float(a.var()) / a.numel() + float(b.var()) / b.numel())
    assert abs(float(a.mean() - b.mean())) < 4 * se
    assert float(a.std()) < float(b.std())  # the log-SNR proposal reduces the variance


def test_elbo_gradcheck_in_model_parameters():
    sched = VPSchedule()
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(13))

    def f(m: torch.Tensor) -> torch.Tensor:
        model = _ShiftedGaussianScore(m, 0.7, sched)
        return elbo(model, x, sched, n_t=3, generator=torch.Generator().manual_seed(0))

    m = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (m,))


# ---------------------------------------------------------------------- path KL
def test_path_kl_matches_closed_form_for_gaussians():
    # For exact scores: KL(p^a_tmin || p^b_tmin) = KL(p^a_T || p^b_T) + path-KL (identity).
    sched = VPSchedule()
    pa = GaussianMixture([1.0], [[0.0, 0.5]], [[[1.0, 0.3], [0.3, 0.5]]])
    pb = GaussianMixture([1.0], [[0.8, -0.2]], [[[0.7, -0.1], [-0.1, 1.2]]])
    g = torch.Generator().manual_seed(14)
    est = path_kl(pa, pb, pa.sample(20_000, generator=g), n_t=1, generator=g)
    assert isinstance(est, Estimate) and est.n == 20_000

    def kl_at(t: float) -> float:
        a, b = pa.noised(t), pb.noised(t)
        return _kl_gauss(a.means[0], a.covariances[0], b.means[0], b.covariances[0])

    expected = kl_at(sched.t_min) - kl_at(sched.t_max)
    assert abs(est.value - expected) < 4 * est.stderr
    # With an almost-clean t_min it also estimates the KL at t = 0 (the bound is tight).
    kl0 = _kl_gauss(pa.means[0], pa.covariances[0], pb.means[0], pb.covariances[0])
    assert abs(kl0 - kl_at(sched.t_min)) < 1e-3


def test_path_kl_matches_noised_mixture_kl():
    pa = _gm()
    pb = GaussianMixture([0.6, 0.4], [[-1.5, 0.5], [1.0, -0.5]], [[0.5, 0.8], [0.6, 0.3]])
    sched = pa.schedule
    g = torch.Generator().manual_seed(15)
    est = path_kl(pa, pb, pa.sample(20_000, generator=g), n_t=1, generator=g,
                  time_sampling="uniform")
    kl_min = kl_estimate(pa.noised(sched.t_min), pb.noised(sched.t_min), 100_000, generator=g)
    kl_max = kl_estimate(pa.noised(sched.t_max), pb.noised(sched.t_max), 100_000, generator=g)
    expected = kl_min.value - kl_max.value
    se = math.sqrt(est.stderr**2 + kl_min.stderr**2 + kl_max.stderr**2)
    assert abs(est.value - expected) < 4 * se
    assert est.value > 0


def test_path_kl_is_zero_for_identical_models_and_differentiable():
    p = _gm()
    x = p.sample(50, generator=torch.Generator().manual_seed(16))
    est = path_kl(p, p, x, n_t=2)
    assert est.value == 0.0 and est.stderr == 0.0
    sched = VPSchedule()
    xg = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(17))

    def f(m: torch.Tensor) -> torch.Tensor:
        a = _ShiftedGaussianScore(m, 0.5, sched)
        b = _ShiftedGaussianScore(torch.zeros(2, dtype=torch.float64), 0.5, sched)
        return path_kl_terms(a, b, xg, sched, generator=torch.Generator().manual_seed(0))

    m = torch.tensor([0.4, -0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (m,))


# ---------------------------------------------------------------------- sample KL
def test_kl_estimate_matches_closed_form():
    pa = GaussianMixture([1.0], [[0.0, 0.5]], [[[1.0, 0.3], [0.3, 0.5]]])
    pb = GaussianMixture([1.0], [[0.8, -0.2]], [[[0.7, -0.1], [-0.1, 1.2]]])
    est = kl_estimate(pa, pb, 50_000, generator=torch.Generator().manual_seed(18),
                      batch_size=20_000)
    exact = _kl_gauss(pa.means[0], pa.covariances[0], pb.means[0], pb.covariances[0])
    assert est.n == 50_000
    assert abs(est.value - exact) < 4 * est.stderr
    lo, hi = est.interval(3.0)
    assert lo < est.value < hi
    assert "n=50000" in str(est)


# ---------------------------------------------------------------------- errors
def test_estimator_errors():
    p = _gm()
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="ode_log_likelihood: unknown divergence='trace'; "
                                         "allowed values are 'auto', 'exact', 'hutchinson'"):
        ode_log_likelihood(p, x, divergence="trace")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"ode_log_likelihood: parameter 'x0' must be a floating"):
        ode_log_likelihood(p, torch.zeros(4))
    with pytest.raises(NonFiniteError, match="ode_log_likelihood: parameter 'x0'"):
        ode_log_likelihood(p, torch.full((2, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError, match="parameter 'prior' must have a log_prob"):
        ode_log_likelihood(p, x, prior=object())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="ode_log_likelihood: parameter 'model' must be a Score"):
        ode_log_likelihood(object(), x)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="elbo: parameter 'n_t' must be an int >= 1, got 0"):
        elbo(p, x, n_t=0)
    with pytest.raises(ValueError, match="elbo: unknown time_sampling='beta'"):
        elbo(p, x, time_sampling="beta")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path_kl: parameter 'model_b' must be a ScoreModel"):
        path_kl(p, "model", x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kl_estimate: parameter 'q' must have a log_prob"):
        kl_estimate(p, object(), 10)
    with pytest.raises(ValueError, match="kl_estimate: parameter 'n' must be an int >= 2"):
        kl_estimate(p, p, 1)
