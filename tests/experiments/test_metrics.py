"""Metrics against independent references: counts, scipy's sqrtm, hand-written MMD, closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from dualdiff import Estimate, GaussianMixture
from dualdiff._errors import NonFiniteError
from dualdiff.experiments.metrics import (
    class_proportions,
    deviation,
    elbo_nll,
    forget_accuracy,
    frechet_distance,
    kid,
    nll,
    retained_accuracy,
)

pytest.importorskip("torchmetrics")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- classification
def test_forget_accuracy_counts_labels_and_argmax_of_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=500)
    est = forget_accuracy(torch.as_tensor(labels), [3, 7])
    p = np.isin(labels, [3, 7]).mean()
    assert isinstance(est, Estimate) and est.n == 500
    assert est.value == pytest.approx(p, abs=1e-15)
    assert est.stderr == pytest.approx(math.sqrt(p * (1 - p) / 500), rel=1e-12)
    # Logits whose arg-max is the label give the same answer; a single int class is accepted.
    logits = torch.randn(500, 10, generator=_gen(1), dtype=torch.float64)
    logits[torch.arange(500), torch.as_tensor(labels)] += 100.0
    assert forget_accuracy(logits, [3, 7]).value == est.value
    assert forget_accuracy(torch.as_tensor(labels), 3).value == pytest.approx(
        (labels == 3).mean(), abs=1e-15
    )


def test_class_proportions_match_bincount():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=300)
    out = class_proportions(torch.as_tensor(labels), 6)
    ref = np.bincount(labels, minlength=6) / 300
    np.testing.assert_allclose(out.proportions.numpy(), ref, atol=1e-15)
    np.testing.assert_allclose(out.stderr.numpy(), np.sqrt(ref * (1 - ref) / 300), rtol=1e-12)
    assert out.proportions.dtype == torch.float64 and out.n == 300
    assert float(out.proportions[4:].sum()) == 0.0


def test_retained_accuracy_per_class_and_mean():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 0, 0, 5, 1, 0, 2, 2, 2, 2])
    out = retained_accuracy(pred, target, retained_classes=[0, 1, 2])
    assert out.per_class[0].value == 0.75 and out.per_class[0].n == 4
    assert out.per_class[1].value == 0.5 and out.per_class[2].value == 1.0
    assert out.mean.value == pytest.approx((0.75 + 0.5 + 1.0) / 3, abs=1e-15)
    se = math.sqrt(0.75 * 0.25 / 4 + 0.5 * 0.5 / 2 + 0.0) / 3
    assert out.mean.stderr == pytest.approx(se, rel=1e-12) and out.mean.n == 10
    # Default: every class present in the targets.
    assert sorted(retained_accuracy(pred, target).per_class) == [0, 1, 2]
    assert list(retained_accuracy(pred, target, 1).per_class) == [1]


def test_classification_metrics_refuse_bad_input():
    with pytest.raises(TypeError, match=r"forget_accuracy: parameter 'labels_or_logits'"):
        forget_accuracy([1, 2, 3], [1])
    with pytest.raises(ValueError, match=r"as logits must have shape \(n, K\).*got \(5,\)"):
        forget_accuracy(torch.randn(5), [1])
    with pytest.raises(ValueError, match=r"'forget_classes' must be < K = 4"):
        forget_accuracy(torch.randn(5, 4), [4])
    with pytest.raises(ValueError, match=r"'forget_classes' must be a non-empty sequence"):
        forget_accuracy(torch.tensor([1, 2]), [])
    with pytest.raises(ValueError, match=r"must not repeat a class"):
        forget_accuracy(torch.tensor([1, 2]), [1, 1])
    with pytest.raises(ValueError, match=r"labels >= 0, got -1"):
        forget_accuracy(torch.tensor([1, -1]), [1])
    with pytest.raises(NonFiniteError, match=r"contains NaN"):
        forget_accuracy(torch.tensor([[0.0, float("nan")]]), [1])
    with pytest.raises(ValueError, match=r"class_proportions: .*label 7 >= num_classes = 5"):
        class_proportions(torch.tensor([1, 7]), 5)
    with pytest.raises(ValueError, match=r"class_proportions: parameter 'num_classes'.*got 0"):
        class_proportions(torch.tensor([1]), 0)
    with pytest.raises(ValueError, match=r"retained_accuracy: parameter 'target_labels'"):
        retained_accuracy(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"contains class 3, which has no samples"):
        retained_accuracy(torch.tensor([1, 2]), torch.tensor([1, 2]), [3])


# ---------------------------------------------------------------------- Fréchet distance
def _fd_scipy(a: np.ndarray, b: np.ndarray) -> float:
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy_sqrtm_on_gaussian_features():
    g = _gen(3)
    d = 6
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = torch.randn(400, d, generator=g, dtype=torch.float64)
    b = torch.randn(300, d, generator=g, dtype=torch.float64) @ mix * 0.5 + 0.3
    fd = frechet_distance(a, b)
    # Same plug-in statistics, two matrix square roots (eigvals vs scipy's Schur sqrtm).
    assert fd == pytest.approx(_fd_scipy(a.numpy(), b.numpy()), rel=1e-9, abs=1e-10)
    # float32 input is promoted: same value to float32 rounding of the data.
    assert frechet_distance(a.float(), b.float()) == pytest.approx(fd, rel=1e-5)


def test_frechet_distance_converges_to_closed_form_between_gaussians():
    # Commuting (diagonal) covariances: FD = |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2.
    g = _gen(4)
    va, vb = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.3, 2.0, 1.5])
    ma, mb = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.5, 1.0, 0.0])
    n = 40_000
    a = ma + va.sqrt() * torch.randn(n, 3, generator=g, dtype=torch.float64)
    b = mb + vb.sqrt() * torch.randn(n, 3, generator=g, dtype=torch.float64)
    exact = float((ma - mb).pow(2).sum() + (va.sqrt() - vb.sqrt()).pow(2).sum())
    # Sampling error of the plug-in statistics at n = 40k is ~1e-2 (measured well below 0.03).
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.03)
    assert abs(frechet_distance(a[: n // 2], a[n // 2 :])) < 0.01


def test_frechet_distance_with_feature_fn_equals_precomputed_features():
    g = _gen(5)
    w = torch.randn(12, 4, generator=g, dtype=torch.float64)
    x = torch.randn(50, 3, 4, generator=g, dtype=torch.float64)
    y = torch.randn(60, 3, 4, generator=g, dtype=torch.float64) + 0.2

    def feat(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z.reshape(z.shape[0], -1) @ w)

    assert frechet_distance(x, y, feat) == pytest.approx(
        _fd_scipy(feat(x).numpy(), feat(y).numpy()), rel=1e-9
    )


def test_frechet_distance_refuses_bad_input():
    with pytest.raises(TypeError, match=r"frechet_distance: parameter 'real' must be a floating"):
        frechet_distance(torch.ones(5, 2, dtype=torch.int64), torch.ones(5, 2))
    with pytest.raises(ValueError, match=r"features of 'fake' must have shape \(n, d\) with n"):
        frechet_distance(torch.ones(5, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"same dimension, got 2 and 3"):
        frechet_distance(torch.ones(5, 2), torch.ones(5, 3))
    with pytest.raises(TypeError, match=r"parameter 'feature_fn' must be callable"):
        frechet_distance(torch.ones(5, 2), torch.ones(5, 2), feature_fn=3)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteError, match=r"features of 'real' contain NaN or inf"):
        frechet_distance(torch.full((5, 2), float("inf")), torch.ones(5, 2))


# ---------------------------------------------------------------------- KID
def _mmd2_unbiased(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef: float) -> float:
    m = a.shape[0]
    kaa = (gamma * a @ a.T + coef) ** degree
    kbb = (gamma * b @ b.T + coef) ** degree
    kab = (gamma * a @ b.T + coef) ** degree
    off = (kaa.sum() - np.trace(kaa) + kbb.sum() - np.trace(kbb)) / (m * (m - 1))
    return float(off - 2 * kab.sum() / m**2)


def test_kid_with_one_full_subset_is_the_unbiased_polynomial_mmd():
    g = _gen(6)
    a = torch.randn(80, 5, generator=g, dtype=torch.float64)
    b = torch.randn(80, 5, generator=g, dtype=torch.float64) * 1.2 + 0.4
    # One subset of all points: a permutation of each set, and MMD^2 is permutation invariant.
    est = kid(a, b, subsets=1, subset_size=80)
    assert est.value == pytest.approx(_mmd2_unbiased(a.numpy(), b.numpy(), 3, 1 / 5, 1.0),
                                      rel=1e-10)
    est2 = kid(a, b, subsets=1, degree=2, gamma=0.5, coef=2.0)
    assert est2.value == pytest.approx(_mmd2_unbiased(a.numpy(), b.numpy(), 2, 0.5, 2.0),
                                       rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    g = _gen(7)
    a = torch.randn(600, 4, generator=g, dtype=torch.float64)
    same = torch.randn(600, 4, generator=g, dtype=torch.float64)
    other = torch.randn(600, 4, generator=g, dtype=torch.float64) + 0.5
    e_same = kid(a, same, subsets=50, subset_size=200, seed=1)
    e_other = kid(a, other, subsets=50, subset_size=200, seed=1)
    assert abs(e_same.value) < 4 * e_same.stderr
    assert e_other.value > 4 * e_other.stderr > 0
    # Reproducible with the seed, and the caller's global RNG is left untouched.
    state = torch.random.get_rng_state()
    assert kid(a, other, subsets=5, subset_size=50, seed=3) == kid(
        a, other, subsets=5, subset_size=50, seed=3
    )
    assert torch.equal(torch.random.get_rng_state(), state)


def test_kid_refuses_bad_input():
    a = torch.ones(10, 2)
    with pytest.raises(ValueError, match=r"kid: parameter 'subset_size' must be <= .* 10, got 11"):
        kid(a, a, subset_size=11)
    with pytest.raises(ValueError, match=r"kid: parameter 'subsets' must be an int >= 1, got 0"):
        kid(a, a, subsets=0)
    with pytest.raises(ValueError, match=r"kid: parameter 'gamma' must be None or a number > 0"):
        kid(a, a, gamma=-1.0)
    with pytest.raises(ValueError, match=r"kid: parameter 'coef' must be a number > 0"):
        kid(a, a, coef=0.0)


# ---------------------------------------------------------------------- likelihoods
def _gauss_2d() -> GaussianMixture:
    return GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [[0.5, 0.8], [0.6, 0.3]],
                           dtype=torch.float64)


def test_nll_exact_divergence_matches_mixture_density_in_nats_and_bits():
    p = _gauss_2d()
    sched = p.schedule
    x = p.sample(40, generator=_gen(8))
    out = nll(p, x, prior=p.noised(sched.t_max), rtol=1e-6, atol=1e-6, batch_size=16)
    ref = -p.noised(sched.t_min).log_prob(x)
    # Solver error ~1e-5 nats at rtol=atol=1e-6 (see test_estimators); requirement 1e-3.
    assert out.nats.value == pytest.approx(float(ref.mean()), abs=1e-3)
    assert out.nats.stderr == pytest.approx(float(ref.std()) / math.sqrt(40), rel=1e-2)
    assert out.bits_per_dim.value == pytest.approx(out.nats.value / (2 * math.log(2)), rel=1e-12)
    assert out.bits_per_dim.stderr == pytest.approx(out.nats.stderr / (2 * math.log(2)))
    assert out.nats.n == 40


def test_nll_uses_hutchinson_in_64_dimensions_and_stays_unbiased():
    # An 8x8-image-sized Gaussian with a full covariance (Rademacher probes are exact only for
    # diagonal Jacobians), exact score and exact terminal prior.
    d = 64
    a = torch.randn(d, d, generator=_gen(9), dtype=torch.float64)
    cov = a @ a.T / d + 0.3 * torch.eye(d, dtype=torch.float64)
    p = GaussianMixture([1.0], torch.zeros(1, d, dtype=torch.float64), cov[None])
    x = p.sample(30, generator=_gen(10))
    prior = p.noised(p.schedule.t_max)
    ref = -p.noised(p.schedule.t_min).log_prob(x)
    out = nll(p, x, prior=prior, generator=_gen(11))
    exact = nll(p, x, prior=prior, divergence="exact")
    assert exact.nats.value == pytest.approx(float(ref.mean()), abs=1e-2)
    assert out.nats.value != exact.nats.value  # "auto" picked Hutchinson for D = 64
    # Unbiased: within 4 standard errors (the reported se includes the probe noise).
    assert abs(out.nats.value - float(ref.mean())) < 4 * out.nats.stderr
    assert out.bits_per_dim.value == pytest.approx(out.nats.value / (d * math.log(2)))


def test_elbo_nll_upper_bounds_and_nearly_matches_the_exact_nll():
    p = _gauss_2d()
    x = p.sample(2000, generator=_gen(12))
    ref = float(-p.log_prob(x).mean())
    out = elbo_nll(p, x, n_t=4, generator=_gen(13), batch_size=500)
    # With the exact score the bound is tight up to the t_min decoder and the prior mismatch
    # (a few 1e-3 nats for the default schedule); the Monte Carlo se is ~0.03 here.
    assert out.nats.value > ref - 4 * out.nats.stderr
    assert out.nats.value - ref < 4 * out.nats.stderr + 0.02
    assert out.nats.n == 2000


def _kl_gauss(m0: np.ndarray, s0: np.ndarray, m1: np.ndarray, s1: np.ndarray) -> float:
    d = m0.shape[0]
    inv1 = np.linalg.inv(s1)
    dm = m1 - m0
    return 0.5 * float(np.trace(inv1 @ s0) + dm @ inv1 @ dm - d
                       + np.log(np.linalg.det(s1) / np.linalg.det(s0)))


def test_deviation_is_the_path_kl_between_gaussians_in_closed_form():
    pa = GaussianMixture([1.0], [[0.0, 0.5]], [[[1.0, 0.3], [0.3, 0.5]]], dtype=torch.float64)
    pb = GaussianMixture([1.0], [[0.6, -0.2]], [[[0.7, -0.1], [-0.1, 1.2]]], dtype=torch.float64)
    sched = pa.schedule

    def kl_at(t: float) -> float:
        a, b = pa.noised(t), pb.noised(t)
        return _kl_gauss(a.means[0].numpy(), a.covariances[0].numpy(),
                         b.means[0].numpy(), b.covariances[0].numpy())

    est = deviation(pa, pb, pa.sample(20_000, generator=_gen(14)), generator=_gen(15))
    expected = kl_at(sched.t_min) - kl_at(sched.t_max)  # de Bruijn identity for exact scores
    assert abs(est.value - expected) < 4 * est.stderr
    assert est.n == 20_000 and est.value > 0
    zero = deviation(pa, pa, pa.sample(100, generator=_gen(16)))
    assert zero.value == 0.0


def test_likelihood_metrics_refuse_bad_input():
    p = _gauss_2d()
    with pytest.raises(TypeError, match=r"nll: parameter 'x' must be a floating torch.Tensor"):
        nll(p, [[0.0, 1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"nll: parameter 'x' must have shape \(n, \*event\)"):
        nll(p, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"elbo_nll: parameter 'batch_size' must be None or an"):
        elbo_nll(p, torch.zeros(3, 2, dtype=torch.float64), batch_size=0)
    with pytest.raises(TypeError, match=r"deviation: parameter 'samples' must be a floating"):
        deviation(p, p, torch.zeros(3, 2, dtype=torch.int64))
