"""SISS's published estimator (importance-sampled subtracted loss), checked independently.

References computed without dualdiff: Gaussian transition densities with scipy.stats.norm, the
VP schedule in closed form, the denoising loss of a linear score model in closed form (and its
time average by scipy quadrature), gradients by hand. Monte Carlo means are compared with their
closed forms by z-tests (|z| < 4.5; seeds fixed, so the tests are deterministic).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _linear import LinearScore
from scipy import integrate, stats
from torch import nn

from dualdiff import GaussianMixture, KLConstrainedProblem, NonFiniteError, siss_loss
from dualdiff.baselines import FixedWeightTrainer, train_fixed_weight
from dualdiff.diffusion.losses import mixture_importance_weights, siss_terms
from dualdiff.engine import EngineConfigurationError, TrainableGaussianMixture

T_MIN, T_MAX = 1e-3, 1.0
Z_MAX = 4.5


def _alpha_sigma(t: float) -> tuple[float, float]:
    """VP schedule in closed form (beta_min 0.1, beta_max 20, the library's default)."""
    a = math.exp(-0.25 * t * t * (20.0 - 0.1) - 0.5 * t * 0.1)
    return a, math.sqrt(1.0 - a * a)


class TwoParamScore(nn.Module):
    """score = -(theta0 * x + theta1 * x^3): two parameters, a nonlinear gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.7, 0.05], dtype=torch.float64))

    def score(self, x, t=0.0, cond=None):
        return -(self.theta[0] * x + self.theta[1] * x**3)


def _dsm_closed_form(theta: float, x: np.ndarray, t: float) -> tuple[float, float]:
    """E_eps of the denoising loss of LinearScore at clean point(s) x (mean over entries).

    eps_hat - eps = sigma theta alpha x + (sigma^2 theta - 1) eps, so
    E[(.)^2] = sigma^2 theta^2 alpha^2 x^2 + (sigma^2 theta - 1)^2, and d/dtheta by hand.
    """
    a, s = _alpha_sigma(t)
    x2 = float(np.mean(x**2))
    val = s * s * theta * theta * a * a * x2 + (s * s * theta - 1.0) ** 2
    grad = 2.0 * s * s * theta * a * a * x2 + 2.0 * (s * s * theta - 1.0) * s * s
    return val, grad


def _time_average(theta: float, x: np.ndarray) -> tuple[float, float]:
    width = T_MAX - T_MIN
    v = integrate.quad(lambda t: _dsm_closed_form(theta, x, t)[0], T_MIN, T_MAX,
                       epsabs=1e-12, epsrel=1e-12)[0]
    g = integrate.quad(lambda t: _dsm_closed_form(theta, x, t)[1], T_MIN, T_MAX,
                       epsabs=1e-12, epsrel=1e-12)[0]
    return v / width, g / width


def _z(samples: np.ndarray, exact: float) -> float:
    return float((samples.mean() - exact) / (samples.std(ddof=1) / math.sqrt(samples.size)))


# ------------------------------------------------------------------------ importance weights
@pytest.mark.parametrize("kappa", [0.5, 0.2, 0.9])
def test_importance_weights_are_transition_density_ratios(kappa):
    rng = np.random.default_rng(0)
    n, event = 9, (1, 2, 3)
    x = rng.normal(size=(n, *event))
    a = rng.normal(1.0, 1.0, size=(n, *event))
    t = rng.uniform(0.05, 0.9, n)
    al = np.array([_alpha_sigma(v)[0] for v in t])
    si = np.array([_alpha_sigma(v)[1] for v in t])
    b = rng.random(n) < kappa
    src = np.where(b[:, None, None, None], a, x)
    x_t = al[:, None, None, None] * src + si[:, None, None, None] * rng.normal(size=(n, *event))
    # scipy reference: products of independent normal densities over the event entries
    lq_x = stats.norm.logpdf(x_t, al[:, None, None, None] * x, si[:, None, None, None]).reshape(
        n, -1).sum(1)
    lq_a = stats.norm.logpdf(x_t, al[:, None, None, None] * a, si[:, None, None, None]).reshape(
        n, -1).sum(1)
    mix = np.logaddexp(np.log1p(-kappa) + lq_x, np.log(kappa) + lq_a)
    want_x, want_a = np.exp(lq_x - mix), np.exp(lq_a - mix)
    tens = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    shape = (n, 1, 1, 1)
    w_x, w_a = mixture_importance_weights(
        tens(x_t), tens(x), tens(a), tens(al).reshape(shape), tens(si).reshape(shape), kappa
    )
    np.testing.assert_allclose(w_x.numpy(), want_x, rtol=1e-10)
    np.testing.assert_allclose(w_a.numpy(), want_a, rtol=1e-10)
    np.testing.assert_allclose(((1 - kappa) * w_x + kappa * w_a).numpy(), 1.0, rtol=1e-12)


def test_importance_weights_are_bounded_and_finite_far_apart():
    """|r| ~ 1e6: the weights saturate at 1/(1-kappa), 0 (or 0, 1/kappa) without overflow."""
    x = torch.zeros(2, 4, dtype=torch.float64)
    a = torch.full((2, 4), 50.0, dtype=torch.float64)
    alpha = torch.ones(2, 1, dtype=torch.float64)
    sigma = torch.full((2, 1), 0.05, dtype=torch.float64)
    x_t = torch.stack([x[0], a[1]])
    w_x, w_a = mixture_importance_weights(x_t, x, a, alpha, sigma, 0.3)
    assert torch.isfinite(w_x).all() and torch.isfinite(w_a).all()
    assert w_x.tolist() == pytest.approx([1 / 0.7, 0.0]) and w_a.tolist() == pytest.approx(
        [0.0, 1 / 0.3])


# ------------------------------------------------------------------------ unbiasedness
def _pairs(rng, n):
    x = rng.normal(-1.0, 0.8, size=(n, 1, 2, 2))
    a = rng.normal(1.5, 0.5, size=(n, 1, 2, 2))
    return x, a


@pytest.mark.parametrize("kappa", [0.5, 0.25])
def test_siss_loss_is_unbiased_for_the_naive_deletion_objective_at_fixed_t(kappa):
    """Pairs, t fixed: E[siss] = mean_j l(x_j) - lam mean_j l(a_j), closed form per point."""
    rng = np.random.default_rng(1)
    theta, lam, t, n = 0.8, 0.3, 0.35, 6
    x, a = _pairs(rng, n)
    exact = np.mean([_dsm_closed_form(theta, x[j], t)[0] for j in range(n)]) - lam * np.mean(
        [_dsm_closed_form(theta, a[j], t)[0] for j in range(n)])
    exact_g = np.mean([_dsm_closed_form(theta, x[j], t)[1] for j in range(n)]) - lam * np.mean(
        [_dsm_closed_form(theta, a[j], t)[1] for j in range(n)])
    reps = 4000
    xr = torch.tensor(np.tile(x, (reps, 1, 1, 1)))
    ar = torch.tensor(np.tile(a, (reps, 1, 1, 1)))
    model = LinearScore(theta)
    g = torch.Generator().manual_seed(2)
    lx, la, _, _ = siss_terms(
        model, xr, ar, t, torch.randn(xr.shape, dtype=torch.float64, generator=g),
        torch.rand(xr.shape[0], dtype=torch.float64, generator=g) < kappa, kappa,
    )
    per_rep = (lx - lam * la).reshape(reps, n).mean(1)
    chunks = per_rep.reshape(100, reps // 100).mean(1)  # 100 independent chunk means
    grads = torch.stack([torch.autograd.grad(v, model.theta, retain_graph=True)[0]
                         for v in chunks])
    assert abs(_z(per_rep.detach().numpy(), exact)) < Z_MAX
    assert abs(_z(grads.numpy(), exact_g)) < Z_MAX


def test_siss_loss_is_unbiased_with_random_times_and_its_gradient_too():
    """siss_loss draws t ~ U(t_min, t_max), noise and labels; compare with scipy quadrature."""
    rng = np.random.default_rng(3)
    theta, lam, n = 0.6, 0.5, 4
    x, a = _pairs(rng, n)
    ex = [_time_average(theta, x[j]) for j in range(n)]
    ea = [_time_average(theta, a[j]) for j in range(n)]
    exact = np.mean([e[0] for e in ex]) - lam * np.mean([e[0] for e in ea])
    exact_g = np.mean([e[1] for e in ex]) - lam * np.mean([e[1] for e in ea])
    reps = 600
    xr = torch.tensor(np.tile(x, (reps, 1, 1, 1)))
    ar = torch.tensor(np.tile(a, (reps, 1, 1, 1)))
    model = LinearScore(theta)
    g = torch.Generator().manual_seed(4)
    vals, grads = [], []
    for _ in range(60):  # 60 independent batches of 2400 pairs
        loss = siss_loss(model, xr, ar, lam, g, kappa=0.5)
        (gr,) = torch.autograd.grad(loss, model.theta)
        vals.append(float(loss.detach()))
        grads.append(float(gr))
    assert abs(_z(np.array(vals), exact)) < Z_MAX
    assert abs(_z(np.array(grads), exact_g)) < Z_MAX


def test_without_importance_weights_the_mixture_estimate_is_biased():
    """Power of the z-test above: dropping the weights moves the mean by many standard errors."""
    rng = np.random.default_rng(3)
    theta, n, t, kappa = 0.6, 4, 0.5, 0.5
    x, a = _pairs(rng, n)
    exact = np.mean([_dsm_closed_form(theta, x[j], t)[0] for j in range(n)])
    reps = 4000
    xr = torch.tensor(np.tile(x, (reps, 1, 1, 1)))
    ar = torch.tensor(np.tile(a, (reps, 1, 1, 1)))
    g = torch.Generator().manual_seed(5)
    lx, _, w_x, _ = siss_terms(
        LinearScore(theta), xr, ar, t, torch.randn(xr.shape, dtype=torch.float64, generator=g),
        torch.rand(xr.shape[0], dtype=torch.float64, generator=g) < kappa, kappa,
    )
    weighted = lx.detach().reshape(reps, n).mean(1).numpy()
    unweighted = (lx.detach() / w_x).reshape(reps, n).mean(1).numpy()
    assert abs(_z(weighted, exact)) < Z_MAX
    assert abs(_z(unweighted, exact)) > 20.0


def test_siss_uses_one_network_evaluation_per_pair():
    calls = []

    class Counting(LinearScore):
        def score(self, x, t=0.0, cond=None):
            calls.append(x.shape[0])
            return super().score(x, t, cond)

    x = torch.randn(7, 3, dtype=torch.float64)
    siss_loss(Counting(0.5), x, x + 1.0, 0.2, torch.Generator().manual_seed(0))
    assert calls == [7]


def test_labels_select_the_noised_point_and_the_draw_order():
    """from_forget = 1 noises a, 0 noises x; the generator draws times, noise, then labels."""
    model = LinearScore(0.4)
    x = torch.full((5, 2), -1.0, dtype=torch.float64)
    a = torch.full((5, 2), 2.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(9)
    got = siss_loss(model, x, a, 0.3, g, kappa=0.4)
    g = torch.Generator().manual_seed(9)
    u = torch.rand(5, dtype=torch.float64, generator=g)
    t = T_MIN + (T_MAX - T_MIN) * u
    noise = torch.randn(x.shape, dtype=torch.float64, generator=g)
    b = torch.rand(5, dtype=torch.float64, generator=g) < 0.4
    want = siss_loss(model, x, a, 0.3, kappa=0.4, t=t, noise=noise, from_forget=b)
    assert float(got.detach()) == float(want.detach())
    # with every label 0 the data term is the plain denoising loss (w_x = 1/((1-k)+k e^r))
    lx, _, w_x, _ = siss_terms(model, x, a, t, noise, torch.zeros(5), 0.4)
    al = torch.tensor([_alpha_sigma(float(v))[0] for v in t], dtype=torch.float64)
    si = torch.tensor([_alpha_sigma(float(v))[1] for v in t], dtype=torch.float64)
    x_t = al[:, None] * x + si[:, None] * noise
    plain = (si[:, None] * 0.4 * x_t - noise).pow(2).mean(1)
    torch.testing.assert_close(lx / w_x, plain, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------ scaling_norm
@pytest.mark.parametrize("s", [0.01, 0.3, 2.0])
def test_scaling_norm_sets_the_forget_gradient_norm(s):
    torch.manual_seed(0)
    x = torch.randn(32, 1, 2, 2, dtype=torch.float64)
    a = torch.randn(32, 1, 2, 2, dtype=torch.float64) + 1.0
    t = torch.rand(32, dtype=torch.float64) * 0.8 + 0.1
    noise = torch.randn_like(x)
    b = torch.rand(32) < 0.5
    model = TwoParamScore()
    # forget-only (weight 0): the whole gradient is the rescaled forget gradient
    loss = siss_loss(model, x, a, 0.7, kappa=0.5, scaling_norm=s, weight=0.0, t=t, noise=noise,
                     from_forget=b)
    (g_total,) = torch.autograd.grad(loss, model.theta)
    assert float(g_total.norm()) == pytest.approx(s, rel=1e-12)
    # with the data term: g = g_x - s g_a / |g_a|, components by separate autograd calls
    lx, la, _, _ = siss_terms(model, x, a, t, noise, b, 0.5)
    (g_x,) = torch.autograd.grad(lx.mean(), model.theta, retain_graph=True)
    (g_a,) = torch.autograd.grad(la.mean(), model.theta)
    for lam in (0.01, 0.9):  # lam no longer enters the gradient
        loss = siss_loss(model, x, a, lam, kappa=0.5, scaling_norm=s, t=t, noise=noise,
                         from_forget=b)
        (g,) = torch.autograd.grad(loss, model.theta)
        torch.testing.assert_close(g, g_x - s * g_a / g_a.norm(), rtol=1e-12, atol=1e-15)
    assert torch.allclose(-g_total, s * g_a / g_a.norm(), rtol=1e-12)


def test_scaling_norm_with_a_zero_forget_gradient_raises():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def score(self, x, t=0.0, cond=None):
            return -x + 0.0 * self.w

    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"gradient norm is 0\.0"):
        siss_loss(Frozen(), x, x, 0.1, torch.Generator().manual_seed(0), scaling_norm=1.0)


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kappa", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_kappa_must_be_in_the_open_unit_interval(kappa):
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"siss_loss: parameter 'kappa' must be in the open "
                       r"interval \(0, 1\).*got"):
        siss_loss(LinearScore(0.5), x, x, 0.1, kappa=kappa)


def test_bad_input_names_the_parameter():
    x = torch.randn(4, 2, dtype=torch.float64)
    m = LinearScore(0.5)
    with pytest.raises(TypeError, match="siss_loss: parameter 'kappa' must be a float"):
        siss_loss(m, x, x, 0.1, kappa=True)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="siss_loss: parameter 'scaling_norm' must be None"):
            siss_loss(m, x, x, 0.1, scaling_norm=bad)
    with pytest.raises(ValueError, match="siss_loss: parameter 'lam' must be >= 0"):
        siss_loss(m, x, x, -0.1)
    with pytest.raises(ValueError, match="siss_loss: parameter 'weight' must be >= 0"):
        siss_loss(m, x, x, 0.1, weight=-1.0)
    with pytest.raises(ValueError, match=r"'x_all' and 'a_forget' must have the same shape"):
        siss_loss(m, x, x[:3], 0.1)
    with pytest.raises(ValueError, match=r"'from_forget' must have shape \(4,\)"):
        siss_loss(m, x, x, 0.1, from_forget=torch.zeros(3))
    with pytest.raises(ValueError, match=r"'noise' must have the shape of x_all"):
        siss_loss(m, x, x, 0.1, noise=torch.zeros(4, 3))
    with pytest.raises(NonFiniteError, match="'a_forget' holds NaN"):
        siss_loss(m, x, x * float("nan"), 0.1)
    with pytest.raises(TypeError, match="siss_loss: parameter 'model' must be a ScoreModel"):
        siss_loss(object(), x, x, 0.1)


# ------------------------------------------------------------------------ the engine's form
W = [0.7, 0.3]
P0 = GaussianMixture(W, [[-2.0], [2.0]], 1.0)
FU = KLConstrainedProblem(P0, [P0.component(1)], bounds=[1.0], direction="forward")


def test_primal_form_is_siss_loss_with_the_fu_coefficients():
    lam = 0.2
    model = TrainableGaussianMixture.from_mixture(P0)
    tr = FixedWeightTrainer(FU, model, lam, primal="siss", batch_size=64, seed=3,
                            primal_options={"kappa": 0.4})
    batch = tr.form.sample_batch(model, 64, torch.Generator().manual_seed(11))
    out = tr.form.primal_loss(model, batch, torch.tensor([lam], dtype=torch.float64))
    want = siss_loss(model, batch.x0, batch.unlearn[0][0], lam / (1 - lam), kappa=0.4,
                     weight=1 / (1 - lam), t=batch.t, noise=batch.noise,
                     from_forget=batch.from_forget)
    assert float(out.loss.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    # labels are Bernoulli(kappa): 40% of 20 000 within 4.5 standard errors
    big = tr.form.sample_batch(model, 20000, torch.Generator().manual_seed(1))
    frac = float(big.from_forget.mean())
    assert abs(frac - 0.4) < Z_MAX * math.sqrt(0.4 * 0.6 / 20000)
    assert tr.config()["primal_options"] == {"kappa": 0.4, "scaling_norm": None}


def test_primal_form_scaling_norm_step_and_stats():
    model = TrainableGaussianMixture.from_mixture(P0)
    tr = FixedWeightTrainer(FU, model, 0.1, primal="siss", batch_size=128, seed=0,
                            primal_options={"scaling_norm": 0.05})
    rec = tr.step()
    assert rec.skipped is None
    scale, g_norm = rec.stats["siss_forget_scale"], rec.stats["siss_forget_grad_norm"]
    assert scale * g_norm == pytest.approx(0.05, rel=1e-9)
    assert 0.0 < rec.stats["siss_mean_w_x"] and 0.0 < rec.stats["siss_mean_w_a"]


def test_fixed_weight_siss_learns_the_signed_mixture():
    """lam = 0.2 with primal='siss': the forget component's weight approaches 0.1/0.8."""
    model = TrainableGaussianMixture.from_mixture(P0, learn=("weights",))
    train_fixed_weight(FU, model, 0.2, 300, primal="siss", primal_lr=0.05, batch_size=512,
                       seed=0, estimate_every=100)
    # same tolerance as the composed/reweighted check in test_baselines (pretrained 0.3 is
    # 0.175 away from the target)
    assert float(model.weights[1].detach()) == pytest.approx(0.125, abs=0.03)


def test_siss_form_refuses_other_problems():
    model = TrainableGaussianMixture.from_mixture(P0)
    ru = KLConstrainedProblem(P0, [P0.component(1)], bounds=[7.0])
    with pytest.raises(EngineConfigurationError, match="primal='siss' does not apply"):
        FixedWeightTrainer(ru, model, 0.1, primal="siss")
    p3 = GaussianMixture([0.5, 0.3, 0.2], [[-2.0], [2.0], [5.0]], 1.0)
    fu2 = KLConstrainedProblem(p3, [p3.component(1), p3.component(2)], bounds=[1.0, 1.0],
                               direction="forward")
    with pytest.raises(EngineConfigurationError, match="m=2"):
        FixedWeightTrainer(fu2, TrainableGaussianMixture.from_mixture(p3), [0.1, 0.1],
                           primal="siss")
    with pytest.raises(ValueError, match="parameter 'kappa' must be in the open interval"):
        FixedWeightTrainer(FU, model, 0.1, primal="siss", primal_options={"kappa": 1.0})


def test_siss_checkpoint_resumes_bit_for_bit_and_checks_its_options(tmp_path):
    opts = {"primal": "siss", "batch_size": 64, "seed": 2, "primal_lr": 0.02,
            "primal_options": {"kappa": 0.5, "scaling_norm": 0.1}, "grad_clip": 1.0}
    full = FixedWeightTrainer(FU, TrainableGaussianMixture.from_mixture(P0), 0.1, **opts)
    full.fit(6, progress=False)
    first = FixedWeightTrainer(FU, TrainableGaussianMixture.from_mixture(P0), 0.1, **opts)
    first.fit(3, progress=False)
    first.save_checkpoint(tmp_path / "c.pt")
    resumed = FixedWeightTrainer(FU, TrainableGaussianMixture.from_mixture(P0), 0.1, **opts)
    resumed.load_checkpoint(tmp_path / "c.pt")
    resumed.fit(3, progress=False)
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert full.history.to_dict() == resumed.history.to_dict()
    other = FixedWeightTrainer(FU, TrainableGaussianMixture.from_mixture(P0), 0.1,
                               **{**opts, "primal_options": {"kappa": 0.3, "scaling_norm": 0.1}})
    with pytest.raises(EngineConfigurationError, match="differently configured"):
        other.load_checkpoint(tmp_path / "c.pt")


# ------------------------------------------------------------------------ module adapter, images
class TinyConv(nn.Module):
    """Noise predictor on (n, 1, 4, 4) images with a time input."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))

    def forward(self, x, t):
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 4, 4)
        return self.conv2(torch.tanh(self.conv1(torch.cat([x, tt], 1))))


def test_siss_loss_on_a_module_adapter_matches_a_hand_computation():
    """Image rows (n, 1, 4, 4), ModuleScoreModel(eps): weights from scipy, loss by hand."""
    from dualdiff import ModuleScoreModel

    net = TinyConv(0).double()
    model = ModuleScoreModel(net, prediction="eps")
    rng = np.random.default_rng(7)
    n, kappa, lam, mu = 6, 0.5, 0.25, 1.3
    x, a = rng.normal(size=(n, 1, 4, 4)), rng.normal(1.0, 1.0, size=(n, 1, 4, 4))
    t, eps = rng.uniform(0.1, 0.9, n), rng.normal(size=(n, 1, 4, 4))
    b = np.array([0, 1, 1, 0, 1, 0], dtype=bool)
    al = np.array([_alpha_sigma(v)[0] for v in t])[:, None, None, None]
    si = np.array([_alpha_sigma(v)[1] for v in t])[:, None, None, None]
    x_t = al * np.where(b[:, None, None, None], a, x) + si * eps
    lq_x = stats.norm.logpdf(x_t, al * x, si).reshape(n, -1).sum(1)
    lq_a = stats.norm.logpdf(x_t, al * a, si).reshape(n, -1).sum(1)
    log_m = np.logaddexp(np.log(1 - kappa) + lq_x, np.log(kappa) + lq_a)
    with torch.no_grad():
        eps_hat = net(torch.tensor(x_t), torch.tensor(t)).numpy()
    l_x = ((eps_hat - (x_t - al * x) / si) ** 2).reshape(n, -1).mean(1)
    l_a = ((eps_hat - (x_t - al * a) / si) ** 2).reshape(n, -1).mean(1)
    want = mu * np.mean(np.exp(lq_x - log_m) * l_x) - lam * np.mean(np.exp(lq_a - log_m) * l_a)
    tens = lambda v: torch.tensor(v)  # noqa: E731
    got = siss_loss(model, tens(x), tens(a), lam, kappa=kappa, weight=mu, t=tens(t),
                    noise=tens(eps), from_forget=tens(b))
    assert float(got.detach()) == pytest.approx(want, rel=1e-10)


def test_primal_dual_fu_with_the_siss_form_on_images():
    """Model-level FU (forget images, N = 64) trained primal-dual with primal='siss'."""
    import copy

    from dualdiff import ModuleScoreModel, PrimalDualTrainer

    p0 = ModuleScoreModel(TinyConv(0).double(), prediction="eps")
    g = torch.Generator().manual_seed(2)
    data = torch.randn(56, 1, 4, 4, dtype=torch.float64, generator=g)
    forget = 1.5 + torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=g)
    prob = KLConstrainedProblem(p0, [forget], bounds=[0.5], direction="forward",
                                pretrained_data=torch.cat([data, forget]), training_set_size=64)

    def est(model, generator=None):
        from dualdiff.problems.contract import ConstraintEstimate

        c = torch.tensor([0.0], dtype=torch.float64)  # a constant estimate: lam must rise
        return ConstraintEstimate(constraints=c, constraint_stderr=torch.zeros(1),
                                  violations=prob.violations(c), method="custom", n=1)

    model = copy.deepcopy(p0)
    before = [p.detach().clone() for p in model.parameters()]
    tr = PrimalDualTrainer(prob, model, primal="siss", batch_size=16, estimator=est,
                           dual_lr=0.01, seed=0, primal_options={"kappa": 0.5})
    hist = tr.fit(3, progress=False)
    assert all(r.skipped is None for r in hist.records)
    lam = tr.multipliers
    assert 0.0 < float(lam[0]) <= 0.125 and prob.in_domain(lam)
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert all(math.isfinite(r.loss) for r in hist.records)
