r"""Adapter from any ``torch.nn.Module`` to the :class:`~dualdiff.models.ScoreModel` protocol.

A network called as ``module(x, t_in)`` (or ``module(x, t_in, cond)``) that predicts
:math:`\varepsilon`, :math:`x_0`, :math:`v` or the score is exposed through one call,
``score(x, t, cond)``, whatever it predicts internally (STYLE.md §4; cf. k-diffusion's
``external.py``). :class:`MLPScoreNet` is a small noise-prediction network for low-dimensional
data (the 2-D demos).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal, get_args

import torch
from torch import nn

from .._validation import check_choice
from .parametrization import (
    PREDICTIONS,
    Prediction,
    broadcast_time,
    clamp_time,
    eps_to_score,
    to_eps,
)
from .schedule import NoiseSchedule, VPSchedule

__all__ = ["MLPScoreNet", "ModuleScoreModel", "TimeInput"]

TimeInput = Literal["t", "log_snr", "sigma"]
"""What the wrapped module receives as its time argument, the diffusion time ``"t"``, the
log signal-to-noise ratio :math:`\\log(\\alpha_t^2/\\sigma_t^2)` ``"log_snr"`` or the noise
scale :math:`\\sigma_t` ``"sigma"``."""

_TIME_INPUTS: tuple[str, ...] = get_args(TimeInput)


class ModuleScoreModel:
    r"""Wrap a ``torch.nn.Module`` predicting eps, x0, v or the score as a score model.

    The module is called as ``module(x, c)`` with ``x`` of shape ``(n, *event)`` and ``c`` of
    shape ``(n,)`` (``c`` is ``t``, the log-SNR or :math:`\sigma_t`, see ``time_input``), or as
    ``module(x, c, cond)`` when a condition is given. Its output, of the same shape as ``x``,
    is converted with

    .. math::
        s_\theta(x, t) = -\frac{\hat\varepsilon_\theta(x, t)}{\sigma_t},

    where :math:`\hat\varepsilon_\theta` is recovered from the raw prediction (see
    :doc:`/backends`, converting predictions to scores).

    Parameters
    ----------
    module
        The network.
    prediction
        What the module predicts: ``"eps"`` (default), ``"x0"``, ``"v"`` or ``"score"``.
    schedule
        Noise schedule (default :class:`~dualdiff.models.VPSchedule`).
    time_input
        What the module receives as time: ``"t"`` (default), ``"log_snr"`` or ``"sigma"``.

    Notes
    -----
    Times are clamped into ``[schedule.t_min, schedule.t_max]``, where :math:`\sigma_t > 0`:
    a network's score at ``t = 0`` is not defined (``score(x, 0.0)`` returns the score at
    ``t_min``).

    Examples
    --------
    >>> net = MLPScoreNet(dim=2)
    >>> model = ModuleScoreModel(net, prediction="eps")
    >>> model.score(torch.zeros(5, 2), 0.5).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        module: nn.Module,
        prediction: Prediction = "eps",
        schedule: NoiseSchedule | None = None,
        time_input: TimeInput = "t",
    ) -> None:
        owner = "ModuleScoreModel"
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"{owner}: parameter 'module' must be a torch.nn.Module, got "
                f"{type(module).__name__}"
            )
        check_choice(prediction, "prediction", owner, PREDICTIONS)
        check_choice(time_input, "time_input", owner, _TIME_INPUTS)
        if schedule is None:
            schedule = VPSchedule()
        elif not isinstance(schedule, NoiseSchedule):
            raise TypeError(
                f"{owner}: parameter 'schedule' must implement NoiseSchedule (t_min, t_max, "
                f"alpha, sigma, g, drift_coef), got {type(schedule).__name__}"
            )
        self.module = module
        self.prediction: Prediction = prediction
        self.schedule: NoiseSchedule = schedule
        self.time_input: TimeInput = time_input

    def __repr__(self) -> str:
        return (
            f"ModuleScoreModel(module={type(self.module).__name__}, "
            f"prediction={self.prediction!r}, schedule={self.schedule!r}, "
            f"time_input={self.time_input!r})"
        )

    # ------------------------------------------------------------------ nn.Module passthrough
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The wrapped module's parameters (for optimisers)."""
        return self.module.parameters(recurse=recurse)

    def train(self, mode: bool = True) -> ModuleScoreModel:
        """Set the wrapped module's training mode; returns ``self``."""
        self.module.train(mode)
        return self

    def eval(self) -> ModuleScoreModel:
        """Put the wrapped module in evaluation mode; returns ``self``."""
        self.module.eval()
        return self

    # ------------------------------------------------------------------ predictions
    def _prepare(
        self, x: torch.Tensor, t: torch.Tensor | float, method: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        owner = f"ModuleScoreModel.{method}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{owner}: parameter 'x' must be a torch.Tensor, got {type(x).__name__}"
            )
        if x.ndim < 2 or not x.is_floating_point():
            raise ValueError(
                f"{owner}: parameter 'x' must be a floating tensor of shape (n, *event), got "
                f"shape {tuple(x.shape)} and dtype {x.dtype}"
            )
        tt = clamp_time(broadcast_time(t, x, owner), self.schedule)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        alpha = torch.as_tensor(self.schedule.alpha(tt)).to(x.dtype)
        sigma = torch.as_tensor(self.schedule.sigma(tt)).to(x.dtype)
        return tt, alpha.reshape(shape), sigma.reshape(shape), self._time_feature(tt, alpha, sigma)

    def _time_feature(
        self, tt: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        if self.time_input == "t":
            return tt
        if self.time_input == "sigma":
            return sigma
        return 2.0 * (torch.log(alpha) - torch.log(sigma))

    def predict(
        self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None
    ) -> torch.Tensor:
        """Raw module output (of kind ``self.prediction``) at clamped time ``t``.

        Parameters
        ----------
        x
            Shape ``(n, *event)``.
        t
            Float or tensor broadcastable to ``(n,)``.
        cond
            Optional condition passed as the module's third argument.

        Returns
        -------
        torch.Tensor
            Shape ``(n, *event)``.
        """
        _, _, _, c = self._prepare(x, t, "predict")
        return self._call(x, c, cond, "predict")

    def _call(self, x: torch.Tensor, c: torch.Tensor, cond: Any, method: str) -> torch.Tensor:
        out = self.module(x, c) if cond is None else self.module(x, c, cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"ModuleScoreModel.{method}: the wrapped module must return a tensor shaped "
                f"like x {tuple(x.shape)}, got {got}"
            )
        return out

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        r"""Noise prediction :math:`\hat\varepsilon_\theta(x, t)`, shape like ``x``.

        Parameters
        ----------
        x
            Noisy input, shape ``(n, *event)``.
        t
            Float or tensor broadcastable to ``(n,)``; clamped into ``[t_min, t_max]``.
        cond
            Optional condition passed to the module.
        """
        _, alpha, sigma, c = self._prepare(x, t, "eps")
        out = self._call(x, c, cond, "eps")
        return to_eps(out, x, alpha, sigma, self.prediction)

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        r"""Score :math:`s_\theta(x, t) = -\hat\varepsilon_\theta(x,t)/\sigma_t`, shape like ``x``.

        Parameters
        ----------
        x
            Noisy input, shape ``(n, *event)``.
        t
            Float or tensor broadcastable to ``(n,)``; clamped into ``[t_min, t_max]``.
        cond
            Optional condition passed to the module.
        """
        _, alpha, sigma, c = self._prepare(x, t, "score")
        out = self._call(x, c, cond, "score")
        if self.prediction == "score":
            return out
        return eps_to_score(to_eps(out, x, alpha, sigma, self.prediction), sigma)


class SinusoidalTimeEmbedding(nn.Module):
    r"""Sinusoidal features of a scalar time, :math:`[\sin(\omega_k t), \cos(\omega_k t)]_k`.

    Frequencies are geometrically spaced, :math:`\omega_k = \omega_{\max}^{k/(K-1)}`,
    :math:`k = 0..K-1`, ``K = dim // 2`` (suits ``t`` in ``[0, 1]``).

    Parameters
    ----------
    dim
        Even embedding dimension ``>= 2``.
    max_frequency
        Largest angular frequency :math:`\omega_{\max}`.
    """

    freqs: torch.Tensor

    def __init__(self, dim: int, max_frequency: float = 1000.0) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2 or dim % 2:
            raise ValueError(
                f"SinusoidalTimeEmbedding: parameter 'dim' must be an even int >= 2, got {dim!r}"
            )
        half = dim // 2
        exps = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
        self.register_buffer(
            "freqs", torch.exp(exps * math.log(max_frequency)).to(torch.get_default_dtype())
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times of shape ``(n,)`` into ``(n, dim)``."""
        arg = t.to(self.freqs.dtype)[:, None] * self.freqs
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class MLPScoreNet(nn.Module):
    r"""Small MLP noise-prediction network :math:`\hat\varepsilon_\theta(x, t)` for vector data.

    Architecture: the input ``x`` and a sinusoidal embedding of ``t`` (projected by a small
    MLP) are added in a hidden layer of width ``hidden``, followed by ``depth`` residual SiLU
    blocks and a linear read-out (initialised to zero, so the untrained network predicts
    :math:`\hat\varepsilon = 0`).

    Parameters
    ----------
    dim
        Data dimension ``d``.
    hidden
        Hidden width.
    depth
        Number of residual blocks (``>= 1``).
    time_embedding_dim
        Even dimension of the sinusoidal time embedding.

    Notes
    -----
    ``forward(x, t)`` takes ``x`` of shape ``(n, d)`` and ``t`` of shape ``(n,)`` (or a scalar)
    and returns shape ``(n, d)``. Wrap it with :class:`ModuleScoreModel` (``prediction="eps"``)
    to use it as a score model.
    """

    def __init__(
        self, dim: int, hidden: int = 128, depth: int = 3, time_embedding_dim: int = 32
    ) -> None:
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"MLPScoreNet: parameter '{name}' must be an int >= {low}, got {value!r}"
                )
        self.dim = dim
        self.time_embed = nn.Sequential(
            SinusoidalTimeEmbedding(time_embedding_dim),
            nn.Linear(time_embedding_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(depth)
        )
        self.norm_out = nn.SiLU()
        self.output = nn.Linear(hidden, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Predict the noise; ``x`` is ``(n, dim)``, ``t`` is ``(n,)`` or a scalar."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"MLPScoreNet.forward: parameter 'x' must have shape (n, {self.dim}), got "
                f"{tuple(x.shape)}"
            )
        tt = broadcast_time(t, x, "MLPScoreNet.forward")
        h = self.input(x) + self.time_embed(tt).to(x.dtype)
        for block in self.blocks:
            h = h + block(h)
        return self.output(self.norm_out(h))
