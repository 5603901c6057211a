"""Engine overhead on the digits UNet: one dualdiff primal-dual step vs a bare diffusers step.

Both sides train the shipped digits ``UNet2DModel`` (about 0.7 M parameters, float32, one
thread) with **the same loss and batch**: FU's signed denoising loss on the null-class view,

.. math::
    \\mathcal L = \\frac{1}{1-\\lambda}\\,\\overline{\\ell}(x^{r}) - \\frac{\\lambda}{1-\\lambda}
    \\,\\overline{\\ell}(x^{f}),\\qquad \\ell = \\|\\hat\\epsilon(x_t, t) - \\epsilon\\|^2/D,

``n`` retain images and ``n`` forget images per step, Adam (lr 1e-4), no clipping.

* **dualdiff**: ``PrimalDualTrainer(KLConstrainedProblem(Conditioned(teacher, None), [forget],
  direction="forward", ...), Conditioned(student, None), primal="composed", estimator=const)``;
  one ``trainer.step()`` = batch draw + adapter calls + Cooper's Lagrangian and its primal and
  dual updates (the constraint estimator is a constant, so its cost is not counted: what is
  measured is the engine's overhead on the training step).
* **bare**: the textbook diffusers loop: index draw, integer timesteps, ``scheduler.add_noise``,
  ``unet(x_t, timesteps, class_labels=null).sample``, MSE, ``backward``, ``Adam.step``.

Rounds alternate the two (``--steps`` steps each) so machine load hits both alike; the ratio is
of the median per-step times (process CPU time, and wall time). Goal: <= 1.10.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_unet_overhead.py [--n 64] [--steps 5]
      [--rounds 7] [--quick]
Writes benchmarks/results/bench_unet_overhead.json (``--quick``: /tmp/bench_unet_overhead.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "bench_unet_overhead.json"


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="retain and forget batch size")
    ap.add_argument("--steps", type=int, default=5, help="steps per round and side")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    ap.add_argument("--lam", type=float, default=0.01, help="fixed multiplier (< 30/1500)")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 3 steps, JSON to /tmp")
    args = ap.parse_args(argv)
    if min(args.n, args.steps, args.rounds) < 1:
        ap.error("--n, --steps and --rounds must be >= 1")
    if args.quick:
        args.steps, args.rounds = 3, 3
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import dualdiff
    from dualdiff import Conditioned, PrimalDualTrainer
    from dualdiff.datasets.digits import N_TRAIN, NULL_CLASS, forget_indices, load_digits_split
    from dualdiff.datasets.digits_model import load_digits_score_model
    from dualdiff.problems.contract import ConstraintEstimate

    split = load_digits_split()
    idx = forget_indices()
    keep = torch.ones(N_TRAIN, dtype=torch.bool)
    keep[idx] = False
    retain, forget = split.train_images[keep], split.train_images[idx]
    net = load_digits_score_model()
    teacher = net.frozen_copy()
    kl: Any = dualdiff.KLConstrainedProblem  # typed for closed forms; dispatches on models
    problem = kl(
        Conditioned(teacher, None), [forget], bounds=[1.0], direction="forward",
        pretrained_data=retain, training_set_size=N_TRAIN,
    )
    const = ConstraintEstimate(
        constraints=torch.zeros(1, dtype=torch.float64),
        constraint_stderr=torch.zeros(1, dtype=torch.float64),
        violations=problem.violations(torch.zeros(1, dtype=torch.float64)),
    )

    # dualdiff side
    student_d = copy.deepcopy(net)
    student_d.train()
    trainer = PrimalDualTrainer(
        problem, Conditioned(student_d, None), primal="composed", batch_size=args.n,
        estimator=lambda model, generator=None: const, init_multipliers=[args.lam],
        dual_lr=1e-6, primal_lr=1e-4, seed=0,
    )

    # bare side
    unet = copy.deepcopy(net.module)
    unet.train()
    sched = net.scheduler
    opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    a = 1.0 / (1.0 - args.lam)
    b = args.lam / (1.0 - args.lam)
    n_steps = sched.config.num_train_timesteps

    def dsm(x0: torch.Tensor) -> torch.Tensor:
        k = torch.randint(0, n_steps, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = sched.add_noise(x0, eps, k)
        labels = torch.full((x0.shape[0],), NULL_CLASS, dtype=torch.int64)
        pred = unet(xt, k, class_labels=labels).sample
        return (pred - eps).pow(2).flatten(1).mean(1).mean()

    def bare_step() -> None:
        xr = retain[torch.randint(0, retain.shape[0], (args.n,), generator=gen)]
        xf = forget[torch.randint(0, forget.shape[0], (args.n,), generator=gen)]
        loss = a * dsm(xr) - b * dsm(xf)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(fn: Any) -> tuple[float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(args.steps):
            fn()
        return ((time.process_time() - c0) / args.steps, (time.perf_counter() - w0) / args.steps)

    timed(bare_step)  # warm-up both
    timed(trainer.step)
    cpu_d, cpu_b, wall_d, wall_b = [], [], [], []
    for _ in range(args.rounds):
        c, w = timed(trainer.step)
        cpu_d.append(c)
        wall_d.append(w)
        c, w = timed(bare_step)
        cpu_b.append(c)
        wall_b.append(w)
    med = statistics.median
    out = {
        "benchmark": "bench_unet_overhead",
        "model": "shipped digits UNet2DModel (float32)",
        "loss": "FU signed denoising loss, null-class view",
        "batch": {"retain": args.n, "forget": args.n},
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "dualdiff_step_cpu_s": med(cpu_d),
        "bare_step_cpu_s": med(cpu_b),
        "ratio_cpu": med(cpu_d) / med(cpu_b),
        "dualdiff_step_wall_s": med(wall_d),
        "bare_step_wall_s": med(wall_b),
        "ratio_wall": med(wall_d) / med(wall_b),
        "goal": "ratio <= 1.10",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    path = Path("/tmp/bench_unet_overhead.json") if args.quick else RESULTS
    _write(path, out)
    print(
        f"dualdiff step {out['dualdiff_step_cpu_s'] * 1e3:.1f} ms CPU, bare diffusers step "
        f"{out['bare_step_cpu_s'] * 1e3:.1f} ms CPU: ratio {out['ratio_cpu']:.3f} "
        f"(wall ratio {out['ratio_wall']:.3f}; goal <= 1.10)"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
