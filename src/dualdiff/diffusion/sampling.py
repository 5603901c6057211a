r"""Samplers for score models: reverse-time SDE (Euler–Maruyama) and probability-flow ODE.

For the forward SDE :math:`dx = f(t)x\,dt + g(t)\,dW` (Song et al., 2021) and a score model
:math:`s_\theta(x, t)\approx\nabla_x\log p_t(x)`:

.. math::
    \text{reverse SDE:}\quad dx = \big[f(t)x - g(t)^2 s_\theta(x,t)\big]dt + g(t)\,d\bar W,
    \qquad
    \text{probability-flow ODE:}\quad \frac{dx}{dt} = f(t)x - \tfrac12 g(t)^2 s_\theta(x,t),

integrated backwards from :math:`t_{\max}` to :math:`t_{\min}` starting from the prior
:math:`x_{t_{\max}}\sim\mathcal N(0, \sigma_{t_{\max}}^2 I)`. The schedule is never queried
outside :math:`[t_{\min}, t_{\max}]`; the samples are draws of the model's marginal at
:math:`t_{\min}` (no final denoising step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, get_args, overload

import torch

from .._validation import check_choice, check_finite, check_positive
from ..models.interface import check_score_model, resolve_schedule
from ..models.parametrization import clamp_time
from ..models.protocol import ScoreModel, check_model_dtype, model_dtype
from ..models.schedule import NoiseSchedule

__all__ = [
    "ODEMethod",
    "SamplerOutput",
    "prior_sample",
    "probability_flow_drift",
    "reverse_sde_mean",
    "sample_ode",
    "sample_sde",
]

ODEMethod = Literal["dopri5", "dopri8", "bosh3", "adaptive_heun", "euler", "heun"]
_ODE_METHODS: tuple[str, ...] = get_args(ODEMethod)
_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun")


class SamplerOutput(NamedTuple):
    """Samples with their trajectory (returned when ``return_trajectory=True``).

    Attributes
    ----------
    samples
        Final samples at ``t_min``, shape ``(n, *event)``.
    trajectory
        States at ``times``, shape ``(len(times), n, *event)``; ``trajectory[0]`` is the prior
        draw at ``t_max`` and ``trajectory[-1]`` equals ``samples``.
    times
        Decreasing times from ``t_max`` to ``t_min``, shape ``(len(times),)``.
    """

    samples: torch.Tensor
    trajectory: torch.Tensor
    times: torch.Tensor


def _check_shape(shape: Any, owner: str) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    if (
        not isinstance(shape, (Sequence, torch.Size))
        or len(shape) < 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise ValueError(
            f"{owner}: parameter 'shape' must be a sequence (n, *event) of positive ints with "
            f"at least one event dimension, e.g. (1000, 2), got {shape!r}"
        )
    return tuple(shape)


def _check_steps(steps: Any, owner: str) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{owner}: parameter 'steps' must be an int >= 1, got {steps!r}")
    return steps


def _scalar(fn: Any, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(fn(t)).to(dtype)


def prior_sample(
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Draw from the sampler prior :math:`\mathcal N(0, \sigma_{t_{\max}}^2 I)`.

    Parameters
    ----------
    shape
        ``(n, *event)``.
    schedule
        Noise schedule (gives :math:`\sigma_{t_{\max}}`).
    generator
        Random generator of the draw.
    dtype
        Dtype of the draw.
    device
        Device of the draw.

    Returns
    -------
    torch.Tensor
        Shape ``shape``.
    """
    t_max = torch.tensor(float(schedule.t_max), dtype=dtype, device=device)
    sigma_t = _scalar(schedule.sigma, t_max, dtype)
    z = torch.randn(tuple(shape), dtype=dtype, device=device, generator=generator)
    return sigma_t * z


def probability_flow_drift(
    model: ScoreModel, x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, cond: Any = None
) -> torch.Tensor:
    r"""Velocity of the probability-flow ODE, :math:`f(t)x - \tfrac12 g(t)^2 s_\theta(x,t)`.

    Parameters
    ----------
    model
        Score model.
    x
        Shape ``(n, *event)``.
    t
        0-d tensor; clamped into ``[t_min, t_max]``.
    schedule
        Noise schedule.
    cond
        Optional condition passed to ``model.score``.

    Returns
    -------
    torch.Tensor
        Shape like ``x``.
    """
    t = clamp_time(t, schedule)
    score = model.score(x, t, cond) if cond is not None else model.score(x, t)
    f = _scalar(schedule.drift_coef, t, x.dtype)
    g2 = _scalar(schedule.g, t, x.dtype) ** 2
    return f * x - 0.5 * g2 * score.to(x.dtype)


def _progress(progress: bool, total: int | None, desc: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm  # local import: only needed with progress=True

    # disable=None: tqdm's convention, no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, leave=False, disable=None)


def _start(
    shape: Any,
    x_init: torch.Tensor | None,
    schedule: NoiseSchedule,
    generator: torch.Generator | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    owner: str,
    model: Any = None,
) -> torch.Tensor:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{owner}: parameter 'dtype' must be a floating dtype, got {dtype}")
    if dtype is not None:
        check_model_dtype(model, dtype, "dtype", owner)
    if x_init is not None:
        if not isinstance(x_init, torch.Tensor) or x_init.ndim < 2:
            raise ValueError(
                f"{owner}: parameter 'x_init' must be a tensor of shape (n, *event), got "
                f"{getattr(x_init, 'shape', type(x_init).__name__)}"
            )
        check_finite(x_init, "x_init", owner)
        if dtype is None:
            check_model_dtype(model, x_init.dtype, "x_init", owner)
        return x_init.to(dtype=dtype or x_init.dtype, device=device or x_init.device)
    return prior_sample(
        _check_shape(shape, owner),
        schedule,
        generator=generator,
        dtype=dtype or model_dtype(model) or torch.float64,
        device=device,
    )


def reverse_sde_mean(x: torch.Tensor, score: Any, f: Any, g2: Any, h: Any) -> torch.Tensor:
    r"""Mean of one Euler–Maruyama step of the reverse SDE, :math:`x - h\,[f x - g^2 s]`.

    The one owner of the step: :func:`sample_sde` and the engine's sampler Lagrangian
    (:class:`~dualdiff.engine.SamplerLagrangian`) both call it. ``score`` is shaped like ``x``;
    ``f`` (drift coefficient), ``g2`` (squared diffusion coefficient) and ``h`` (step size) are
    scalars or broadcastable tensors.
    """
    return x - h * (f * x - g2 * score)


@overload
def sample_sde(
    model: ScoreModel,
    shape: Sequence[int] | None,
    *,
    schedule: NoiseSchedule | None = None,
    steps: int = 1000,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cond: Any = None,
    x_init: torch.Tensor | None = None,
    progress: bool = False,
    return_trajectory: Literal[False] = False,
) -> torch.Tensor: ...


@overload
def sample_sde(
    model: ScoreModel,
    shape: Sequence[int] | None,
    *,
    schedule: NoiseSchedule | None = None,
    steps: int = 1000,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cond: Any = None,
    x_init: torch.Tensor | None = None,
    progress: bool = False,
    return_trajectory: Literal[True],
) -> SamplerOutput: ...


def sample_sde(
    model: ScoreModel,
    shape: Sequence[int] | None,
    *,
    schedule: NoiseSchedule | None = None,
    steps: int = 1000,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cond: Any = None,
    x_init: torch.Tensor | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
) -> torch.Tensor | SamplerOutput:
    r"""Sample with the reverse-time SDE and the Euler–Maruyama scheme.

    On the uniform grid :math:`t_{\max} = t_0 > t_1 > \dots > t_K = t_{\min}`,
    :math:`h = (t_{\max}-t_{\min})/K`,

    .. math::
        x_{k+1} = x_k - h\big[f(t_k)x_k - g(t_k)^2 s_\theta(x_k, t_k)\big]
                  + g(t_k)\sqrt h\, z_k,\qquad z_k\sim\mathcal N(0, I),

    from :math:`x_0\sim\mathcal N(0,\sigma_{t_{\max}}^2 I)`. The weak error is
    :math:`O(h)`, so use many steps (the default 1000 suits the VP schedule with
    :math:`\beta_{\max}=20`).

    Parameters
    ----------
    model
        Score model, called as ``model.score(x, t[, cond])`` with ``t`` a 0-d tensor.
    shape
        ``(n, *event)`` of the output; ignored (may be ``None``) when ``x_init`` is given.
    schedule
        Noise schedule; default ``model.schedule`` or :class:`~dualdiff.models.VPSchedule`.
    steps
        Number of Euler–Maruyama steps ``K``.
    generator
        Random generator for the prior draw and the Brownian increments.
    dtype
        Dtype of the samples (default: that of ``x_init``, else the model's parameters, else
        float64 for analytic models).
    device
        Device of the samples (default: the CPU, or that of ``x_init``).
    cond
        Optional condition passed to ``model.score``.
    x_init
        Optional starting point at ``t_max`` instead of a prior draw, shape ``(n, *event)``.
    progress
        Show a tqdm progress bar.
    return_trajectory
        Also return every state and time (:class:`SamplerOutput`).

    Returns
    -------
    torch.Tensor or SamplerOutput
        Samples of shape ``(n, *event)`` (computed without gradient tracking), or a
        :class:`SamplerOutput` with a trajectory of shape ``(steps + 1, n, *event)``.
    """
    owner = "sample_sde"
    check_score_model(model, "model", owner)
    sched = resolve_schedule(model, schedule, owner)
    steps = _check_steps(steps, owner)
    x = _start(shape, x_init, sched, generator, dtype, device, owner, model)
    times = torch.linspace(float(sched.t_max), float(sched.t_min), steps + 1, dtype=x.dtype,
                           device=x.device)
    traj = [x] if return_trajectory else []
    bar = _progress(progress, steps, owner)
    with torch.no_grad():
        for k in range(steps):
            t = clamp_time(times[k], sched)
            h = times[k] - times[k + 1]
            score = model.score(x, t, cond) if cond is not None else model.score(x, t)
            f = _scalar(sched.drift_coef, t, x.dtype)
            g = _scalar(sched.g, t, x.dtype)
            z = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
            x = reverse_sde_mean(x, score.to(x.dtype), f, g**2, h) + g * torch.sqrt(h) * z
            if return_trajectory:
                traj.append(x)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    check_finite(x, "samples", owner)
    if return_trajectory:
        return SamplerOutput(x, torch.stack(traj), times)
    return x


@overload
def sample_ode(
    model: ScoreModel,
    shape: Sequence[int] | None,
    *,
    schedule: NoiseSchedule | None = None,
    method: ODEMethod = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int = 100,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cond: Any = None,
    x_init: torch.Tensor | None = None,
    progress: bool = False,
    return_trajectory: Literal[False] = False,
) -> torch.Tensor: ...


@overload
def sample_ode(
    model: ScoreModel,
    shape: Sequence[int] | None,
    *,
    schedule: NoiseSchedule | None = None,
    method: ODEMethod = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int = 100,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cond: Any = None,
    x_init: torch.Tensor | None = None,
    progress: bool = False,
    return_trajectory: Literal[True],
) -> SamplerOutput: ...


def sample_ode(
    model: ScoreModel,
    shape: Sequence[int] | None,
    *,
    schedule: NoiseSchedule | None = None,
    method: ODEMethod = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int = 100,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    cond: Any = None,
    x_init: torch.Tensor | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
) -> torch.Tensor | SamplerOutput:
    r"""Sample by integrating the probability-flow ODE from :math:`t_{\max}` to :math:`t_{\min}`.

    .. math::
        \frac{dx}{dt} = f(t)x - \tfrac12 g(t)^2 s_\theta(x, t),\qquad
        x_{t_{\max}}\sim\mathcal N(0, \sigma_{t_{\max}}^2 I).

    Parameters
    ----------
    model
        Score model, called as ``model.score(x, t[, cond])`` with ``t`` a 0-d tensor.
    shape
        ``(n, *event)`` of the output; ignored (may be ``None``) when ``x_init`` is given.
    schedule
        Noise schedule; default ``model.schedule`` or :class:`~dualdiff.models.VPSchedule`.
    method
        ``"dopri5"`` (default), ``"dopri8"``, ``"bosh3"``, ``"adaptive_heun"`` (adaptive,
        :func:`torchdiffeq.odeint` with ``rtol``/``atol``), or the fixed-step ``"euler"`` /
        ``"heun"`` (second-order) schemes on a uniform grid of ``steps`` steps.
    rtol
        Relative tolerance of the adaptive solvers.
    atol
        Absolute tolerance of the adaptive solvers.
    steps
        Number of steps of the fixed-step schemes; for the adaptive ones, the number of
        intervals of the returned trajectory (when ``return_trajectory``).
    generator
        Random generator for the prior draw (the ODE itself is deterministic).
    dtype
        Dtype of the samples (default: that of ``x_init``, else the model's parameters, else
        float64 for analytic models).
    device
        Device of the samples (default: the CPU, or that of ``x_init``).
    cond
        Optional condition passed to ``model.score``.
    x_init
        Optional starting point at ``t_max``, shape ``(n, *event)``.
    progress
        Show a tqdm progress bar (steps, or function evaluations for adaptive methods).
    return_trajectory
        Also return the states at the ``steps + 1`` grid times (:class:`SamplerOutput`).

    Returns
    -------
    torch.Tensor or SamplerOutput
        Samples of shape ``(n, *event)`` (no gradient tracking), or a :class:`SamplerOutput`.
    """
    owner = "sample_ode"
    check_score_model(model, "model", owner)
    check_choice(method, "method", owner, _ODE_METHODS)
    rtol = check_positive(rtol, "rtol", owner)
    atol = check_positive(atol, "atol", owner)
    sched = resolve_schedule(model, schedule, owner)
    steps = _check_steps(steps, owner)
    x = _start(shape, x_init, sched, generator, dtype, device, owner, model)
    times = torch.linspace(float(sched.t_max), float(sched.t_min), steps + 1, dtype=x.dtype,
                           device=x.device)
    bar = _progress(progress, steps if method not in _ADAPTIVE else None, owner)

    def drift(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if bar is not None and method in _ADAPTIVE:
            bar.update(1)
        return probability_flow_drift(model, y, t, sched, cond)

    with torch.no_grad():
        if method in _ADAPTIVE:
            from torchdiffeq import odeint

            grid = times if return_trajectory else times[[0, -1]]
            traj = odeint(drift, x, grid, method=method, rtol=rtol, atol=atol)
            out_times = grid
        else:
            states = [x]
            for k in range(steps):
                t0, t1 = times[k], times[k + 1]
                h = t1 - t0  # negative: integrating backwards in time
                d0 = drift(t0, x)
                if method == "euler":
                    x = x + h * d0
                else:  # Heun's second-order predictor-corrector
                    x_pred = x + h * d0
                    x = x + 0.5 * h * (d0 + drift(t1, x_pred))
                if return_trajectory:
                    states.append(x)
                if bar is not None:
                    bar.update(1)
            traj = torch.stack(states) if return_trajectory else x.unsqueeze(0)
            out_times = times
    if bar is not None:
        bar.close()
    samples = traj[-1]
    check_finite(samples, "samples", owner)
    if return_trajectory:
        return SamplerOutput(samples, traj, out_times)
    return samples
