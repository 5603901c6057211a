"""Parametrisation conversions, the nn.Module adapter, MLPScoreNet and the DSM loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dualdiff._errors import NonFiniteError
from dualdiff.diffusion.losses import denoising_score_matching_loss
from dualdiff.models.gaussian_mixture import GaussianMixture
from dualdiff.models.module_adapter import MLPScoreNet, ModuleScoreModel
from dualdiff.models.parametrization import (
    PREDICTIONS,
    broadcast_time,
    convert,
    from_eps,
    score_to,
    to_eps,
    to_score,
)
from dualdiff.models.schedule import VPSchedule

# float64 conversions are exact up to a few ulps times the condition number 1/alpha or
# 1/sigma; alpha, sigma >= 0.05 below keeps that under ~1e3, hence rtol 1e-9.
RTOL64 = 1e-9


def _gm() -> GaussianMixture:
    return GaussianMixture(
        [0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], [[0.5, 0.8], [0.6, 0.3]]
    )


# ---------------------------------------------------------------------- parametrisation
@settings(max_examples=60, deadline=None)
@given(
    alpha=st.floats(0.05, 1.0),
    sigma=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 5),
    d=st.integers(1, 4),
)
def test_pure_conversions_are_consistent_and_invertible(alpha, sigma, seed, n, d):
    # General (alpha, sigma), not only VP: the formulas must be exact inverses for any pair.
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, dtype=torch.float64, generator=g)
    eps = torch.randn(n, d, dtype=torch.float64, generator=g)
    a = torch.full((n, 1), alpha, dtype=torch.float64)
    s = torch.full((n, 1), sigma, dtype=torch.float64)
    x_t = a * x0 + s * eps
    truth = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}
    for kind in PREDICTIONS:
        # Every representation of the same (x0, eps) maps back to eps and to each other.
        torch.testing.assert_close(to_eps(truth[kind], x_t, a, s, kind), eps, rtol=RTOL64,
                                   atol=1e-9)
        torch.testing.assert_close(from_eps(eps, x_t, a, s, kind), truth[kind], rtol=RTOL64,
                                   atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    t=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**31 - 1),
    source=st.sampled_from(PREDICTIONS),
    target=st.sampled_from(PREDICTIONS),
)
def test_dispatch_round_trips_on_vp_schedule(t, seed, source, target):
    sched = VPSchedule()
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(4, 3, dtype=torch.float64, generator=g)
    pred = torch.randn(4, 3, dtype=torch.float64, generator=g)
    there = convert(pred, x_t, t, sched, source, target)
    back = convert(there, x_t, t, sched, target, source)
    # alpha(1) ~ 6.6e-3 amplifies rounding by ~1/alpha^2 in the worst chain: rtol 1e-7.
    torch.testing.assert_close(back, pred, rtol=1e-7, atol=1e-7)
    score = to_score(pred, x_t, t, sched, source)
    torch.testing.assert_close(score_to(source, score, x_t, t, sched), pred, rtol=1e-7,
                               atol=1e-7)


def test_to_score_matches_tweedie_for_gaussian_mixture():
    # The optimal eps-prediction E[eps | x_t] of a mixture is -sigma_t * score (Tweedie).
    p = _gm()
    sched = p.schedule
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.05, 0.9, 6, dtype=torch.float64)
    score = p.score(x, t)
    sigma = sched.sigma(t)[:, None]
    torch.testing.assert_close(to_score(-sigma * score, x, t, sched, "eps"), score)


def test_dispatch_clamps_time_into_schedule_range():
    sched = VPSchedule()
    x = torch.ones(2, 2, dtype=torch.float64)
    eps = torch.ones(2, 2, dtype=torch.float64)
    at_zero = to_score(eps, x, 0.0, sched, "eps")  # sigma(0) = 0 would divide by zero
    at_min = to_score(eps, x, sched.t_min, sched, "eps")
    torch.testing.assert_close(at_zero, at_min)
    assert torch.isfinite(at_zero).all()


def test_unknown_prediction_names_allowed_values():
    sched = VPSchedule()
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"to_score: unknown prediction='noise'.*'eps', 'x0'"):
        to_score(x, x, 0.5, sched, "noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"score_to: unknown prediction='velocity'"):
        score_to("velocity", x, x, 0.5, sched)  # type: ignore[arg-type]


def test_broadcast_time_rejects_bad_shapes_and_values():
    x = torch.zeros(3, 2)
    assert broadcast_time(0.5, x, "f").shape == (3,)
    assert broadcast_time(torch.tensor([0.5]), x, "f").shape == (3,)
    with pytest.raises(ValueError, match=r"f: parameter 't' must be a scalar or have shape \(3,\)"):
        broadcast_time(torch.zeros(2), x, "f")
    with pytest.raises(NonFiniteError, match="parameter 't'"):
        broadcast_time(float("nan"), x, "f")


# ---------------------------------------------------------------------- module adapter
class _ExactNet(nn.Module):
    """Returns the exact mixture prediction of a given kind (a perfectly trained network)."""

    def __init__(self, p: GaussianMixture, kind: str) -> None:
        super().__init__()
        self.p, self.kind = p, kind
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return score_to(self.kind, self.p.score(x, t), x, t, self.p.schedule)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_module_score_model_contract(kind):
    # One contract over every prediction type: score equals the exact mixture score, eps is
    # -sigma * score, shapes/dtypes are preserved and parameters are exposed.
    p = _gm()
    model = ModuleScoreModel(_ExactNet(p, kind), prediction=kind)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.01, 0.1, 0.3, 0.6, 1.0], dtype=torch.float64)
    s = model.score(x, t)
    assert s.shape == x.shape and s.dtype == x.dtype
    torch.testing.assert_close(s, p.score(x, t), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.eps(x, t), -p.schedule.sigma(t)[:, None] * s, rtol=1e-7,
                               atol=1e-9)
    s_scalar = model.score(x, 0.3)
    torch.testing.assert_close(s_scalar, p.score(x, 0.3), rtol=1e-7, atol=1e-9)
    assert len(list(model.parameters())) == 1
    assert isinstance(model.module, _ExactNet)


class _TimeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: object = None) -> torch.Tensor:
        self.seen = c
        self.cond = cond
        return torch.zeros_like(x)


@pytest.mark.parametrize("time_input", ["t", "log_snr", "sigma"])
def test_module_receives_clamped_time_feature(time_input):
    sched = VPSchedule()
    rec = _TimeRecorder()
    model = ModuleScoreModel(rec, schedule=sched, time_input=time_input)
    x = torch.zeros(3, 2, dtype=torch.float64)
    model.score(x, torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64), cond="c")
    t = torch.tensor([sched.t_min, 0.5, sched.t_max], dtype=torch.float64)
    expected = {"t": t, "log_snr": sched.log_snr(t), "sigma": sched.sigma(t)}[time_input]
    assert rec.seen is not None and rec.seen.shape == (3,)
    torch.testing.assert_close(rec.seen, expected)
    assert rec.cond == "c"


def test_module_score_model_errors():
    with pytest.raises(TypeError, match=r"ModuleScoreModel: parameter 'module' must be a torch"):
        ModuleScoreModel(lambda x, t: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ModuleScoreModel: unknown prediction='noise'"):
        ModuleScoreModel(nn.Identity(), prediction="noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown time_input='step'.*'t', 'log_snr', 'sigma'"):
        ModuleScoreModel(nn.Identity(), time_input="step")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="parameter 'schedule' must implement NoiseSchedule"):
        ModuleScoreModel(nn.Identity(), schedule="vp")  # type: ignore[arg-type]

    class Bad(nn.Module):
        def forward(self, x, t):
            return x[:, :1]

    model = ModuleScoreModel(Bad())
    with pytest.raises(ValueError, match=r"ModuleScoreModel.score: .*shaped like x \(4, 2\)"):
        model.score(torch.zeros(4, 2), 0.5)
    with pytest.raises(ValueError, match=r"ModuleScoreModel.eps: parameter 'x' must be"):
        model.eps(torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match=r"parameter 't' must be a scalar or have shape \(4,\)"):
        model.score(torch.zeros(4, 2), torch.zeros(3))


# ---------------------------------------------------------------------- MLPScoreNet
def test_mlp_score_net_shapes_init_and_gradients():
    torch.manual_seed(0)
    net = MLPScoreNet(dim=3, hidden=16, depth=2, time_embedding_dim=8)
    x = torch.randn(7, 3)
    out = net(x, torch.rand(7))
    assert out.shape == (7, 3)
    assert torch.count_nonzero(out) == 0  # zero-initialised read-out
    assert net(x, 0.5).shape == (7, 3)
    model = ModuleScoreModel(net)
    loss = denoising_score_matching_loss(model, x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    net64 = MLPScoreNet(dim=2).double()
    assert net64(torch.zeros(2, 2, dtype=torch.float64), 0.1).dtype == torch.float64


def test_mlp_score_net_errors():
    with pytest.raises(ValueError, match="MLPScoreNet: parameter 'dim' must be an int >= 1"):
        MLPScoreNet(dim=0)
    with pytest.raises(ValueError, match="parameter 'dim' must be an even int >= 2, got 7"):
        MLPScoreNet(dim=2, time_embedding_dim=7)
    with pytest.raises(ValueError, match=r"MLPScoreNet.forward: parameter 'x' must have shape"):
        MLPScoreNet(dim=2)(torch.zeros(3, 4), 0.5)


# ---------------------------------------------------------------------- DSM loss
def test_dsm_loss_matches_closed_form_for_gaussian():
    # p0 = N(0, v I): the optimal eps-prediction has E||eps - eps*||^2 / D = a^2 v/(a^2 v+s^2).
    v, t, n = 0.4, 0.3, 40_000
    p = GaussianMixture([1.0], [[0.0, 0.0]], v)
    sched = p.schedule
    g = torch.Generator().manual_seed(0)
    x0 = p.sample(n, generator=g)
    per = denoising_score_matching_loss(p, x0, t=t, generator=g, reduction="none")
    a2 = float(sched.alpha(torch.tensor(t))) ** 2
    s2 = float(sched.sigma(torch.tensor(t))) ** 2
    expected = a2 * v / (a2 * v + s2)
    stderr = float(per.std()) / math.sqrt(n)
    assert abs(float(per.mean()) - expected) < 4 * stderr  # 4-sigma Monte Carlo band


def test_dsm_loss_reductions_weights_and_minimiser():
    p = _gm()
    wrong = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.5)
    g = torch.Generator().manual_seed(0)
    x0 = p.sample(2000, generator=g)
    t = torch.rand(2000, dtype=torch.float64, generator=g)
    noise = torch.randn(2000, 2, dtype=torch.float64, generator=g)
    per = denoising_score_matching_loss(p, x0, reduction="none", t=t, noise=noise)
    assert per.shape == (2000,)
    torch.testing.assert_close(denoising_score_matching_loss(p, x0, t=t, noise=noise), per.mean())
    total = denoising_score_matching_loss(p, x0, reduction="sum", t=t, noise=noise)
    torch.testing.assert_close(total, per.sum())
    w = torch.rand(2000, dtype=torch.float64, generator=g)
    torch.testing.assert_close(
        denoising_score_matching_loss(p, x0, weights=w, reduction="none", t=t, noise=noise), w * per
    )
    # The exact score is the minimiser: with common random numbers it wins clearly.
    assert float(per.mean()) < float(denoising_score_matching_loss(wrong, x0, t=t, noise=noise))


def test_dsm_loss_errors():
    p = _gm()
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown reduction='avg'; allowed values are 'mean'"):
        denoising_score_matching_loss(p, x0, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"parameter 'weights' must have shape \(4,\)"):
        denoising_score_matching_loss(p, x0, weights=torch.ones(3))
    with pytest.raises(ValueError, match=r"parameter 'x0' must be a floating tensor"):
        denoising_score_matching_loss(p, torch.zeros(4))
    with pytest.raises(NonFiniteError, match="parameter 'weights'"):
        denoising_score_matching_loss(p, x0, weights=torch.tensor([1.0, 1.0, float("inf"), 1]))
    with pytest.raises(TypeError, match="parameter 'model' must be a ScoreModel"):
        denoising_score_matching_loss(object(), x0)  # type: ignore[arg-type]


@pytest.mark.slow
def test_mlp_learns_ring_of_eight_gaussians():
    # The demo's claim: MLPScoreNet learns the 2-D ring (R/std = 8) on CPU in about a minute.
    from dualdiff.diffusion.sampling import sample_ode

    torch.manual_seed(0)
    ang = torch.arange(8) * 2 * math.pi / 8
    p = GaussianMixture(torch.ones(8), 4.0 * torch.stack([ang.cos(), ang.sin()], 1), 0.25)
    net = MLPScoreNet(2)
    model = ModuleScoreModel(net)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    steps = 3000
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = denoising_score_matching_loss(model, p.sample(512, generator=g).float(),
                                             generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    x = sample_ode(model, (4000, 2), dtype=torch.float32, generator=g).double()
    counts = torch.bincount(p.responsibilities(x).argmax(-1), minlength=8).double()
    # Multinomial(4000, 1/8): each count has sd ~21; 10% slack allows model error too.
    assert (counts / 4000 - 1 / 8).abs().max() < 0.025
    radius = x.norm(dim=1)
    assert abs(float(radius.mean()) - 4.0) < 0.1
    assert abs(float(radius.std()) - 0.5) < 0.1
