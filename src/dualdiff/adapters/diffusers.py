r"""HuggingFace diffusers back-end: a UNet plus its scheduler as a dualdiff score model.

Two objects, one per dualdiff protocol:

* :class:`DiffusersSchedule` -- a scheduler's discrete ``alphas_cumprod`` table
  :math:`\bar\alpha_0, \dots, \bar\alpha_{N-1}` as a continuous-time variance-preserving
  :class:`~dualdiff.models.NoiseSchedule` on :math:`t \in [0, 1]`;
* :class:`DiffusersScoreModel` -- a ``UNet2DModel`` (class labels, classifier-free-guidance null
  class) or ``UNet2DConditionModel`` (``encoder_hidden_states``, a null embedding) as a
  :class:`~dualdiff.models.ScoreModel` ``score(x, t, cond)`` with events of shape
  ``(C, H, W)``; several conditions in one batched forward (:meth:`DiffusersScoreModel.eps_many`),
  LoRA adapters with a free frozen teacher (:meth:`DiffusersScoreModel.teacher`), parameter
  subsets by name (ESD's ``esd-x`` / ``esd-u``) and a ``save_pretrained`` / ``from_pretrained``
  round trip.

Time convention
---------------
The discrete DDPM forward process has noise levels :math:`k = 0, \dots, N-1`,
:math:`x_k = \sqrt{\bar\alpha_k}\,x_0 + \sqrt{1-\bar\alpha_k}\,\varepsilon` (what the scheduler's
``add_noise(x0, eps, k)`` returns). Level ``k`` sits at the continuous time
:math:`t_{k+1} = (k+1)/N`, and :math:`t_0 = 0` is the clean data (:math:`\bar\alpha = 1`):

.. math::
    \tau(t) = N t - 1 \quad\text{(the UNet's timestep)}, \qquad
    \log\bar\alpha(t) \text{ piecewise linear in } t \text{ through }
    (t_i, \log\bar\alpha_{i-1}),\ i = 0..N,\ \log\bar\alpha_{-1} := 0 .

Then :math:`\alpha_t = \bar\alpha(t)^{1/2}`, :math:`\sigma_t = (1-\bar\alpha(t))^{1/2}` and, for
the VP SDE :math:`dx = f(t)\,x\,dt + g(t)\,dW`,

.. math::
    f(t) = \tfrac12\,\frac{d\log\bar\alpha}{dt}, \qquad
    g(t)^2 = \frac{d\sigma_t^2}{dt} - 2 f(t)\sigma_t^2 = -\frac{d\log\bar\alpha}{dt},

both piecewise constant: on :math:`(t_i, t_{i+1}]`,
:math:`g^2 = -N\log(\bar\alpha_i/\bar\alpha_{i-1}) = -N\log(1-\beta_i) \approx N\beta_i`, the
usual continuous limit of DDPM (Song et al., 2021). The UNet receives :math:`\tau(t)` as a
*float* tensor: a Python float would be cast to an integer by ``UNet2DModel.forward``; between
the discrete levels the sinusoidal timestep embedding interpolates smoothly.

Predictions
-----------
The scheduler's ``prediction_type`` (``"epsilon"``, ``"v_prediction"``, ``"sample"``) says what
the UNet outputs; it is converted to :math:`\hat\varepsilon` with
:func:`dualdiff.models.parametrization.to_eps` and to the score
:math:`s = -\hat\varepsilon/\sigma_t`. ``clip_sample`` (the scheduler's clipping of the
predicted :math:`\hat x_0` to ``[-clip_sample_range, clip_sample_range]``) is applied explicitly
when enabled: :math:`\hat\varepsilon \leftarrow (x_t - \alpha_t\,\mathrm{clip}(\hat x_0))/\sigma_t`
(what DDIM does). Clipping makes the field piecewise and not the gradient of a log-density; turn
it off (``clip_sample=False``) for likelihoods and score-matching losses.

This module needs the ``[diffusers]`` extra
(``pip install 'dualdiff-unlearning[diffusers]'``: diffusers and, for LoRA, peft);
``import dualdiff`` never imports it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import numbers
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validation import as_tensor, check_choice
from ..models.parametrization import (
    Prediction,
    broadcast_time,
    clamp_time,
    eps_to_score,
    eps_to_x0,
    to_eps,
    x0_to_eps,
)

_EXTRA_HINT = "install the extra with: pip install 'dualdiff-unlearning[diffusers]'"

try:
    import diffusers
    from diffusers import UNet2DConditionModel, UNet2DModel
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "dualdiff.adapters.diffusers needs the optional dependency 'diffusers' "
        f"({_EXTRA_HINT}); the import failed with: {exc}"
    ) from exc

__all__ = [
    "ESD_PRESETS",
    "PREDICTION_TYPES",
    "DiffusersSchedule",
    "DiffusersScoreModel",
    "DiffusersTeacher",
]

PREDICTION_TYPES: dict[str, Prediction] = {
    "epsilon": "eps",
    "v_prediction": "v",
    "sample": "x0",
}
"""diffusers ``prediction_type`` -> dualdiff :data:`~dualdiff.models.Prediction`."""

ESD_PRESETS: tuple[str, ...] = ("esd-x", "esd-u")
"""Parameter presets of ESD (Gandikota et al., 2023, ``esd_sd.py``): the ``Linear``/``Conv2d``
layers inside cross-attention (``attn2``) for ``"esd-x"``, all the other ones for ``"esd-u"``."""

_ATTN2 = re.compile(r"(^|\.)attn2(\.|$)")
_LORA_NAME = re.compile(r"(^|\.)lora_")
_DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_META_FILE = "dualdiff_adapter.json"
_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_FORMAT_VERSION = 1


# ====================================================================== the schedule
class DiffusersSchedule:
    r"""A discrete ``alphas_cumprod`` table as a continuous-time VP noise schedule.

    Implements :class:`~dualdiff.models.NoiseSchedule`. With :math:`N` discrete levels, level
    ``k`` (UNet timestep ``k``) sits at :math:`t = (k+1)/N`, and :math:`\log\bar\alpha` is
    piecewise linear in :math:`t` between :math:`(0, 0)` and the levels:

    .. math::
        \log\bar\alpha(t) = (1-w)\,L_j + w\,L_{j+1},\quad j = \lceil N t\rceil - 1,\
        w = N t - j,\qquad L_0 = 0,\ L_{i} = \log\bar\alpha_{i-1},

    :math:`\alpha_t = e^{\log\bar\alpha(t)/2}`, :math:`\sigma_t = \sqrt{1-\bar\alpha(t)}`,
    :math:`f(t) = \frac12 \frac{d\log\bar\alpha}{dt}` and
    :math:`g(t) = \sqrt{-\frac{d\log\bar\alpha}{dt}}` (constant on each interval
    :math:`(i/N, (i+1)/N]`; at a level the left interval's value is used).

    Parameters
    ----------
    alphas_cumprod
        :math:`\bar\alpha_0 \ge \dots \ge \bar\alpha_{N-1}`, shape ``(N,)``, ``N >= 2``, in
        ``(0, 1]``; only the last entry may be ``0`` (zero terminal SNR, e.g.
        ``rescale_betas_zero_snr=True``), in which case the schedule ends at the level before.
    t_min
        Smallest time used by score models and samplers (default ``1/N``, the first discrete
        level, the least noisy one the UNet was trained on).
    t_max
        Largest time (default ``1``, the last level; ``(N-1)/N`` under zero terminal SNR).

    Notes
    -----
    Computed in float64 from the table; results have ``t``'s floating dtype (float64 for
    Python floats) and device. Times outside ``[0, t_end]`` (``t_end`` the last finite level)
    are clamped into it.

    Examples
    --------
    >>> from diffusers import DDPMScheduler
    >>> sched = DiffusersSchedule.from_scheduler(DDPMScheduler())
    >>> float(sched.timestep(torch.tensor(1.0)))
    999.0
    """

    def __init__(
        self,
        alphas_cumprod: Any,
        *,
        t_min: float | None = None,
        t_max: float | None = None,
    ) -> None:
        owner = "DiffusersSchedule"
        abar = as_tensor(alphas_cumprod, "alphas_cumprod", owner, dtype=torch.float64)
        abar = abar.detach().cpu()
        if abar.ndim != 1 or abar.numel() < 2:
            raise ValueError(
                f"{owner}: parameter 'alphas_cumprod' must have shape (N,) with N >= 2, got "
                f"shape {tuple(abar.shape)}"
            )
        if bool((abar[:-1] <= 0).any()) or bool((abar < 0).any()) or bool((abar > 1).any()):
            raise ValueError(
                f"{owner}: parameter 'alphas_cumprod' must lie in (0, 1] (only the last entry "
                f"may be 0), got min {float(abar.min())} and max {float(abar.max())}"
            )
        if bool((abar[1:] > abar[:-1]).any()):
            i = int(torch.nonzero(abar[1:] > abar[:-1])[0, 0])
            raise ValueError(
                f"{owner}: parameter 'alphas_cumprod' must be non-increasing, got "
                f"alphas_cumprod[{i}]={float(abar[i])} < alphas_cumprod[{i + 1}]="
                f"{float(abar[i + 1])}"
            )
        n = int(abar.numel())
        self.num_train_timesteps = n
        self._abar = abar
        # Node values L_i = log abar(t_i), t_i = i / N, i = 0..N_end (N_end: last finite node).
        n_end = n if float(abar[-1]) > 0 else n - 1
        log_nodes = torch.zeros(n_end + 1, dtype=torch.float64)
        log_nodes[1:] = torch.log(abar[:n_end])
        self._log_nodes = log_nodes
        self._slopes = n * torch.diff(log_nodes)  # d log abar / dt on (t_i, t_{i+1}]
        self._n_end = n_end
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        t_end = n_end / n
        self.t_max = t_end if t_max is None else float(t_max)
        self.t_min = 1.0 / n if t_min is None else float(t_min)
        if not (0.0 < self.t_max <= t_end):
            raise ValueError(
                f"{owner}: parameter 't_max' must lie in (0, {t_end}] (the last level with "
                f"alphas_cumprod > 0), got {t_max}"
            )
        if not (0.0 <= self.t_min < self.t_max):
            raise ValueError(
                f"{owner}: need 0 <= t_min < t_max, got t_min={t_min}, t_max={self.t_max}"
            )

    @classmethod
    def from_scheduler(
        cls, scheduler: Any, *, t_min: float | None = None, t_max: float | None = None
    ) -> DiffusersSchedule:
        """Build the schedule from a diffusers scheduler's ``alphas_cumprod`` (DDPM, DDIM, ...).

        Parameters
        ----------
        scheduler
            Any object with an ``alphas_cumprod`` tensor of shape ``(num_train_timesteps,)``.
        t_min, t_max
            As in the constructor.

        Raises
        ------
        TypeError
            If ``scheduler`` has no ``alphas_cumprod``.
        """
        abar = getattr(scheduler, "alphas_cumprod", None)
        if abar is None:
            raise TypeError(
                "DiffusersSchedule.from_scheduler: parameter 'scheduler' must have an "
                f"'alphas_cumprod' table (e.g. DDPMScheduler, DDIMScheduler), got "
                f"{type(scheduler).__name__}"
            )
        return cls(abar, t_min=t_min, t_max=t_max)

    def __repr__(self) -> str:
        return (
            f"DiffusersSchedule(num_train_timesteps={self.num_train_timesteps}, "
            f"t_min={self.t_min}, t_max={self.t_max})"
        )

    # ------------------------------------------------------------------ internals
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        r"""The discrete table :math:`\bar\alpha_k`, float64, shape ``(N,)`` (a copy)."""
        return self._abar.clone()

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:
            self._cache[device] = (self._log_nodes.to(device), self._slopes.to(device))
        return self._cache[device]

    def _segment(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        """Float64 times clamped into the table, their interval index ``j`` and the out dtype."""
        if isinstance(t, torch.Tensor):
            out_dtype = t.dtype if t.is_floating_point() else torch.float64
            tt = t.to(torch.float64)
        else:
            out_dtype = torch.float64
            tt = torch.tensor(float(t), dtype=torch.float64)
        tt = tt.clamp(0.0, self._n_end / self.num_train_timesteps)
        u = tt * self.num_train_timesteps
        j = (torch.ceil(u) - 1).clamp(0, self._n_end - 1).to(torch.long)
        return tt, j, out_dtype

    def _log_abar64(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.dtype]:
        r"""Float64 :math:`\log\bar\alpha(t)` and the dtype results are returned in."""
        tt, j, out_dtype = self._segment(t)
        nodes, slopes = self._tables(tt.device)
        left = j.to(torch.float64) / self.num_train_timesteps
        return nodes[j] + slopes[j] * (tt - left), out_dtype

    def log_alphas_cumprod(self, t: torch.Tensor | float) -> torch.Tensor:
        r""":math:`\log\bar\alpha(t)`, piecewise linear in ``t`` (see the class docstring)."""
        la, out_dtype = self._log_abar64(t)
        return la.to(out_dtype)

    def _dlog(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.dtype]:
        tt, j, out_dtype = self._segment(t)
        _, slopes = self._tables(tt.device)
        return slopes[j], out_dtype

    # ------------------------------------------------------------------ the protocol
    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Signal scale :math:`\alpha_t = \bar\alpha(t)^{1/2}`, same shape as ``t``."""
        la, out_dtype = self._log_abar64(t)
        return torch.exp(0.5 * la).to(out_dtype)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Noise scale :math:`\sigma_t = (1-\bar\alpha(t))^{1/2}` (computed with ``expm1``)."""
        la, out_dtype = self._log_abar64(t)
        return torch.sqrt(-torch.expm1(la)).to(out_dtype)

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(\alpha_t, \sigma_t)` from one table lookup (what score models need per call)."""
        la, out_dtype = self._log_abar64(t)
        return torch.exp(0.5 * la).to(out_dtype), torch.sqrt(-torch.expm1(la)).to(out_dtype)

    def g(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Diffusion coefficient :math:`g(t) = (-d\log\bar\alpha/dt)^{1/2}` (piecewise const)."""
        slope, out_dtype = self._dlog(t)
        return torch.sqrt((-slope).clamp_min(0.0)).to(out_dtype)

    def drift_coef(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Linear drift :math:`f(t) = \frac12\,d\log\bar\alpha/dt = d\log\alpha_t/dt`."""
        slope, out_dtype = self._dlog(t)
        return (0.5 * slope).to(out_dtype)

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Log signal-to-noise ratio :math:`\log(\alpha_t^2/\sigma_t^2)`."""
        la, out_dtype = self._log_abar64(t)
        return (la - torch.log(-torch.expm1(la))).to(out_dtype)

    def clamp(self, t: torch.Tensor | float) -> torch.Tensor:
        """Clamp ``t`` into ``[0, t_max]``."""
        tt = t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)
        return tt.clamp(0.0, self.t_max)

    # ------------------------------------------------------------------ discrete <-> continuous
    def timestep(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""The UNet's (float) timestep :math:`\tau = N t - 1` for continuous time ``t``.

        Integer values are the scheduler's discrete levels; ``t`` keeps its floating dtype
        (float64 for Python floats), nothing is rounded.
        """
        tt = t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)
        if not tt.is_floating_point():
            tt = tt.to(torch.float64)
        return tt * self.num_train_timesteps - 1.0

    def time(self, timestep: torch.Tensor | float) -> torch.Tensor:
        r"""Inverse of :meth:`timestep`: :math:`t = (\tau + 1)/N`."""
        tau = (
            timestep
            if isinstance(timestep, torch.Tensor)
            else torch.tensor(float(timestep), dtype=torch.float64)
        )
        if not tau.is_floating_point():
            tau = tau.to(torch.float64)
        return (tau + 1.0) / self.num_train_timesteps


# ====================================================================== the score model
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _import_peft(owner: str) -> Any:
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is part of the extra
        raise ImportError(
            f"{owner}: LoRA adapters need the optional dependency 'peft' ({_EXTRA_HINT}); "
            f"the import failed with: {exc}"
        ) from exc
    return peft


class DiffusersScoreModel:
    r"""A diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` and scheduler as a score model.

    .. math::
        s_\theta(x, t, c) = -\frac{\hat\varepsilon_\theta(x, t, c)}{\sigma_t}, \qquad
        \hat\varepsilon_\theta = \mathrm{to\_eps}\big(\mathrm{unet}(x, \tau(t), c)\big),

    with :math:`\tau(t) = N t - 1` passed as a float tensor and :math:`(\alpha_t, \sigma_t)`
    from :class:`DiffusersSchedule` (see the module docstring for the time convention).

    Conditions ``cond``:

    * ``UNet2DModel`` with ``num_class_embeds = num_classes + 1``: an ``int`` class label in
      ``[0, num_classes]`` or an integer tensor of shape ``()`` / ``(n,)``; ``None`` (and the
      index ``num_classes``) is the classifier-free-guidance *null class*, the unconditional
      score. A ``UNet2DModel`` without class embedding accepts only ``None``.
    * ``UNet2DConditionModel``: ``encoder_hidden_states`` of shape ``(L, D)`` (shared by the
      batch) or ``(n, L, D)``; ``None`` is ``null_embedding`` (e.g. the text encoder's output
      for the empty prompt), the unconditional score.

    Parameters
    ----------
    unet
        A ``diffusers.UNet2DModel`` or ``diffusers.UNet2DConditionModel`` with positional
        (sinusoidal) timestep embeddings; ``out_channels`` equal to ``in_channels``, or twice it
        for learned variances (the first half, the prediction, is used).
    scheduler
        A diffusers scheduler with ``alphas_cumprod`` and a ``config`` (``DDPMScheduler``,
        ``DDIMScheduler``, ...). Its ``thresholding`` must be off (dynamic thresholding depends
        on the whole batch and is not a score).
    prediction_type
        ``"epsilon"``, ``"v_prediction"`` or ``"sample"``; default: the scheduler's
        ``config.prediction_type``.
    clip_sample
        Clip the predicted :math:`\hat x_0` to ``[-r, r]`` (``r = clip_sample_range``) before
        converting to :math:`\hat\varepsilon`; default: the scheduler's ``config.clip_sample``
        (``True`` for the default ``DDPMScheduler``). Pass ``False`` for likelihoods and training.
    clip_sample_range
        ``r``; default the scheduler's ``config.clip_sample_range`` (else 1).
    null_embedding
        ``UNet2DConditionModel`` only (and then required): the unconditional
        ``encoder_hidden_states``, shape ``(L, D)`` with ``D = cross_attention_dim``.

    Attributes
    ----------
    module
        The UNet (``model.module.state_dict()`` is what trainers checkpoint).
    schedule
        The :class:`DiffusersSchedule` of the scheduler.
    num_classes
        Number of real classes of a class-conditional ``UNet2DModel`` (the null class is
        index ``num_classes``); ``None`` for other UNets.
    prediction
        The dualdiff name of the prediction type (``"eps"``, ``"v"``, ``"x0"``).

    Notes
    -----
    Inputs of another dtype than the UNet's are cast to the UNet's dtype for the forward and
    the output is cast back (the arithmetic of the conversion runs in the input's dtype); use a
    float64 UNet (``unet.to(torch.float64)``) for float64-accurate scores. Times are clamped
    into ``[schedule.t_min, schedule.t_max]``.

    Examples
    --------
    >>> from diffusers import DDPMScheduler, UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
    ...                    block_out_channels=(8, 16), norm_num_groups=4, num_class_embeds=4,
    ...                    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    ...                    up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    >>> model = DiffusersScoreModel(unet, DDPMScheduler(clip_sample=False))
    >>> model.num_classes
    3
    >>> model.score(torch.randn(2, 1, 8, 8), 0.5, cond=1).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        *,
        prediction_type: str | None = None,
        clip_sample: bool | None = None,
        clip_sample_range: float | None = None,
        null_embedding: torch.Tensor | None = None,
    ) -> None:
        owner = "DiffusersScoreModel"
        if not isinstance(unet, (UNet2DModel, UNet2DConditionModel)):
            raise TypeError(
                f"{owner}: parameter 'unet' must be a diffusers UNet2DModel or "
                f"UNet2DConditionModel, got {type(unet).__name__}"
            )
        config = getattr(scheduler, "config", None)
        if config is None or getattr(scheduler, "alphas_cumprod", None) is None:
            raise TypeError(
                f"{owner}: parameter 'scheduler' must be a diffusers scheduler with "
                f"'alphas_cumprod' and 'config' (e.g. DDPMScheduler), got "
                f"{type(scheduler).__name__}"
            )
        if bool(config.get("thresholding", False)):
            raise ValueError(
                f"{owner}: the scheduler's thresholding=True (dynamic thresholding) is not "
                "supported: it rescales x0 by a per-batch quantile, which is not a score; build "
                "the scheduler with thresholding=False"
            )
        ptype = config.get("prediction_type", "epsilon") if prediction_type is None else (
            prediction_type
        )
        check_choice(ptype, "prediction_type", owner, tuple(PREDICTION_TYPES))
        ucfg: Any = unet.config
        if ucfg.get("time_embedding_type", "positional") != "positional":
            raise ValueError(
                f"{owner}: unet.config.time_embedding_type="
                f"{ucfg.get('time_embedding_type')!r} is not supported; allowed: 'positional' "
                "(sinusoidal embeddings of the discrete DDPM timestep)"
            )
        in_ch, out_ch = int(ucfg.in_channels), int(ucfg.out_channels)
        if out_ch not in (in_ch, 2 * in_ch):
            raise ValueError(
                f"{owner}: unet.config.out_channels={out_ch} must equal in_channels={in_ch} "
                f"(or 2 * in_channels for learned variances)"
            )
        self.module: nn.Module = unet
        self.scheduler = scheduler
        self.schedule = DiffusersSchedule.from_scheduler(scheduler)
        self.prediction_type: str = ptype
        self.prediction: Prediction = PREDICTION_TYPES[ptype]
        self.clip_sample = bool(config.get("clip_sample", False)) if clip_sample is None else (
            clip_sample
        )
        if not isinstance(self.clip_sample, bool):
            raise TypeError(
                f"{owner}: parameter 'clip_sample' must be a bool or None, got {clip_sample!r}"
            )
        r = config.get("clip_sample_range", 1.0) if clip_sample_range is None else (
            clip_sample_range
        )
        if not isinstance(r, numbers.Real) or not math.isfinite(float(r)) or float(r) <= 0:
            raise ValueError(
                f"{owner}: parameter 'clip_sample_range' must be a finite number > 0, got {r!r}"
            )
        self.clip_sample_range = float(r)
        self.in_channels = in_ch
        self.conditioning: str
        self.num_classes: int | None = None
        self.null_embedding: torch.Tensor | None = None
        if isinstance(unet, UNet2DModel):
            self._init_class_conditioning(ucfg, null_embedding, owner)
        else:
            self._init_text_conditioning(ucfg, null_embedding, owner)
        self._lora: dict[str, Any] | None = None
        self._tuner_layers: list[Any] = []  # peft layers, toggled by the teacher
        self._lora_params: list[nn.Parameter] = []

    def _init_class_conditioning(self, ucfg: Any, null_embedding: Any, owner: str) -> None:
        if null_embedding is not None:
            raise ValueError(
                f"{owner}: parameter 'null_embedding' is for UNet2DConditionModel; a "
                "UNet2DModel's null condition is the class index num_classes"
            )
        if ucfg.get("class_embed_type") is not None:
            raise ValueError(
                f"{owner}: unet.config.class_embed_type={ucfg.get('class_embed_type')!r} is not "
                "supported; allowed: None (an nn.Embedding of num_class_embeds labels)"
            )
        n_embeds = ucfg.get("num_class_embeds")
        if n_embeds is None:
            self.conditioning = "none"
            return
        if int(n_embeds) < 2:
            raise ValueError(
                f"{owner}: unet.config.num_class_embeds={n_embeds} must be >= 2 (num_classes "
                "real classes plus the null class at index num_classes)"
            )
        self.conditioning = "class"
        self.num_classes = int(n_embeds) - 1

    def _init_text_conditioning(self, ucfg: Any, null_embedding: Any, owner: str) -> None:
        for key in ("class_embed_type", "num_class_embeds", "addition_embed_type",
                    "encoder_hid_dim_type"):
            if ucfg.get(key) is not None:
                raise ValueError(
                    f"{owner}: unet.config.{key}={ucfg.get(key)!r} is not supported; only "
                    "encoder_hidden_states conditioning (the key must be None)"
                )
        if null_embedding is None:
            raise ValueError(
                f"{owner}: parameter 'null_embedding' is required for a UNet2DConditionModel: "
                "the unconditional encoder_hidden_states of shape (L, cross_attention_dim), "
                "e.g. the text encoder's output for the empty prompt"
            )
        if not isinstance(null_embedding, torch.Tensor):
            raise TypeError(
                f"{owner}: parameter 'null_embedding' must be a torch.Tensor, got "
                f"{type(null_embedding).__name__}"
            )
        dim = ucfg.get("cross_attention_dim")
        if (
            null_embedding.ndim != 2
            or not null_embedding.is_floating_point()
            or (isinstance(dim, int) and null_embedding.shape[1] != dim)
        ):
            raise ValueError(
                f"{owner}: parameter 'null_embedding' must be a floating tensor of shape "
                f"(L, {dim}), got shape {tuple(null_embedding.shape)} and dtype "
                f"{null_embedding.dtype}"
            )
        self.conditioning = "text"
        self.null_embedding = null_embedding.detach().clone()

    def __repr__(self) -> str:
        lora = None if self._lora is None else {"rank": self._lora["rank"]}
        return (
            f"DiffusersScoreModel(unet={type(self.module).__name__}, "
            f"scheduler={type(self.scheduler).__name__}, "
            f"prediction_type={self.prediction_type!r}, clip_sample={self.clip_sample}, "
            f"num_classes={self.num_classes}, lora={lora})"
        )

    # ------------------------------------------------------------------ nn.Module passthrough
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The UNet's parameters (frozen ones included; optimisers keep ``requires_grad``)."""
        return self.module.parameters(recurse=recurse)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The UNet's named parameters."""
        return self.module.named_parameters()

    def train(self, mode: bool = True) -> DiffusersScoreModel:
        """Set the UNet's training mode; returns ``self``."""
        self.module.train(mode)
        return self

    def eval(self) -> DiffusersScoreModel:
        """Put the UNet in evaluation mode; returns ``self``."""
        self.module.eval()
        return self

    def to(self, *args: Any, **kwargs: Any) -> DiffusersScoreModel:
        """Move / cast the UNet (``nn.Module.to`` arguments); returns ``self``."""
        self.module.to(*args, **kwargs)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's parameter dtype."""
        return next(self.module.parameters()).dtype

    # ------------------------------------------------------------------ inputs
    def _prepare(
        self, x: Any, t: torch.Tensor | float, method: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        owner = f"DiffusersScoreModel.{method}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{owner}: parameter 'x' must be a torch.Tensor, got {type(x).__name__}"
            )
        if x.ndim != 4 or not x.is_floating_point() or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{owner}: parameter 'x' must be a floating tensor of shape (n, "
                f"{self.in_channels}, H, W), got shape {tuple(x.shape)} and dtype {x.dtype}"
            )
        tt = clamp_time(broadcast_time(t, x, owner), self.schedule)
        shape = (x.shape[0], 1, 1, 1)
        alpha, sigma = self.schedule.alpha_sigma(tt)
        return tt, alpha.to(x.dtype).reshape(shape), sigma.to(x.dtype).reshape(shape)

    def _batch_cond(self, cond: Any, n: int, device: torch.device, owner: str) -> Any:
        """The UNet's conditioning input for a batch of ``n`` (labels ``(n,)`` or ``(n, L, D)``)."""
        if self.conditioning == "none":
            if cond is not None:
                raise ValueError(
                    f"{owner}: this UNet2DModel has no class embedding (num_class_embeds=None); "
                    f"parameter 'cond' must be None, got {type(cond).__name__}"
                )
            return None
        if self.conditioning == "class":
            return self._class_labels(cond, n, device, owner)
        return self._hidden_states(cond, n, device, owner)

    def _class_labels(self, cond: Any, n: int, device: torch.device, owner: str) -> torch.Tensor:
        k = self.num_classes
        assert k is not None  # set with conditioning == "class"
        if cond is None:
            return torch.full((n,), k, dtype=torch.long, device=device)
        if _is_int(cond):
            labels = torch.full((n,), int(cond), dtype=torch.long, device=device)
        elif isinstance(cond, torch.Tensor) and not cond.is_floating_point() and (
            cond.dtype != torch.bool and not cond.is_complex()
        ):
            if cond.ndim == 0:
                labels = cond.to(device=device, dtype=torch.long).expand(n)
            elif cond.shape == (n,):
                labels = cond.to(device=device, dtype=torch.long)
            else:
                raise ValueError(
                    f"{owner}: parameter 'cond' (class labels) must have shape () or ({n},), "
                    f"got {tuple(cond.shape)}"
                )
        else:
            raise TypeError(
                f"{owner}: parameter 'cond' must be None (the null class), an int class label "
                f"or an integer tensor of labels, got {type(cond).__name__}"
                + (f" of dtype {cond.dtype}" if isinstance(cond, torch.Tensor) else "")
            )
        if bool(((labels < 0) | (labels > k)).any()):
            bad = labels[(labels < 0) | (labels > k)][0]
            raise ValueError(
                f"{owner}: parameter 'cond' must hold class labels in [0, {k}] ({k} is the null "
                f"class), got {int(bad)}"
            )
        return labels

    def _hidden_states(self, cond: Any, n: int, device: torch.device, owner: str) -> torch.Tensor:
        emb = self.null_embedding if cond is None else cond
        if not isinstance(emb, torch.Tensor) or not emb.is_floating_point():
            raise TypeError(
                f"{owner}: parameter 'cond' must be None (the null embedding) or a floating "
                f"tensor of encoder_hidden_states, got {type(cond).__name__}"
            )
        null = self.null_embedding
        assert null is not None  # set with conditioning == "text"
        d = null.shape[-1]
        if emb.ndim == 2 and emb.shape[1] == d:
            emb = emb.expand(n, *emb.shape)
        elif not (emb.ndim == 3 and emb.shape[0] == n and emb.shape[2] == d):
            raise ValueError(
                f"{owner}: parameter 'cond' (encoder_hidden_states) must have shape (L, {d}) or "
                f"({n}, L, {d}), got {tuple(emb.shape)}"
            )
        return emb.to(device=device, dtype=self.dtype)

    # ------------------------------------------------------------------ forward
    def _adapter_context(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def _unet(self, x: torch.Tensor, tt: torch.Tensor, cond_batch: Any) -> torch.Tensor:
        """One UNet forward at float timesteps ``tau(tt)``; returns the prediction in x's dtype."""
        timestep = self.schedule.timestep(tt)
        sample = x.to(self.dtype)
        with self._adapter_context():
            if self.conditioning == "text":
                out = self.module(sample, timestep, encoder_hidden_states=cond_batch).sample
            else:
                out = self.module(sample, timestep, class_labels=cond_batch).sample
        if out.shape[1] == 2 * self.in_channels:  # learned variance: [prediction, variance]
            out = out[:, : self.in_channels]
        return out.to(x.dtype)

    def _to_eps(
        self, out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        eps = to_eps(out, x, alpha, sigma, self.prediction)
        if self.clip_sample:
            r = self.clip_sample_range
            x0 = eps_to_x0(eps, x, alpha, sigma).clamp(-r, r)
            eps = x0_to_eps(x0, x, alpha, sigma)
        return eps

    def predict(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """Raw UNet output (of kind ``prediction_type``) at clamped time ``t``, shape like ``x``.

        Parameters
        ----------
        x
            Shape ``(n, C, H, W)``.
        t
            Float or tensor broadcastable to ``(n,)``.
        cond
            Condition (see the class docstring); ``None`` is the null condition.
        """
        tt, _, _ = self._prepare(x, t, "predict")
        return self._unet(x, tt, self._batch_cond(cond, x.shape[0], x.device, "predict"))

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        r"""Noise prediction :math:`\hat\varepsilon_\theta(x, t, c)`, shape ``(n, C, H, W)``.

        Parameters
        ----------
        x
            Noisy input, shape ``(n, C, H, W)``.
        t
            Float or tensor broadcastable to ``(n,)``; clamped into ``[t_min, t_max]``.
        cond
            Condition (see the class docstring); ``None`` is the null condition.
        """
        tt, alpha, sigma = self._prepare(x, t, "eps")
        out = self._unet(x, tt, self._batch_cond(cond, x.shape[0], x.device, "eps"))
        return self._to_eps(out, x, alpha, sigma)

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        r"""Score :math:`s_\theta(x,t,c) = -\hat\varepsilon_\theta(x,t,c)/\sigma_t`, like ``x``.

        Parameters
        ----------
        x
            Noisy input, shape ``(n, C, H, W)``.
        t
            Float or tensor broadcastable to ``(n,)``; clamped into ``[t_min, t_max]``.
        cond
            Condition (see the class docstring); ``None`` is the null condition.
        """
        tt, alpha, sigma = self._prepare(x, t, "score")
        out = self._unet(x, tt, self._batch_cond(cond, x.shape[0], x.device, "score"))
        return eps_to_score(self._to_eps(out, x, alpha, sigma), sigma)

    def _eps_many(
        self, x: Any, t: torch.Tensor | float, conds: Any, method: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps (k, n, C, H, W), sigma (n, 1, 1, 1))`` for ``k`` conditions in one forward."""
        owner = f"DiffusersScoreModel.{method}"
        tt, alpha, sigma = self._prepare(x, t, method)
        if isinstance(conds, (str, bytes, torch.Tensor)) or not isinstance(conds, Sequence):
            raise TypeError(
                f"{owner}: parameter 'conds' must be a list or tuple of conditions, got "
                f"{type(conds).__name__}"
            )
        k, n = len(conds), x.shape[0]
        if k == 0:
            raise ValueError(f"{owner}: parameter 'conds' must hold at least one condition")
        batches = [self._batch_cond(c, n, x.device, owner) for c in conds]
        cond_batch: Any = None
        if self.conditioning == "class":
            cond_batch = torch.cat(batches)
        elif self.conditioning == "text":
            lengths = {b.shape[1] for b in batches}
            if len(lengths) > 1:
                raise ValueError(
                    f"{owner}: every condition must have the same sequence length L to share "
                    f"one forward, got lengths {sorted(lengths)}"
                )
            cond_batch = torch.cat(batches)
        rep = (k, 1, 1, 1)
        xk = x.repeat(rep)
        out = self._unet(xk, tt.repeat(k), cond_batch)
        eps = self._to_eps(out, xk, alpha.repeat(rep), sigma.repeat(rep))
        return eps.reshape(k, *x.shape), sigma

    def eps_many(
        self, x: torch.Tensor, t: torch.Tensor | float, conds: Sequence[Any]
    ) -> torch.Tensor:
        r"""Noise predictions for ``k`` conditions in **one** UNet forward of batch ``k * n``.

        ``eps_many(x, t, conds)[i] == eps(x, t, conds[i])`` (up to the round-off of batching),
        e.g. ``conds = [None, c_1, ..., c_m]`` for the unconditional (pretrained) prediction and
        each concept's.

        Parameters
        ----------
        x
            Noisy input, shape ``(n, C, H, W)``.
        t
            Float or tensor broadcastable to ``(n,)``.
        conds
            A non-empty sequence of ``k`` conditions (each as for :meth:`eps`). For a
            ``UNet2DConditionModel`` all must have the same sequence length ``L``.

        Returns
        -------
        torch.Tensor
            Shape ``(k, n, C, H, W)``.
        """
        return self._eps_many(x, t, conds, "eps_many")[0]

    def score_many(
        self, x: torch.Tensor, t: torch.Tensor | float, conds: Sequence[Any]
    ) -> torch.Tensor:
        r"""Scores for ``k`` conditions in one forward (see :meth:`eps_many`), ``(k, n, C, H, W)``.

        .. math:: s_i = -\hat\varepsilon_\theta(x, t, c_i)/\sigma_t
        """
        eps, sigma = self._eps_many(x, t, conds, "score_many")
        return eps_to_score(eps, sigma.unsqueeze(0))

    # ------------------------------------------------------------------ parameter subsets
    def _linear_modules(self) -> list[tuple[str, nn.Module]]:
        return [
            (name, m)
            for name, m in self.module.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and name
        ]

    def _resolve_modules(self, target_modules: Any, owner: str) -> list[str]:
        """Names of the ``Linear``/``Conv2d`` modules a LoRA target specification selects."""
        mods = [name for name, _ in self._linear_modules() if not _LORA_NAME.search(name)]
        if target_modules is None:
            targets: Sequence[str] = _DEFAULT_LORA_TARGETS
            names = [n for n in mods if any(n == s or n.endswith("." + s) for s in targets)]
            what = f"the default attention projections {list(targets)}"
        elif isinstance(target_modules, str):
            pred = self._name_predicate(target_modules, owner, "target_modules")
            names = [n for n in mods if pred(n)]
            what = repr(target_modules)
        elif isinstance(target_modules, Sequence) and all(
            isinstance(s, str) for s in target_modules
        ):
            names = [
                n for n in mods if any(n == s or n.endswith("." + s) for s in target_modules)
            ]
            what = f"the names {list(target_modules)}"
        else:
            raise TypeError(
                f"{owner}: parameter 'target_modules' must be None, a preset {ESD_PRESETS}, a "
                f"regular expression or a list of module names, got "
                f"{type(target_modules).__name__}"
            )
        if not names:
            raise ValueError(
                f"{owner}: parameter 'target_modules' ({what}) matched no Linear/Conv2d module "
                f"of the {type(self.module).__name__}; examples of names: {mods[:5]}"
            )
        return names

    @staticmethod
    def _name_predicate(pattern: str, owner: str, name: str) -> Any:
        if pattern == "esd-x":
            return lambda s: bool(_ATTN2.search(s))
        if pattern == "esd-u":
            return lambda s: not _ATTN2.search(s)
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"{owner}: parameter '{name}'={pattern!r} is neither a preset {ESD_PRESETS} nor "
                f"a valid regular expression ({exc})"
            ) from None
        return lambda s: bool(rx.search(s))

    def trainable_parameters(self, pattern: str) -> list[tuple[str, nn.Parameter]]:
        r"""Named UNet parameters selected by a preset or a regular expression.

        * ``"esd-x"``: parameters of the ``Linear``/``Conv2d`` layers inside cross-attention
          blocks (module names with an ``attn2`` component), as in ESD-x;
        * ``"esd-u"``: those of every other ``Linear``/``Conv2d`` layer (ESD-u: all but
          cross-attention; norms and embeddings tables are not trained);
        * ``"all"``: every parameter;
        * any other string: a regular expression, ``re.search`` over parameter names.

        With a LoRA adapter (:meth:`add_lora`) only adapter parameters are candidates (the base
        weights stay frozen), matched by the name of the adapter layer, e.g.
        ``...attn2.to_q.lora_A.default.weight``.

        Parameters
        ----------
        pattern
            The preset or regular expression.

        Returns
        -------
        list of (str, torch.nn.Parameter)
            In ``named_parameters`` order.

        Raises
        ------
        ValueError
            If the pattern is not a valid regular expression or selects nothing.
        """
        owner = "DiffusersScoreModel.trainable_parameters"
        if not isinstance(pattern, str):
            raise TypeError(
                f"{owner}: parameter 'pattern' must be a string (a preset {ESD_PRESETS}, 'all' "
                f"or a regular expression), got {type(pattern).__name__}"
            )
        candidates = dict(self.module.named_parameters())
        if self._lora is not None:
            candidates = {k: v for k, v in candidates.items() if _LORA_NAME.search(k)}
        if pattern in ESD_PRESETS:
            pred = self._name_predicate(pattern, owner, "pattern")
            chosen = {
                f"{mname}.{pname}"
                for mname, m in self._linear_modules()
                if pred(mname)
                for pname, _ in m.named_parameters(recurse=False)
            }
            selected = [(k, v) for k, v in candidates.items() if k in chosen]
        elif pattern == "all":
            selected = list(candidates.items())
        else:
            pred = self._name_predicate(pattern, owner, "pattern")
            selected = [(k, v) for k, v in candidates.items() if pred(k)]
        if not selected:
            scope = "LoRA adapter parameters" if self._lora is not None else "parameters"
            raise ValueError(
                f"{owner}: parameter 'pattern'={pattern!r} matched none of the "
                f"{len(candidates)} {scope} of the {type(self.module).__name__}"
                + (" (it has no cross-attention 'attn2' layers)" if pattern == "esd-x" else "")
            )
        return selected

    def freeze_except(self, pattern: str) -> list[str]:
        """Train only the parameters :meth:`trainable_parameters` selects; freeze the rest.

        Sets ``requires_grad`` on every UNet parameter (``True`` exactly for the selection).

        Returns
        -------
        list of str
            The names of the trainable parameters.
        """
        selected = {name for name, _ in self.trainable_parameters(pattern)}
        for name, p in self.module.named_parameters():
            p.requires_grad_(name in selected)
        return [name for name, _ in self.module.named_parameters() if name in selected]

    # ------------------------------------------------------------------ LoRA
    @property
    def has_lora(self) -> bool:
        """Whether a LoRA adapter was added with :meth:`add_lora`."""
        return self._lora is not None

    def add_lora(
        self,
        rank: int,
        target_modules: str | Sequence[str] | None = None,
        *,
        alpha: float | None = None,
        adapter_name: str = "default",
    ) -> list[str]:
        r"""Inject a LoRA adapter (peft) into the UNet; only its weights stay trainable.

        Each selected layer :math:`W` becomes :math:`W + \frac{\alpha}{r} B A` with
        :math:`A \in \mathbb R^{r\times d_{in}}`, :math:`B = 0` at initialisation (so the model
        is unchanged until trained). The base weights are frozen and shared with the frozen
        teacher (:meth:`teacher`), which runs the same UNet with the adapter disabled.
        ``UNet2DConditionModel`` uses its ``add_adapter``; ``UNet2DModel`` peft's
        ``inject_adapter_in_model``.

        Parameters
        ----------
        rank
            LoRA rank :math:`r >= 1`.
        target_modules
            ``None`` (default: the attention projections ``to_q``, ``to_k``, ``to_v``,
            ``to_out.0``), a preset ``"esd-x"`` / ``"esd-u"`` (``Linear``/``Conv2d`` layers in /
            outside cross-attention), a regular expression (``re.search`` over module names) or
            a list of module names (suffix match, peft's convention).
        alpha
            LoRA scale numerator :math:`\alpha > 0` (default ``rank``: scale 1).
        adapter_name
            peft adapter name.

        Returns
        -------
        list of str
            The adapted module names.

        Raises
        ------
        ValueError
            If an adapter exists already, ``rank``/``alpha`` are invalid or nothing matches.
        """
        owner = "DiffusersScoreModel.add_lora"
        if self._lora is not None:
            raise ValueError(f"{owner}: this model already has a LoRA adapter {self._lora}")
        if not _is_int(rank) or int(rank) < 1:
            raise ValueError(f"{owner}: parameter 'rank' must be an int >= 1, got {rank!r}")
        a = float(rank) if alpha is None else alpha
        if not isinstance(a, numbers.Real) or not math.isfinite(float(a)) or float(a) <= 0:
            raise ValueError(f"{owner}: parameter 'alpha' must be a number > 0, got {alpha!r}")
        if not isinstance(adapter_name, str) or not adapter_name:
            raise ValueError(
                f"{owner}: parameter 'adapter_name' must be a non-empty string, got "
                f"{adapter_name!r}"
            )
        peft = _import_peft(owner)
        from peft.tuners.tuners_utils import BaseTunerLayer

        names = self._resolve_modules(target_modules, owner)
        config = peft.LoraConfig(
            r=int(rank), lora_alpha=float(a), target_modules=names, lora_dropout=0.0
        )
        if hasattr(self.module, "add_adapter"):  # diffusers' PeftAdapterMixin
            self.module.add_adapter(config, adapter_name=adapter_name)
        else:
            peft.inject_adapter_in_model(config, self.module, adapter_name=adapter_name)
        self._tuner_layers = [m for m in self.module.modules() if isinstance(m, BaseTunerLayer)]
        self._lora_params = [
            p for name, p in self.module.named_parameters() if _LORA_NAME.search(name)
        ]
        for p in self.module.parameters():
            p.requires_grad_(False)
        for p in self._lora_params:
            p.requires_grad_(True)
        self._lora = {
            "rank": int(rank),
            "alpha": float(a),
            "target_modules": names,
            "adapter_name": adapter_name,
        }
        return list(names)

    @contextlib.contextmanager
    def _adapters_disabled(self) -> Iterator[None]:
        """Run the UNet without its LoRA adapter; restores adapters and ``requires_grad`` after."""
        flags = [(p, p.requires_grad) for p in self._lora_params]
        for layer in self._tuner_layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self._tuner_layers:
                layer.enable_adapters(True)
            for p, flag in flags:
                p.requires_grad_(flag)

    def teacher(self) -> DiffusersTeacher:
        """The frozen pretrained model: the same UNet with the LoRA adapter disabled.

        No weights are copied: every call of the returned score model disables the adapter for
        its forward and re-enables it afterwards, so the teacher is the UNet as it was before
        :meth:`add_lora` however the adapter is trained.

        Raises
        ------
        ValueError
            If the model has no LoRA adapter (use :meth:`frozen_copy` for full fine-tuning).
        """
        if self._lora is None:
            raise ValueError(
                "DiffusersScoreModel.teacher: the model has no LoRA adapter, so a frozen "
                "teacher is not free; call add_lora(rank) first, or use frozen_copy() (a "
                "weight copy) for full fine-tuning"
            )
        return DiffusersTeacher(self)

    def frozen_copy(self) -> DiffusersScoreModel:
        """A frozen snapshot of the current model (the UNet deep-copied, ``requires_grad=False``).

        The teacher for full fine-tuning; it costs a second copy of the weights.
        """
        clone = copy.copy(self)
        clone.module = copy.deepcopy(self.module)
        clone.module.requires_grad_(False)
        clone._tuner_layers, clone._lora_params = [], []
        if self._lora is not None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            clone._tuner_layers = [
                m for m in clone.module.modules() if isinstance(m, BaseTunerLayer)
            ]
            clone._lora_params = [
                p for n, p in clone.module.named_parameters() if _LORA_NAME.search(n)
            ]
            clone._lora = dict(self._lora)
        return clone

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Save the UNet, the scheduler config and the adapter settings under ``directory``.

        Layout: ``unet/`` (diffusers format; with LoRA, the *base* weights, loadable by
        ``UNet2DModel.from_pretrained``), ``scheduler/`` (``scheduler_config.json``),
        ``lora.safetensors`` (the adapter weights, if any), ``null_embedding.safetensors``
        (``UNet2DConditionModel``) and ``dualdiff_adapter.json`` (prediction type, clipping,
        LoRA settings, dtype).

        Returns
        -------
        pathlib.Path
            The directory.
        """
        from safetensors.torch import save_file

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        state = self.module.state_dict()
        base = {
            k.replace(".base_layer.", "."): v.detach().contiguous().cpu()
            for k, v in state.items()
            if not _LORA_NAME.search(k)
        }
        self.module.save_config(root / "unet")  # type: ignore[operator]
        save_file(base, str(root / "unet" / _WEIGHTS_FILE))
        if self._lora is not None:
            lora = {k: v.detach().contiguous().cpu() for k, v in state.items()
                    if _LORA_NAME.search(k)}
            save_file(lora, str(root / "lora.safetensors"))
        if self.null_embedding is not None:
            save_file(
                {"null_embedding": self.null_embedding.contiguous().cpu()},
                str(root / "null_embedding.safetensors"),
            )
        self.scheduler.save_pretrained(root / "scheduler")
        meta = {
            "format": _FORMAT_VERSION,
            "unet_class": type(self.module).__name__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "prediction_type": self.prediction_type,
            "clip_sample": self.clip_sample,
            "clip_sample_range": self.clip_sample_range,
            "lora": self._lora,
        }
        (root / _META_FILE).write_text(json.dumps(meta, indent=2))
        return root

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DiffusersScoreModel:
        """Load a model written by :meth:`save_pretrained` (nothing is downloaded).

        Raises
        ------
        FileNotFoundError
            If ``directory`` holds no ``dualdiff_adapter.json``.
        ValueError
            If the saved UNet or scheduler class is unknown, or the weights do not match.
        """
        from safetensors.torch import load_file

        owner = "DiffusersScoreModel.from_pretrained"
        root = Path(directory)
        meta_path = root / _META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{owner}: no {_META_FILE} in {str(root)!r}; expected a directory written by "
                "DiffusersScoreModel.save_pretrained"
            )
        meta = json.loads(meta_path.read_text())
        unet_classes = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
        unet_cls = unet_classes.get(meta.get("unet_class"))
        if unet_cls is None:
            raise ValueError(
                f"{owner}: unknown unet_class={meta.get('unet_class')!r} in {meta_path}; "
                f"allowed: {sorted(unet_classes)}"
            )
        dtype = getattr(torch, str(meta.get("dtype", "float32")))
        unet = unet_cls.from_pretrained(root / "unet", torch_dtype=dtype)
        sched_cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        sched_name = sched_cfg.get("_class_name")
        sched_cls = getattr(diffusers, str(sched_name), None)
        if not (isinstance(sched_cls, type) and issubclass(sched_cls, diffusers.SchedulerMixin)):
            raise ValueError(
                f"{owner}: unknown scheduler class {sched_name!r} in "
                f"{root / 'scheduler' / 'scheduler_config.json'}"
            )
        scheduler = sched_cls.from_pretrained(root / "scheduler")
        null = None
        if (root / "null_embedding.safetensors").is_file():
            null = load_file(str(root / "null_embedding.safetensors"))["null_embedding"]
        model = cls(
            unet,
            scheduler,
            prediction_type=meta["prediction_type"],
            clip_sample=meta["clip_sample"],
            clip_sample_range=meta["clip_sample_range"],
            null_embedding=null,
        )
        lora = meta.get("lora")
        if lora is not None:
            model.add_lora(
                lora["rank"],
                lora["target_modules"],
                alpha=lora["alpha"],
                adapter_name=lora["adapter_name"],
            )
            weights = load_file(str(root / "lora.safetensors"))
            missing, unexpected = model.module.load_state_dict(weights, strict=False)
            lora_missing = [k for k in missing if _LORA_NAME.search(k)]
            if lora_missing or unexpected:
                raise ValueError(
                    f"{owner}: the LoRA weights in {root / 'lora.safetensors'} do not match the "
                    f"adapter (missing {lora_missing[:3]}, unexpected {list(unexpected)[:3]})"
                )
        return model


class DiffusersTeacher:
    """Frozen view of a LoRA :class:`DiffusersScoreModel`: the same UNet, adapter disabled.

    Made by :meth:`DiffusersScoreModel.teacher`. Its ``score``/``eps``/``eps_many`` run the
    student's UNet with peft's adapters disabled (then re-enabled), so it equals the pretrained
    model without a second copy of the weights. It owns no parameters (``parameters()`` is
    empty) and ``train``/``eval`` do not touch the shared UNet.
    """

    def __init__(self, student: DiffusersScoreModel) -> None:
        if not isinstance(student, DiffusersScoreModel) or not student.has_lora:
            raise TypeError(
                "DiffusersTeacher: parameter 'student' must be a DiffusersScoreModel with a LoRA "
                f"adapter, got {type(student).__name__}"
            )
        self._student = student

    def __repr__(self) -> str:
        return f"DiffusersTeacher(of={self._student!r})"

    @property
    def module(self) -> nn.Module:
        """The shared UNet (with its adapter; the teacher disables it per call)."""
        return self._student.module

    @property
    def schedule(self) -> DiffusersSchedule:
        """The student's schedule."""
        return self._student.schedule

    @property
    def num_classes(self) -> int | None:
        """The student's number of real classes (``None`` if not class-conditional)."""
        return self._student.num_classes

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """No parameters: the teacher is frozen."""
        return iter(())

    def train(self, mode: bool = True) -> DiffusersTeacher:
        """No-op (the UNet's mode belongs to the student); returns ``self``."""
        return self

    def eval(self) -> DiffusersTeacher:
        """No-op (the UNet's mode belongs to the student); returns ``self``."""
        return self

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """Pretrained noise prediction (see :meth:`DiffusersScoreModel.eps`)."""
        with self._student._adapters_disabled():
            return self._student.eps(x, t, cond)

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        """Pretrained score (see :meth:`DiffusersScoreModel.score`)."""
        with self._student._adapters_disabled():
            return self._student.score(x, t, cond)

    def eps_many(
        self, x: torch.Tensor, t: torch.Tensor | float, conds: Sequence[Any]
    ) -> torch.Tensor:
        """Pretrained noise predictions for several conditions in one forward, ``(k, n, ...)``."""
        with self._student._adapters_disabled():
            return self._student.eps_many(x, t, conds)

    def score_many(
        self, x: torch.Tensor, t: torch.Tensor | float, conds: Sequence[Any]
    ) -> torch.Tensor:
        """Pretrained scores for several conditions in one forward, ``(k, n, ...)``."""
        with self._student._adapters_disabled():
            return self._student.score_many(x, t, conds)
