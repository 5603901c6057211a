"""The 2-D ring of eight Gaussians and a small MLP noise-prediction model pretrained on it.

The shipped checkpoint ``ring8_eps_mlp.pt`` was made by
``python -m dualdiff.datasets.ring --output src/dualdiff/datasets/ring8_eps_mlp.pt``
(the defaults of
:func:`pretrain_ring_model`); rerunning it reproduces the file up to floating-point
non-determinism of the platform.
"""

from __future__ import annotations

import argparse
import math
from importlib import resources

import torch

from ..diffusion.losses import denoising_score_matching_loss
from ..models.gaussian_mixture import GaussianMixture
from ..models.module_adapter import MLPScoreNet, ModuleScoreModel

__all__ = ["load_pretrained_ring", "pretrain_ring_model", "ring_mixture"]

#: Architecture of the shipped model.
ARCH = {"dim": 2, "hidden": 128, "depth": 3, "time_embedding_dim": 32}
CHECKPOINT = "ring8_eps_mlp.pt"


def ring_mixture(
    n: int = 8, radius: float = 4.0, std: float = 0.5, dtype: torch.dtype = torch.float64
) -> GaussianMixture:
    r"""Equal-weight mixture of ``n`` isotropic Gaussians (std ``std``) on a circle of ``radius``.

    Component ``k`` sits at angle :math:`2\pi k/n`.
    """
    ang = torch.arange(n, dtype=dtype) * (2 * math.pi / n)
    means = torch.stack([radius * ang.cos(), radius * ang.sin()], -1)
    return GaussianMixture(torch.full((n,), 1.0 / n, dtype=dtype), means, std**2)


def pretrain_ring_model(
    steps: int = 8000,
    batch_size: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
) -> ModuleScoreModel:
    """Train :class:`MLPScoreNet` by denoising score matching on :func:`ring_mixture` samples."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    p0 = ring_mixture()
    net = MLPScoreNet(**ARCH)
    model = ModuleScoreModel(net, prediction="eps")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="pretraining ring model")
    for _ in it:
        x = p0.sample(batch_size, generator=gen).float()
        loss = denoising_score_matching_loss(model, x, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    return model


def load_pretrained_ring() -> ModuleScoreModel:
    """The shipped pretrained ring model (float32, CPU), wrapped as a score model."""
    net = MLPScoreNet(**ARCH)
    ref = resources.files("dualdiff.datasets").joinpath(CHECKPOINT)
    with resources.as_file(ref) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return ModuleScoreModel(net, prediction="eps")


def _main() -> None:  # pragma: no cover - regeneration script
    parser = argparse.ArgumentParser(description="Pretrain the demo's ring model.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=8000)
    args = parser.parse_args()
    model = pretrain_ring_model(steps=args.steps, progress=True)
    torch.save(model.module.state_dict(), args.output)


if __name__ == "__main__":  # pragma: no cover
    _main()
