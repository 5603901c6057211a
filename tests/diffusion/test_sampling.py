"""Reverse-SDE and probability-flow-ODE samplers against exact Gaussian-mixture moments."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from dualdiff.diffusion.sampling import SamplerOutput, prior_sample, sample_ode, sample_sde
from dualdiff.models.gaussian_mixture import GaussianMixture
from dualdiff.models.module_adapter import MLPScoreNet, ModuleScoreModel
from dualdiff.models.schedule import VPSchedule


def _gm() -> GaussianMixture:
    return GaussianMixture(
        [0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], [[0.5, 0.8], [0.6, 0.3]]
    )


def _check_moments(x: torch.Tensor, p: GaussianMixture, bias: float) -> None:
    """Mean and covariance of ``x`` match the mixture's within 4 standard errors + ``bias``."""
    n = x.shape[0]
    mean, cov = p.mean(), p.covariance()
    # Standard error of the mean: sqrt(diag(cov)/n).
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - mean).abs() <= 4 * se_mean + bias).all(), (x.mean(0), mean)
    # Standard error of a covariance entry ~ sqrt((S_ii S_jj + S_ij^2)/n) (Gaussian approx.;
    # the mixture's heavier tails are covered by the 5-sigma band).
    d = torch.diagonal(cov)
    se_cov = torch.sqrt((d[:, None] * d[None, :] + cov**2) / n)
    assert ((torch.cov(x.T) - cov).abs() <= 5 * se_cov + bias).all(), (torch.cov(x.T), cov)


def test_sde_reproduces_mixture_moments():
    # Exact score, 3000 samples. Euler-Maruyama has O(h) weak error; with 300 steps the
    # measured moment bias is ~0.01-0.02, hence bias allowance 0.04.
    p = _gm()
    g = torch.Generator().manual_seed(0)
    x = sample_sde(p, (3000, 2), steps=300, generator=g)
    assert x.shape == (3000, 2) and x.dtype == torch.float64
    _check_moments(x, p.noised(p.schedule.t_min), bias=0.04)


@pytest.mark.parametrize(("method", "steps", "bias"), [("dopri5", 100, 0.01), ("heun", 60, 0.02)])
def test_ode_reproduces_mixture_moments(method, steps, bias):
    # dopri5 at rtol=atol=1e-5 is exact to ~1e-4; Heun (2nd order) with 60 steps to ~1e-2.
    p = _gm()
    g = torch.Generator().manual_seed(1)
    x = sample_ode(p, (4000, 2), method=method, steps=steps, generator=g)
    _check_moments(x, p.noised(p.schedule.t_min), bias=bias)


def test_fixed_step_ode_solvers_converge_with_their_order():
    # Same starting points: Euler (order 1) and Heun (order 2) converge to the dopri5 solution
    # (rtol 1e-7) with error ratios ~2 and ~4 when the step halves (measured 2.0 and 3.9).
    p = _gm()
    x_init = prior_sample((50, 2), p.schedule, generator=torch.Generator().manual_seed(2))
    ref = sample_ode(p, None, x_init=x_init, rtol=1e-7, atol=1e-7)

    def err(method: str, steps: int) -> float:
        out = sample_ode(p, None, x_init=x_init, method=method, steps=steps)  # type: ignore[call-overload]
        return float((out - ref).abs().max())

    heun50, heun100 = err("heun", 50), err("heun", 100)
    euler50, euler100 = err("euler", 50), err("euler", 100)
    assert heun100 < 1e-3 < euler100 < 2e-2
    assert heun50 / heun100 > 3.0
    assert 1.6 < euler50 / euler100 < 2.5


def test_samplers_are_reproducible_with_generator():
    p = _gm()
    a = sample_sde(p, (50, 2), steps=20, generator=torch.Generator().manual_seed(3))
    b = sample_sde(p, (50, 2), steps=20, generator=torch.Generator().manual_seed(3))
    c = sample_sde(p, (50, 2), steps=20, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    d = sample_ode(p, (50, 2), method="euler", steps=10, generator=torch.Generator().manual_seed(3))
    e = sample_ode(p, (50, 2), method="euler", steps=10, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(d, e, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["sde", "ode-euler", "ode-dopri5"])
def test_trajectory_shapes_and_times(kind):
    p = _gm()
    sched = p.schedule
    g = torch.Generator().manual_seed(5)
    if kind == "sde":
        out = sample_sde(p, (10, 2), steps=8, generator=g, return_trajectory=True)
    else:
        out = sample_ode(p, (10, 2), method=kind.split("-")[1], steps=8, generator=g,
                         return_trajectory=True)
    assert isinstance(out, SamplerOutput)
    assert out.trajectory.shape == (9, 10, 2) and out.times.shape == (9,)
    torch.testing.assert_close(out.trajectory[-1], out.samples)
    assert float(out.times[0]) == pytest.approx(sched.t_max)
    assert float(out.times[-1]) == pytest.approx(sched.t_min)
    assert bool((out.times[1:] < out.times[:-1]).all())
    # The first state is the prior draw N(0, sigma_T^2 I).
    start = prior_sample((10, 2), sched, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.trajectory[0], start)


class _RangeCheckingSchedule(VPSchedule):
    """A VP schedule that fails loudly if queried outside [t_min, t_max]."""

    def _check(self, t):
        t = torch.as_tensor(t)
        assert float(t.min()) >= self.t_min and float(t.max()) <= self.t_max, float(t.min())

    def alpha(self, t):
        self._check(t)
        return super().alpha(t)

    def sigma(self, t):
        self._check(t)
        return super().sigma(t)

    def g(self, t):
        self._check(t)
        return super().g(t)

    def drift_coef(self, t):
        self._check(t)
        return super().drift_coef(t)


def test_samplers_never_query_schedule_outside_range():
    sched = _RangeCheckingSchedule(t_min=1e-2)
    p = GaussianMixture([1.0], [[0.0, 1.0]], 0.5, schedule=VPSchedule(t_min=1e-2))
    g = torch.Generator().manual_seed(6)
    sample_sde(p, (20, 2), schedule=sched, steps=30, generator=g)
    for method in ("dopri5", "heun", "euler"):
        sample_ode(p, (20, 2), schedule=sched, method=method, steps=30, generator=g)


def test_module_model_float32_sampling_and_progress():
    torch.manual_seed(0)
    model = ModuleScoreModel(MLPScoreNet(2, hidden=16, depth=1, time_embedding_dim=8))
    x = sample_sde(model, (8, 2), steps=5, dtype=torch.float32, progress=True)
    assert x.dtype == torch.float32 and x.shape == (8, 2)
    # An untrained (zero-output) eps-network has score 0: the ODE only rescales the prior.
    y = sample_ode(model, (8, 2), dtype=torch.float32, progress=True)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_zero_score_ode_has_closed_form():
    # With s = 0 the ODE is dx/dt = f(t) x, so x(t_min) = x(t_max) * alpha(t_min)/alpha(t_max).
    class Zero:
        def score(
            self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
        ) -> torch.Tensor:
            return torch.zeros_like(x)

    sched = VPSchedule()
    x_init = prior_sample((5, 3), sched, generator=torch.Generator().manual_seed(7))
    out = sample_ode(Zero(), None, schedule=sched, x_init=x_init, rtol=1e-9, atol=1e-9)
    ratio = sched.alpha(torch.tensor(sched.t_min)) / sched.alpha(torch.tensor(sched.t_max))
    torch.testing.assert_close(out, x_init * ratio, rtol=1e-6, atol=1e-8)
    assert math.isfinite(float(ratio))


def test_sampler_errors():
    p = _gm()
    with pytest.raises(ValueError, match=r"sample_sde: parameter 'shape' must be a sequence"):
        sample_sde(p, (5,))
    with pytest.raises(ValueError, match=r"sample_sde: parameter 'steps' must be an int >= 1"):
        sample_sde(p, (5, 2), steps=0)
    with pytest.raises(ValueError, match=r"sample_ode: unknown method='rk45'; allowed values"):
        sample_ode(p, (5, 2), method="rk45")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"sample_ode: parameter 'rtol' must be > 0"):
        sample_ode(p, (5, 2), rtol=0.0)
    with pytest.raises(TypeError, match=r"sample_ode: parameter 'model' must be a ScoreModel"):
        sample_ode(object(), (5, 2))  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"parameter 'x_init' must be a tensor of shape"):
        sample_sde(p, None, x_init=torch.zeros(3))
    with pytest.raises(TypeError, match=r"parameter 'dtype' must be a floating dtype"):
        sample_sde(p, (5, 2), dtype=torch.int64)
