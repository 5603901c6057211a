"""One ScoreModel contract suite over a table of every implementation (STYLE.md §8).

Each row of ``IMPLEMENTATIONS`` builds a score model for a (dtype, device) pair and states
what it supports; every test below runs over every row. The contract:

* ``score(x, t)`` returns a finite tensor shaped like ``x`` for batches ``(n, *event)`` (each
  row states its event shape: ``(d,)`` for densities, ``(C, H, W)`` for image UNets);
* dtype float32/float64 and the device are preserved where the model supports them;
* gradients flow to ``x`` (autograd through the score, checked by finite differences);
* ``t`` as a float, a 0-d tensor or a per-point ``(n,)`` tensor gives the same result, and
  distinct per-point times equal separate calls;
* ``t = 0`` and a tiny ``t`` agree (continuity at the clean end);
* where ``log_prob`` exists, the score is its gradient (at ``t = 0``, and at ``t > 0`` where
  the model's noised ``log_prob(x, t)`` is exact).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from dualdiff import (
    GaussianMixture,
    GridQuadrature,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
    ScoreModel,
)
from dualdiff.targets.noised import ExactNoisedTarget

F32, F64 = torch.float32, torch.float64
HAS_CUDA = torch.cuda.is_available()
HAS_MODULE_ADAPTER = importlib.util.find_spec("dualdiff.models.module_adapter") is not None
HAS_DIFFUSERS = all(importlib.util.find_spec(m) is not None for m in ("diffusers", "peft"))



# ---------------------------------------------------------------------- the table
def _p0(dtype: torch.dtype = F64, device: str = "cpu") -> GaussianMixture:
    return GaussianMixture(
        [0.5, 0.3, 0.2],
        [[-2.0, 0.0], [1.5, 1.5], [1.5, -1.5]],
        [[[0.6, 0.2], [0.2, 0.4]], [[0.4, 0.0], [0.0, 0.4]], [[0.3, -0.1], [-0.1, 0.5]]],
        dtype=F64,
    ).to(dtype=dtype, device=device)


@functools.cache
def _problem_targets() -> dict[str, Any]:
    """Closed-form targets with active constraints (levels set relative to p0)."""
    p0 = _p0()
    q = p0.component(2)
    kl_p0_q = float(KLConstrainedProblem(p0, [q], bounds=[1.0]).constraint_values(p0)[0][0])
    kl_q_p0 = float(
        KLConstrainedProblem(p0, [q], bounds=[1.0], direction="forward").constraint_values(p0)[0][0]
    )
    lu_log = LikelihoodConstrainedProblem(p0, [q], bounds=[0.0])
    e_log = float(lu_log.constraint_values(p0)[0][0])
    lu_den = LikelihoodConstrainedProblem(p0, [q], bounds=[0.0], likelihood="density")
    e_den = float(lu_den.constraint_values(p0)[0][0])
    sols = {
        "ru_geometric": KLConstrainedProblem(p0, [q], bounds=[kl_p0_q + 1.0]).solve_dual(),
        "fu_signed_mixture": KLConstrainedProblem(
            p0, [q], bounds=[kl_q_p0 + 0.5], direction="forward"
        ).solve_dual(),
        "lu_geometric_log": LikelihoodConstrainedProblem(
            p0, [q], bounds=[e_log - 1.0]
        ).solve_dual(),
        "lu_geometric_density": LikelihoodConstrainedProblem(
            p0, [q], bounds=[0.5 * e_den], likelihood="density"
        ).solve_dual(),
        # A user likelihood callable (here log q again, so the target equals the "log" one).
        "lu_geometric_callable": LikelihoodConstrainedProblem(
            p0, [q], bounds=[e_log - 1.0], likelihood=lambda x, i: q.log_prob(x)
        ).solve_dual(),
    }
    for name, sol in sols.items():
        # Guard the table itself: every target must be a genuine (active) reweighting.
        assert float(sol.multipliers[0]) > 1e-3, name
    return {name: sol.target for name, sol in sols.items()}


@functools.cache
def _exact_noised(source: str, device: str) -> ExactNoisedTarget:
    # A coarser grid than the default keeps construction fast; accuracy is tested elsewhere.
    grid = GridQuadrature(extent=7.0, resolution=6.0)
    base = _p0(F64, device) if source == "mixture" else _problem_targets()[source]
    return ExactNoisedTarget(base, grid=grid)


@functools.cache
def _mlp(dtype: torch.dtype, device: str) -> Any:
    from dualdiff.models.module_adapter import MLPScoreNet, ModuleScoreModel

    torch.manual_seed(0)
    net = MLPScoreNet(dim=2, hidden=32, depth=2)
    # The read-out is zero-initialised (eps = 0, score = 0): randomise it so that the score
    # depends on x and the gradient checks can fail.
    torch.nn.init.normal_(net.output.weight, std=0.5)
    torch.nn.init.normal_(net.output.bias, std=0.5)
    return ModuleScoreModel(net.to(dtype=dtype, device=device), prediction="eps")


@functools.cache
def _diffusers(kind: str, dtype: torch.dtype, device: str) -> Any:
    """Tiny random-config diffusers UNets (8x8, one channel) behind the adapter."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel

    from dualdiff.adapters.diffusers import DiffusersScoreModel

    torch.manual_seed(0)  # the same float32 weights for every (dtype, device)
    common: dict[str, Any] = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
    )
    if kind == "class":
        unet = UNet2DModel(
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=4,
            num_class_embeds=4,
            **common,
        )
        return DiffusersScoreModel(
            unet.to(dtype=dtype, device=device), DDPMScheduler(clip_sample=False)
        )
    cond_unet = UNet2DConditionModel(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        **common,
    )
    null = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    return DiffusersScoreModel(
        cond_unet.to(dtype=dtype, device=device),
        DDIMScheduler(clip_sample=False, prediction_type="v_prediction"),
        null_embedding=null,
    )


@dataclass(frozen=True)
class Impl:
    """A row of the contract table.

    ``build(dtype, device)`` returns the model; ``dtypes``/``devices`` are those it supports
    (inputs of those dtypes give outputs of the same dtype); ``log_prob`` says whether a
    normalised clean ``log_prob(x)`` exists; ``noised_log_prob`` whether ``log_prob(x, t)`` is
    the exact noised density at ``t > 0`` (so the score must be its gradient there);
    ``event_shape`` is the shape of one point (batches are ``(n, *event_shape)``).
    """

    name: str
    build: Callable[[torch.dtype, str], Any]
    dtypes: tuple[torch.dtype, ...]
    devices: tuple[str, ...]
    log_prob: bool
    noised_log_prob: bool
    #: Tests known to fail for this row (marked strict xfail, so a fix turns them red->green
    #: and then the entry must be removed).
    known_failures: tuple[str, ...] = ()
    event_shape: tuple[int, ...] = (2,)

    def __str__(self) -> str:
        return self.name


def _target_row(name: str, noised: bool, known_failures: tuple[str, ...] = ()) -> Impl:
    # Problems compute in float64 on the CPU, so their targets are float64/CPU models.
    return Impl(
        name,
        lambda dt, dev: _problem_targets()[name],
        (F64,),
        ("cpu",),
        True,
        noised,
        known_failures,
    )


IMPLEMENTATIONS: list[Any] = [
    Impl("gaussian_mixture", lambda dt, dev: _p0(dt, dev), (F32, F64), ("cpu", "cuda"), True, True),
    _target_row("ru_geometric", noised=False),  # composed score at t > 0: no noised log_prob
    _target_row("lu_geometric_log", noised=False),
    _target_row("lu_geometric_density", noised=False),
    _target_row("lu_geometric_callable", noised=False),
    _target_row("fu_signed_mixture", noised=True),  # exact at every t
    # ExactNoisedTarget computes in float64 and returns the input's dtype.
    Impl(
        "exact_noised_ru",
        lambda dt, dev: _exact_noised("ru_geometric", dev),
        (F32, F64),
        ("cpu",),
        True,
        True,
    ),
    Impl(
        "exact_noised_mixture",
        lambda dt, dev: _exact_noised("mixture", dev),
        (F32, F64),
        ("cpu", "cuda"),
        True,
        True,
    ),
    pytest.param(
        Impl("module_mlp", _mlp, (F32, F64), ("cpu", "cuda"), False, False),
        marks=pytest.mark.skipif(
            not HAS_MODULE_ADAPTER, reason="dualdiff.models.module_adapter is not available"
        ),
        id="module_mlp",
    ),
    *(
        pytest.param(
            Impl(
                name,
                functools.partial(_diffusers, kind),
                (F32, F64),
                ("cpu", "cuda"),
                False,
                False,
                event_shape=(1, 8, 8),
            ),
            marks=pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers/peft not installed"),
            id=name,
        )
        for name, kind in (("diffusers_unet2d", "class"), ("diffusers_unet2d_condition", "text"))
    ),
]


def _points(
    n: int,
    dtype: torch.dtype = F64,
    device: str = "cpu",
    seed: int = 0,
    event: tuple[int, ...] = (2,),
) -> torch.Tensor:
    """``n`` test points of shape ``event``: the 2-D cloud around the mixtures, else N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    if event == (2,):
        x = torch.tensor([[0.5, 0.0]], dtype=F64) + 1.8 * torch.randn(n, 2, dtype=F64, generator=g)
    else:
        x = torch.randn(n, *event, dtype=F64, generator=g)
    return x.to(dtype=dtype, device=device)


def _model(impl: Impl, dtype: torch.dtype = F64, device: str = "cpu") -> Any:
    if dtype not in impl.dtypes:
        pytest.skip(f"{impl.name} supports dtypes {impl.dtypes}")
    if device not in impl.devices:
        pytest.skip(f"{impl.name} supports devices {impl.devices}")
    return impl.build(dtype, device)


@pytest.fixture(params=IMPLEMENTATIONS, ids=str)
def impl(request) -> Impl:
    row = request.param
    if request.node.originalname in row.known_failures:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"known bug in {row.name}"))
    return row


# ---------------------------------------------------------------------- the contract
def test_is_a_score_model(impl):
    assert isinstance(_model(impl), ScoreModel)


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("t", [0.0, 0.4])
def test_output_shape_and_finite(impl, n, t):
    model = _model(impl)
    x = _points(n, event=impl.event_shape)
    s = model.score(x, t)
    assert s.shape == x.shape
    assert bool(torch.isfinite(s).all())
    assert torch.equal(model.score(x, t, None), s)  # cond=None is accepted and ignored


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_dtype_preserved(impl, dtype):
    model = _model(impl, dtype)
    x = _points(6, dtype, event=impl.event_shape)
    for t in (0.0, 0.3):
        s = model.score(x, t)
        assert s.dtype == dtype
        if dtype == F32 and F64 in impl.dtypes:
            ref = impl.build(F64, "cpu").score(x.to(F64), t)
            # float32 round-off on O(1)-O(10) scores (and float32 network weights).
            assert torch.allclose(s.to(F64), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA"))],
)
def test_device_preserved(impl, device):
    model = _model(impl, F64, device)
    x = _points(6, F64, device, event=impl.event_shape)
    s = model.score(x, 0.3)
    assert s.device.type == device
    if device != "cpu":
        ref = impl.build(F64, "cpu").score(x.cpu(), 0.3)
        assert torch.allclose(s.cpu(), ref, rtol=1e-9, atol=1e-9)  # same float64 formula


@pytest.mark.parametrize("t", [0.0, 0.3])
def test_gradients_flow_to_x(impl, t):
    model = _model(impl)
    x = _points(5, seed=1, event=impl.event_shape).requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(x.shape, dtype=F64, generator=g)
    w = torch.randn(x.shape, dtype=F64, generator=g)
    (grad,) = torch.autograd.grad((model.score(x, t) * w).sum(), x)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0
    # Directional derivative <grad, v> against central finite differences (float64).
    eps = 1e-5
    with torch.no_grad():
        plus = (model.score(x + eps * v, t) * w).sum()
        minus = (model.score(x - eps * v, t) * w).sum()
    fd = float(plus - minus) / (2 * eps)
    # Central differences: O(eps^2) truncation plus ~1e-16/eps round-off.
    assert float((grad * v).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.7])
def test_time_forms_agree(impl, t):
    model = _model(impl)
    x = _points(6, seed=3, event=impl.event_shape)
    ref = model.score(x, t)
    for tt in (torch.tensor(t, dtype=F64), torch.full((6,), t, dtype=F64)):
        # GaussianMixture takes another (eigendecomposition) path for per-point times.
        assert torch.allclose(model.score(x, tt), ref, rtol=1e-10, atol=1e-10)


def test_per_point_times_equal_separate_calls(impl):
    model = _model(impl)
    x = _points(5, seed=4, event=impl.event_shape)
    times = torch.tensor([0.0, 0.01, 0.2, 0.5, 1.0], dtype=F64)
    got = model.score(x, times)
    for i, t in enumerate(times.tolist()):
        ref = model.score(x[i : i + 1], t)
        assert torch.allclose(got[i : i + 1], ref, rtol=1e-10, atol=1e-10)


def test_continuity_at_t0(impl):
    model = _model(impl)
    x = _points(6, seed=5, event=impl.event_shape)
    s0 = model.score(x, 0.0)
    s_tiny = model.score(x, 1e-7)
    # sigma_t^2 ~ beta_min * t = 1e-8 changes the scores by ~1e-8 / variance.
    assert torch.allclose(s_tiny, s0, rtol=1e-5, atol=1e-5)


def _autograd_score(model: Any, x: torch.Tensor, t: float | None) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    lp = model.log_prob(x) if t is None else model.log_prob(x, t)
    assert lp.shape == (x.shape[0],)
    (g,) = torch.autograd.grad(lp.sum(), x)
    return g


def test_score_is_gradient_of_log_prob_at_t0(impl):
    if not impl.log_prob:
        pytest.skip(f"{impl.name} has no log_prob")
    model = _model(impl)
    x = _points(6, seed=6, event=impl.event_shape)
    assert torch.allclose(model.score(x, 0.0), _autograd_score(model, x, None), atol=1e-8)


@pytest.mark.parametrize("t", [0.05, 0.5])
def test_score_is_gradient_of_noised_log_prob(impl, t):
    if not impl.noised_log_prob:
        pytest.skip(f"{impl.name} has no exact noised log_prob(x, t)")
    model = _model(impl)
    x = _points(6, seed=7, event=impl.event_shape)
    assert torch.allclose(model.score(x, t), _autograd_score(model, x, t), atol=1e-8)


def test_table_covers_every_target_kind():
    # Guard against the table silently losing a row (e.g. a refactor of the targets).
    names = {getattr(p, "values", [p])[0].name for p in IMPLEMENTATIONS}
    assert {
        "gaussian_mixture",
        "ru_geometric",
        "lu_geometric_log",
        "lu_geometric_density",
        "lu_geometric_callable",
        "fu_signed_mixture",
        "exact_noised_ru",
        "module_mlp",
        "diffusers_unet2d",
        "diffusers_unet2d_condition",
    } <= names
