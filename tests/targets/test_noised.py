"""Tests of dualdiff.targets.noised: exact noised targets by numerical convolution (MATH.md §3).

References are independent of the convolution code: the closed-form noised Gaussian
mixture (``GaussianMixture.noised``), the FU signed mixture (exact at every t by linearity),
and the closed-form Gaussian that the RU geometric target of two Gaussians is.
"""

from __future__ import annotations

import math

import pytest
import torch

from dualdiff import (
    GaussianMixture,
    GridQuadrature,
    KLConstrainedProblem,
    NonFiniteError,
    VPSchedule,
)
from dualdiff.targets.noised import ExactNoisedTarget, ScoreErrorProfile, composed_score_error

F64 = torch.float64
# Times spanning the three regimes: t = 0 (clean), Gauss-Hermite (sigma/alpha < 1.25 h) and
# the grid convolution; the switch is near t = 0.01 for the grids below.
TIMES = [0.0, 1e-4, 2e-3, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0]
# The trapezoid/Gauss-Hermite errors are ~1e-13 (measured); 1e-6 is the accuracy the
# benchmark needs, with margin for float64 round-off in sums over ~1e5 grid points.
TOL = 1e-6


@pytest.fixture(scope="module")
def mix2d() -> GaussianMixture:
    return GaussianMixture(
        [0.5, 0.3, 0.2],
        [[-2.0, 0.0], [1.5, 1.5], [1.5, -1.5]],
        [[[0.6, 0.2], [0.2, 0.4]], [[0.4, 0.0], [0.0, 0.4]], [[0.3, -0.1], [-0.1, 0.5]]],
        dtype=F64,
    )


@pytest.fixture(scope="module")
def exact2d(mix2d: GaussianMixture) -> ExactNoisedTarget:
    return ExactNoisedTarget(mix2d)


def _noised_sample(p: GaussianMixture, t: float, n: int, seed: int) -> torch.Tensor:
    return p.noised(t).sample(n, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- Gaussian mixtures
@pytest.mark.parametrize("t", TIMES)
def test_mixture_2d_matches_closed_form(mix2d, exact2d, t):
    x = _noised_sample(mix2d, t, 400, seed=1)
    assert torch.allclose(exact2d.log_prob(x, t), mix2d.log_prob(x, t), rtol=0, atol=TOL)
    assert torch.allclose(exact2d.score(x, t), mix2d.score(x, t), rtol=0, atol=TOL)


def test_mixture_1d_matches_closed_form():
    p = GaussianMixture([0.3, 0.7], [[-1.5], [2.0]], [[0.2], [0.6]], dtype=F64)
    exact = ExactNoisedTarget(p)
    for t in TIMES:
        x = _noised_sample(p, t, 300, seed=2)
        assert torch.allclose(exact.log_prob(x, t), p.log_prob(x, t), rtol=0, atol=TOL)
        assert torch.allclose(exact.score(x, t), p.score(x, t), rtol=0, atol=TOL)


def test_per_point_times_match_closed_form(mix2d, exact2d):
    gen = torch.Generator().manual_seed(3)
    t = torch.tensor(TIMES, dtype=F64).repeat(20)  # every regime in one call
    x = 2.0 * torch.randn(t.shape[0], 2, dtype=F64, generator=gen)
    assert torch.allclose(exact2d.score(x, t), mix2d.score(x, t), rtol=0, atol=TOL)
    assert torch.allclose(exact2d.log_prob(x, t), mix2d.log_prob(x, t), rtol=0, atol=TOL)


def test_batch_shape_and_dtype_preserved(mix2d, exact2d):
    x = torch.randn(3, 4, 2, dtype=torch.float32)
    s = exact2d.score(x, 0.4)
    assert s.shape == x.shape and s.dtype == torch.float32
    lp = exact2d.log_prob(x, 0.4)
    assert lp.shape == (3, 4) and lp.dtype == torch.float32
    ref = mix2d.score(x.to(F64), 0.4)
    assert torch.allclose(s.to(F64), ref, atol=1e-5)  # float32 round-off of O(1) scores


def test_underflowing_rows_use_log_space(monkeypatch):
    # Two modes 40 apart: between them the tabulated density is ~exp(-800), so the rescaled
    # matrix product underflows and the exact log-sum-exp path must take over.
    p = GaussianMixture([0.5, 0.5], [[-20.0], [20.0]], 0.25, dtype=F64)
    exact = ExactNoisedTarget(p)
    rows: list[int] = []
    original = exact._log_space

    def spy(u, *args, **kwargs):
        rows.append(u.shape[0])
        return original(u, *args, **kwargs)

    monkeypatch.setattr(exact, "_log_space", spy)
    t = 0.05
    x = torch.tensor([[0.0], [3.0], [-7.5], [19.0]], dtype=F64)
    lp = exact.log_prob(x, t)
    assert sum(rows) >= 1  # x = 0 (log p_t ~ -714) underflows the rescaled product
    assert torch.allclose(lp, p.log_prob(x, t), rtol=1e-10, atol=0)
    assert torch.allclose(exact.score(x, t), p.score(x, t), rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------------- closed-form targets
@pytest.fixture(scope="module")
def ring():
    k = 8
    ang = torch.arange(k, dtype=F64) * 2 * math.pi / k
    means = torch.stack([4.0 * torch.cos(ang), 4.0 * torch.sin(ang)], -1)
    p0 = GaussianMixture(torch.ones(k, dtype=F64), means, 0.25)
    return p0, p0.component(0)


def test_signed_mixture_target_is_exact_at_every_t(ring):
    p0, q = ring
    sol = KLConstrainedProblem(p0, [q], bounds=[3.0], direction="forward").solve_dual()
    assert float(sol.multipliers[0]) > 0.05  # the constraint is active: a real subtraction
    exact = ExactNoisedTarget(sol.target)
    for t in TIMES:
        x = _noised_sample(p0, t, 300, seed=4)
        ref_lp = sol.target.log_prob(x, t) if t > 0 else sol.target.log_prob(x)
        assert torch.allclose(exact.log_prob(x, t), ref_lp, rtol=0, atol=TOL)
        assert torch.allclose(exact.score(x, t), sol.target.score(x, t), rtol=0, atol=TOL)


def _gaussian_ru():
    """RU with p0 = N(0, 1), q = N(1, 2): the target p0^a q^-c is the Gaussian N(m, 1/P)."""
    p0 = GaussianMixture([1.0], [[0.0]], 1.0, dtype=F64)
    q = GaussianMixture([1.0], [[1.0]], 2.0, dtype=F64)
    sol = KLConstrainedProblem(p0, [q], bounds=[1.5], direction="reverse").solve_dual()
    tgt = sol.target
    a, c = tgt.power, float(tgt.coefficients[0])
    prec = a / 1.0 - c / 2.0
    mean = (a * 0.0 / 1.0 - c * 1.0 / 2.0) / prec
    return p0, q, tgt, a, c, prec, mean


def _gaussian_at(mean: float, var: float, t: float, sched: VPSchedule) -> GaussianMixture:
    tt = torch.tensor(t, dtype=F64)
    al, sg = float(sched.alpha(tt)), float(sched.sigma(tt))
    return GaussianMixture([1.0], [[al * mean]], al**2 * var + sg**2, dtype=F64)


def test_geometric_target_matches_closed_form_gaussian():
    p0, _, tgt, a, _, prec, mean = _gaussian_ru()
    assert a > 1.5  # a strongly sharpened target, not a near-identity
    exact = ExactNoisedTarget(tgt)
    x = torch.linspace(-4.0, 4.0, 41, dtype=F64)[:, None]
    for t in TIMES:
        ref = _gaussian_at(mean, 1.0 / prec, t, p0.schedule)
        assert torch.allclose(exact.log_prob(x, t), ref.log_prob(x), rtol=0, atol=TOL)
        assert torch.allclose(exact.score(x, t), ref.score(x), rtol=0, atol=TOL)


def test_custom_density_needs_explicit_grid(mix2d):
    class Wrapped:  # a normalised density that does not expose its mixture or its score
        dim = 2

        def log_prob(self, x):
            return mix2d.log_prob(x)

    with pytest.raises(TypeError, match="parameter 'grid' is required"):
        ExactNoisedTarget(Wrapped())
    with pytest.raises(ValueError, match="needs explicit bounds"):
        ExactNoisedTarget(Wrapped(), grid=GridQuadrature(resolution=8.0))
    exact = ExactNoisedTarget(
        Wrapped(),
        schedule=mix2d.schedule,
        grid=GridQuadrature(bounds=[(-8.0, 7.0), (-7.0, 7.0)], points_per_dim=301),
    )
    x = _noised_sample(mix2d, 0.2, 200, seed=5)
    for t in (0.0, 1e-3, 0.2):  # t = 0 and Gauss-Hermite use autograd of log_prob
        assert torch.allclose(exact.score(x, t), mix2d.score(x, t), rtol=0, atol=TOL)


@pytest.mark.parametrize("t", [0.0, 1e-3, 0.3])
def test_score_is_gradient_of_log_prob(exact2d, t):
    # Posterior-mean identity (score) vs autograd of the convolved log-density.
    x = torch.tensor([[0.3, -0.7], [1.2, 1.9], [-2.5, 0.4]], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(exact2d.log_prob(x, t).sum(), x)
    assert torch.allclose(g, exact2d.score(x.detach(), t), rtol=0, atol=1e-8)


def test_switch_time_matches_threshold(exact2d):
    sched = exact2d.schedule
    ts = torch.tensor(exact2d.t_switch, dtype=F64)
    ratio = float(sched.sigma(ts) / sched.alpha(ts))
    assert ratio == pytest.approx(exact2d.min_kernel_ratio * exact2d.spacing, rel=1e-9)
    assert exact2d.clean_mass == pytest.approx(1.0, abs=1e-10)


def test_sharpened_target_gets_finer_grid(ring):
    p0, q = ring
    base = ExactNoisedTarget(p0)
    b = float(KLConstrainedProblem(p0, [q], bounds=[1.0]).constraint_values(p0)[0][0]) + 20.0
    tgt = KLConstrainedProblem(p0, [q], bounds=[b]).solve_dual().target
    assert tgt.power > 1.0
    assert ExactNoisedTarget(tgt).spacing < base.spacing


# ---------------------------------------------------------------------- validation
def test_rejects_bad_inputs(mix2d, exact2d):
    p3 = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], 1.0)
    with pytest.raises(ValueError, match=r"d in \(1, 2\), got d=3"):
        ExactNoisedTarget(p3)
    with pytest.raises(TypeError, match="must have a normalised log_prob"):
        ExactNoisedTarget(object())
    with pytest.raises(TypeError, match=r"must be a dualdiff\.GridQuadrature"):
        ExactNoisedTarget(mix2d, grid="fine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'min_kernel_ratio' must be > 0"):
        ExactNoisedTarget(mix2d, min_kernel_ratio=0.0)
    with pytest.raises(ValueError, match="'hermite_nodes' must be an int in"):
        ExactNoisedTarget(mix2d, hermite_nodes=1)
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1.0\]"):
        exact2d.score(x, 1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1.0\]"):
        exact2d.log_prob(x, -0.1)
    with pytest.raises(NonFiniteError, match="'t' contains 1 non-finite"):
        exact2d.score(x, float("nan"))
    with pytest.raises(ValueError, match="broadcastable to"):
        exact2d.score(x, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        exact2d.score(torch.zeros(4, 3, dtype=F64), 0.1)
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        exact2d.score([[0.0, 0.0]], 0.1)  # type: ignore[arg-type]


def test_rejects_unnormalised_target(mix2d):
    class Unnormalised:
        p0 = mix2d
        dim = 2

        def log_prob(self, x):
            return mix2d.log_prob(x) + 0.1

    with pytest.raises(ValueError, match=r"integrates to 1\.105"):
        ExactNoisedTarget(Unnormalised())


# ---------------------------------------------------------------------- composed score error
def test_composed_error_of_gaussian_ru_matches_closed_form():
    # Every score is linear in x, so E||s_comp - s_exact||^2 under N(M, V) is
    # (A M + B)^2 + A^2 V with s_comp - s_exact = A x + B, in closed form.
    p0, _, tgt, a, c, prec, mean = _gaussian_ru()
    sched = p0.schedule
    ts = [0.0, 0.1, 0.3, 0.6]
    n = 4000
    prof = composed_score_error(tgt, ts, n, generator=torch.Generator().manual_seed(6))
    assert isinstance(prof, ScoreErrorProfile) and prof.n == n
    for k, t in enumerate(ts):
        tt = torch.tensor(t, dtype=F64)
        al, s2 = float(sched.alpha(tt)), float(sched.sigma(tt)) ** 2
        v0, vq, vt = al**2 + s2, 2 * al**2 + s2, al**2 / prec + s2
        # composed: a * (-(x)/v0) - c * (-(x - al)/vq); exact: -(x - al*mean)/vt
        slope = -a / v0 + c / vq + 1.0 / vt
        icpt = -c * al / vq - al * mean / vt
        m_t = al * mean
        ref = (slope * m_t + icpt) ** 2 + slope**2 * vt
        if t == 0.0:
            assert float(prof.mse[k]) < 1e-20  # the composed score is exact at t = 0
            continue
        assert ref > 1e-3  # the composed field is measurably wrong at this t
        # 5 standard errors: a deliberate, seed-independent statistical tolerance.
        assert abs(float(prof.mse[k]) - ref) < 5 * float(prof.stderr[k]) + 1e-9
        assert float(prof.relative[k]) == pytest.approx(float(prof.mse[k] / prof.exact_sq_norm[k]))


def test_composed_error_vanishes_for_exact_fu_target(ring):
    p0, q = ring
    sol = KLConstrainedProblem(p0, [q], bounds=[3.0], direction="forward").solve_dual()
    prof = composed_score_error(
        sol.target, [0.0, 0.05, 0.4, 1.0], 300, generator=torch.Generator().manual_seed(7)
    )
    assert float(prof.mse.max()) < 1e-12  # FU is exact under noising: only quadrature error


def test_composed_error_validation(mix2d, exact2d):
    with pytest.raises(ValueError, match="'n' must be an int >= 2"):
        composed_score_error(mix2d, [0.1], 1, exact=exact2d)
    with pytest.raises(ValueError, match=r"'ts' must lie in \[0, 1.0\]"):
        composed_score_error(mix2d, [0.1, 2.0], 10, exact=exact2d)
    with pytest.raises(ValueError, match="at least one time"):
        composed_score_error(mix2d, [], 10, exact=exact2d)
    with pytest.raises(TypeError, match="'exact' must be an ExactNoisedTarget"):
        composed_score_error(mix2d, [0.1], 10, exact=mix2d)  # type: ignore[arg-type]
