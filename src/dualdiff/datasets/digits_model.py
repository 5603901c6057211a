r"""The class-conditional digits DDPM: architecture, shipped checkpoint and a DDIM sampler.

The model is a :class:`diffusers.UNet2DModel` on ``(n, 1, 8, 8)`` images in :math:`[-1, 1]`
predicting the noise :math:`\epsilon` of a :class:`diffusers.DDPMScheduler`, conditioned on a
class label ``c`` in ``0..9`` or the null label ``NULL_CLASS = 10`` (unconditional; the model was
trained with condition dropout, so the null label gives the marginal model :math:`p_0`).
The checkpoint under ``dualdiff/datasets/digits_ddpm/`` (``unet/`` in safetensors and
``scheduler/``, diffusers ``save_pretrained`` format) was made by::

    OMP_NUM_THREADS=1 python -m dualdiff.datasets.digits_pretrain \
        --output src/dualdiff/datasets/digits_ddpm

Requires the ``[digits]`` extra (diffusers); ``import dualdiff`` does not import it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .digits import NULL_CLASS, NUM_CLASSES

__all__ = [
    "CHECKPOINT_DIR",
    "SCHEDULER_CONFIG",
    "UNET_CONFIG",
    "load_digits_ddpm",
    "load_digits_score_model",
    "make_digits_scheduler",
    "make_digits_unet",
    "sample_digits",
]

#: Package-data directory of the shipped checkpoint.
CHECKPOINT_DIR = "digits_ddpm"

#: Architecture of the shipped UNet (about 0.7 M parameters).
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 8,
    "num_class_embeds": NUM_CLASSES + 1,
}

#: Noise schedule of the shipped model: 1000 steps, cosine (Nichol & Dhariwal) betas.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
}


def _diffusers(owner: str) -> Any:
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{owner} needs diffusers: install the extra with "
            "`pip install 'dualdiff-unlearning[digits]'`"
        ) from exc
    return diffusers


def make_digits_unet() -> Any:
    """A freshly initialised :class:`diffusers.UNet2DModel` with :data:`UNET_CONFIG`."""
    return _diffusers("make_digits_unet").UNet2DModel(**UNET_CONFIG)


def make_digits_scheduler() -> Any:
    """A :class:`diffusers.DDPMScheduler` with :data:`SCHEDULER_CONFIG`."""
    return _diffusers("make_digits_scheduler").DDPMScheduler(**SCHEDULER_CONFIG)


def load_digits_ddpm(path: str | Path | None = None) -> tuple[Any, Any]:
    """Load the digits UNet (eval mode, float32, CPU) and its DDPM scheduler.

    Parameters
    ----------
    path
        A ``save_pretrained`` directory with ``unet/`` and ``scheduler/`` subfolders (default:
        the checkpoint shipped in the package).

    Returns
    -------
    (UNet2DModel, DDPMScheduler)
    """
    owner = "load_digits_ddpm"
    dif = _diffusers(owner)
    if path is None:
        ref = resources.files("dualdiff.datasets").joinpath(CHECKPOINT_DIR)
        with resources.as_file(ref) as p:
            return _load(dif, Path(p), owner)
    return _load(dif, Path(path), owner)


def load_digits_score_model(path: str | Path | None = None) -> Any:
    r"""The digits DDPM as a dualdiff score model (a ``DiffusersScoreModel``).

    :class:`~dualdiff.adapters.diffusers.DiffusersScoreModel` of :func:`load_digits_ddpm`:

    ``score(x, t, cond)`` with ``cond`` a class ``0..9``, or ``None`` / ``NULL_CLASS`` for the
    unconditional model. ``clip_sample=False``: the raw epsilon prediction, as likelihoods and
    training need (the scheduler's sampling-time clipping of :math:`\hat x_0` is not a score).

    Parameters
    ----------
    path
        As in :func:`load_digits_ddpm` (default: the shipped checkpoint).
    """
    from ..adapters.diffusers import DiffusersScoreModel

    unet, scheduler = load_digits_ddpm(path)
    return DiffusersScoreModel(unet, scheduler, clip_sample=False)


def _load(dif: Any, path: Path, owner: str) -> tuple[Any, Any]:
    if not (path / "unet").is_dir() or not (path / "scheduler").is_dir():
        raise FileNotFoundError(
            f"{owner}: parameter 'path' must be a directory with 'unet/' and 'scheduler/' "
            f"subfolders, got {str(path)!r}"
        )
    unet = dif.UNet2DModel.from_pretrained(path / "unet")
    unet.eval()
    scheduler = dif.DDPMScheduler.from_pretrained(path / "scheduler")
    return unet, scheduler


def _check_labels(labels: Any, owner: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype != torch.int64:
        raise TypeError(
            f"{owner}: parameter 'labels' must be a 1-D int64 torch.Tensor, got "
            f"{type(labels).__name__}"
            + (f" of shape {tuple(labels.shape)} and dtype {labels.dtype}"
               if isinstance(labels, torch.Tensor) else "")
        )
    if labels.numel() < 1 or int(labels.min()) < 0 or int(labels.max()) > NULL_CLASS:
        raise ValueError(
            f"{owner}: parameter 'labels' must be non-empty with values in 0..{NULL_CLASS} "
            f"({NULL_CLASS} = null class), got {labels.tolist()[:10]}"
        )
    return labels


@torch.no_grad()
def sample_digits(
    unet: Any,
    scheduler: Any,
    labels: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Deterministic DDIM samples (:math:`\eta = 0`) of the digits model, one per label.

    With guidance scale :math:`w` the noise prediction is the classifier-free combination
    :math:`\hat\epsilon = \hat\epsilon(x, t, \varnothing) + w\,(\hat\epsilon(x, t, c) -
    \hat\epsilon(x, t, \varnothing))`; :math:`w = 1` is the plain conditional model (one network
    call per step) and labels equal to ``NULL_CLASS`` sample the unconditional model.

    Parameters
    ----------
    unet, scheduler
        As returned by :func:`load_digits_ddpm`; the scheduler's config builds a
        :class:`diffusers.DDIMScheduler`.
    labels
        ``(n,)`` int64 labels in ``0..NULL_CLASS``.
    num_inference_steps
        Number of DDIM steps (int >= 1).
    guidance_scale
        Classifier-free guidance scale :math:`w \ge 0`.
    generator
        Seeds the initial noise :math:`x_T \sim N(0, I)`.

    Returns
    -------
    torch.Tensor
        ``(n, 1, 8, 8)`` float32 samples, clipped to :math:`[-1, 1]` by the scheduler, on the
        UNet's device. The initial noise is drawn on the CPU (``generator`` is a CPU generator)
        and moved there, so a seed gives the same noise on every device.
    """
    owner = "sample_digits"
    labels = _check_labels(labels, owner)
    if (
        not isinstance(num_inference_steps, int)
        or isinstance(num_inference_steps, bool)
        or num_inference_steps < 1
    ):
        raise ValueError(
            f"{owner}: parameter 'num_inference_steps' must be an int >= 1, got "
            f"{num_inference_steps!r}"
        )
    if not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0.0:
        raise ValueError(
            f"{owner}: parameter 'guidance_scale' must be a number >= 0, got {guidance_scale!r}"
        )
    dif = _diffusers(owner)
    ddim = dif.DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(num_inference_steps)
    n = labels.numel()
    size = unet.config.sample_size
    device = next(unet.parameters()).device
    x = torch.randn(
        (n, unet.config.in_channels, size, size), generator=generator, dtype=torch.float32
    ).to(device)
    labels = labels.to(device)
    null = torch.full_like(labels, NULL_CLASS)
    guided = guidance_scale != 1.0
    for t in ddim.timesteps:
        if guided:
            eps = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        else:
            eps = unet(x, t, class_labels=labels).sample
        x = ddim.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1.0, 1.0)
