r"""Pretrain the class-conditional digits DDPM shipped under ``dualdiff/datasets/digits_ddpm/``.

Run (about ten minutes on one CPU core)::

    OMP_NUM_THREADS=1 python -m dualdiff.datasets.digits_pretrain \
        --output src/dualdiff/datasets/digits_ddpm

Training: the epsilon-prediction DDPM loss
:math:`E_{x_0, c, t, \epsilon} \|\epsilon - \hat\epsilon_\theta(\sqrt{\bar\alpha_t} x_0 +
\sqrt{1-\bar\alpha_t}\,\epsilon, t, \tilde c)\|^2` with :math:`t` uniform on the 1000 training
steps, on the training split of :func:`dualdiff.datasets.digits.load_digits_split`; the label
:math:`\tilde c` is replaced by the null class with probability ``cond_dropout`` so that one
network is both the conditional and the unconditional model. AdamW with a linear warm-up and
cosine decay; the saved weights are an exponential moving average (EMA) of the iterates.
Everything is seeded (``torch.manual_seed`` and one ``torch.Generator``) and runs in a single
thread, so a rerun on the same platform and torch/diffusers versions reproduces the file.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .digits import NULL_CLASS, load_digits_split
from .digits_model import make_digits_scheduler, make_digits_unet

__all__ = ["main", "pretrain_digits_ddpm"]


def pretrain_digits_ddpm(
    output: str | Path,
    *,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 2e-3,
    warmup: int = 100,
    cond_dropout: float = 0.15,
    ema_decay: float = 0.998,
    seed: int = 0,
    log_every: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the digits UNet and save it (EMA weights) with its scheduler under ``output``.

    Parameters
    ----------
    output
        Directory receiving ``unet/`` (safetensors), ``scheduler/`` and ``training_log.json``.
    steps, batch_size, lr, warmup
        Optimiser steps, batch size, peak AdamW learning rate and linear warm-up steps.
    cond_dropout
        Probability in ``[0, 1)`` of replacing a label by the null class ``NULL_CLASS``.
    ema_decay
        Decay in ``[0, 1)`` of the exponential moving average that is saved.
    seed
        Seed of everything random.
    log_every
        Steps per entry of the loss log (mean loss over the block).
    progress
        Print the log entries as they come.

    Returns
    -------
    dict
        The training log written to ``training_log.json``: ``loss`` (block means), ``steps``,
        ``wall_time_s`` and the hyper-parameters.
    """
    owner = "pretrain_digits_ddpm"
    for name, value, low in (
        ("steps", steps, 1),
        ("batch_size", batch_size, 1),
        ("warmup", warmup, 0),
        ("seed", seed, 0),
        ("log_every", log_every, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{owner}: parameter '{name}' must be an int >= {low}, got {value!r}")
    for name, fvalue in (("cond_dropout", cond_dropout), ("ema_decay", ema_decay)):
        if not isinstance(fvalue, (int, float)) or not 0.0 <= fvalue < 1.0:
            raise ValueError(f"{owner}: parameter '{name}' must be in [0, 1), got {fvalue!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"{owner}: parameter 'lr' must be a number > 0, got {lr!r}")
    out = Path(output)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    split = load_digits_split()
    x_all, y_all = split.train_images, split.train_labels
    unet = make_digits_unet()
    unet.train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = make_digits_scheduler()
    abar = scheduler.alphas_cumprod.to(torch.float32)
    n_t = int(scheduler.config.num_train_timesteps)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[float] = []
    block: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(x_all.shape[0], (batch_size,), generator=gen)
        x0, y = x_all[idx], y_all[idx].clone()
        drop = torch.rand(batch_size, generator=gen) < cond_dropout
        y[drop] = NULL_CLASS
        t = torch.randint(n_t, (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = (unet(xt, t, class_labels=y).sample - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1.0 - decay)
        block.append(float(loss.detach()))
        if len(block) == log_every or step == steps - 1:
            losses.append(sum(block) / len(block))
            block = []
            if progress:
                print(
                    f"step {step + 1}/{steps} loss {losses[-1]:.4f} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    log: dict[str, Any] = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "cond_dropout": cond_dropout,
        "ema_decay": ema_decay,
        "seed": seed,
        "log_every": log_every,
        "loss": losses,
        "wall_time_s": wall,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m dualdiff.datasets.digits_pretrain --output DIR``."""
    ap = argparse.ArgumentParser(
        prog="python -m dualdiff.datasets.digits_pretrain", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--output", required=True, help="save_pretrained directory to write")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = pretrain_digits_ddpm(
        args.output,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        log_every=args.log_every,
        progress=not args.quiet,
    )
    print(f"saved to {args.output}: final loss {log['loss'][-1]:.4f}, {log['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
