"""Overhead of the diffusers adapter over bare UNet calls, and the cost of batched conditions.

Model: a tiny random-config ``UNet2DModel`` (1 channel, 8x8, block_out_channels (8, 16), one
attention down/up block, ``num_class_embeds = 4``: 3 classes + the null class), float32,
``DDPMScheduler(clip_sample=False)``; inference (``torch.no_grad``), one thread.

Measured (CPU and wall time per call, medians over ``--repeats`` rounds of ``--calls`` calls;
the variants of a table alternate within each round so machine load hits them alike):

1. **adapter overhead**: ``DiffusersScoreModel.eps(x, t, cond)`` (time broadcast and clamp,
   schedule lookup, float timestep, class labels, prediction conversion) against the bare call
   ``unet(x, tau, class_labels=labels).sample`` with precomputed ``tau`` and ``labels``; ratio
   adapter / bare. The row ``adapter_work_only`` times that extra work alone (the UNet output
   precomputed), which is less sensitive to machine noise than the difference of two forwards.
   Also the LoRA teacher (adapter disabled and re-enabled per call) against the bare call of
   the LoRA UNet with its adapter.
2. **batched conditions**: ``eps_many(x, t, conds)`` with ``k`` conditions against one bare
   forward of batch ``k * n`` and against ``k`` separate ``eps`` calls.

The tiny UNet is the worst case for the adapter's fixed per-call cost (its forward takes a few
ms at n = 16 on one CPU core); the relative overhead shrinks as the UNet grows.

Run:  python benchmarks/bench_diffusers_adapter.py [--n 16] [--calls 20] [--repeats 15]
      [--threads 1] [--quick]
Writes benchmarks/results/bench_diffusers_adapter.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import DDPMScheduler, UNet2DModel

from dualdiff.adapters.diffusers import DiffusersScoreModel
from dualdiff.cli import environment, format_table, limit_threads

RESULTS = Path(__file__).resolve().parent / "results" / "bench_diffusers_adapter.json"


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
        num_class_embeds=4,
    )


def time_variants(
    variants: dict[str, Callable[[], Any]], calls: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds per call of each variant (variants alternate per round)."""
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            for _ in range(3):
                fn()
        for _ in range(repeats):
            for name, fn in variants.items():
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    fn()
                cpu[name].append((time.process_time() - c0) / calls)
                wall[name].append((time.perf_counter() - w0) / calls)
    return {
        k: {"cpu_s": statistics.median(cpu[k]), "wall_s": statistics.median(wall[k])}
        for k in variants
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="batch size n")
    ap.add_argument("--calls", type=int, default=20, help="calls per timed round")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds (medians)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--quick", action="store_true", help="smoke run (few repeats)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.calls, args.repeats, args.ks = 5, 3, [1, 4]

    with limit_threads(args.threads):
        model = DiffusersScoreModel(tiny_unet(), DDPMScheduler(clip_sample=False)).eval()
        unet = model.module
        n = args.n
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 1, 8, 8, generator=g)
        t = torch.rand(n, generator=g) * 0.9 + 0.05
        tau = t * model.schedule.num_train_timesteps - 1.0  # precomputed for the bare call
        labels = torch.full((n,), 1, dtype=torch.long)

        # Sanity: the adapter calls the same network (the timings compare equal work).
        with torch.no_grad():
            bare_out = unet(x, tau, class_labels=labels).sample
            assert torch.allclose(model.eps(x, t, 1), bare_out, atol=1e-6)

        def adapter_work() -> torch.Tensor:
            # Everything eps() does except the UNet forward (whose output is precomputed).
            tt, alpha, sigma = model._prepare(x, t, "eps")
            model._batch_cond(1, n, x.device, "eps")
            model.schedule.timestep(tt)
            return model._to_eps(bare_out.to(x.dtype), x, alpha, sigma)

        rows: list[dict[str, Any]] = []
        res = time_variants(
            {
                "bare": lambda: unet(x, tau, class_labels=labels).sample,
                "adapter_work_only": adapter_work,
                "adapter_eps": lambda: model.eps(x, t, 1),
                "adapter_score": lambda: model.score(x, t, 1),
            },
            args.calls,
            args.repeats,
        )
        for name in ("adapter_work_only", "adapter_eps", "adapter_score"):
            rows.append(
                {
                    "table": "overhead",
                    "case": name,
                    "n": n,
                    "cpu_ms": 1e3 * res[name]["cpu_s"],
                    "bare_cpu_ms": 1e3 * res["bare"]["cpu_s"],
                    "ratio_cpu": res[name]["cpu_s"] / res["bare"]["cpu_s"],
                    "ratio_wall": res[name]["wall_s"] / res["bare"]["wall_s"],
                }
            )

        lora_model = DiffusersScoreModel(tiny_unet(), DDPMScheduler(clip_sample=False)).eval()
        lora_model.add_lora(rank=4)
        teacher = lora_model.teacher()
        lunet = lora_model.module
        res = time_variants(
            {
                "bare_lora": lambda: lunet(x, tau, class_labels=labels).sample,
                "student_eps": lambda: lora_model.eps(x, t, 1),
                "teacher_eps": lambda: teacher.eps(x, t, 1),
            },
            args.calls,
            args.repeats,
        )
        for name in ("student_eps", "teacher_eps"):
            rows.append(
                {
                    "table": "overhead",
                    "case": f"lora_{name}",
                    "n": n,
                    "cpu_ms": 1e3 * res[name]["cpu_s"],
                    "bare_cpu_ms": 1e3 * res["bare_lora"]["cpu_s"],
                    "ratio_cpu": res[name]["cpu_s"] / res["bare_lora"]["cpu_s"],
                    "ratio_wall": res[name]["wall_s"] / res["bare_lora"]["wall_s"],
                }
            )

        for k in args.ks:
            conds = [None] + [i % 3 for i in range(k - 1)]
            xk, tauk = x.repeat(k, 1, 1, 1), tau.repeat(k)
            labk = torch.cat([torch.full((n,), 3 if c is None else c) for c in conds])
            res = time_variants(
                {
                    "bare_kn": lambda xk=xk, tauk=tauk, labk=labk: unet(
                        xk, tauk, class_labels=labk
                    ).sample,
                    "eps_many": lambda conds=conds: model.eps_many(x, t, conds),
                    "separate": lambda conds=conds: [model.eps(x, t, c) for c in conds],
                },
                args.calls,
                args.repeats,
            )
            rows.append(
                {
                    "table": "batched",
                    "case": f"k={k}",
                    "n": n,
                    "k": k,
                    "eps_many_cpu_ms": 1e3 * res["eps_many"]["cpu_s"],
                    "bare_kn_cpu_ms": 1e3 * res["bare_kn"]["cpu_s"],
                    "separate_cpu_ms": 1e3 * res["separate"]["cpu_s"],
                    "many_over_bare_kn_cpu": res["eps_many"]["cpu_s"] / res["bare_kn"]["cpu_s"],
                    "many_over_separate_cpu": res["eps_many"]["cpu_s"]
                    / res["separate"]["cpu_s"],
                    "many_over_bare_kn_wall": res["eps_many"]["wall_s"]
                    / res["bare_kn"]["wall_s"],
                }
            )

    over = [r for r in rows if r["table"] == "overhead"]
    print(
        format_table(
            ["case", "n", "adapter[ms]", "bare[ms]", "ratio(cpu)", "ratio(wall)"],
            [
                [
                    r["case"], str(r["n"]), f"{r['cpu_ms']:.3f}", f"{r['bare_cpu_ms']:.3f}",
                    f"{r['ratio_cpu']:.3f}", f"{r['ratio_wall']:.3f}",
                ]
                for r in over
            ],
            right={1, 2, 3, 4, 5},
        )
    )
    print()
    bat = [r for r in rows if r["table"] == "batched"]
    print(
        format_table(
            ["k", "eps_many[ms]", "bare k*n[ms]", "k x eps[ms]", "many/bare(cpu)",
             "many/separate(cpu)"],
            [
                [
                    str(r["k"]), f"{r['eps_many_cpu_ms']:.3f}", f"{r['bare_kn_cpu_ms']:.3f}",
                    f"{r['separate_cpu_ms']:.3f}", f"{r['many_over_bare_kn_cpu']:.3f}",
                    f"{r['many_over_separate_cpu']:.3f}",
                ]
                for r in bat
            ],
            right={0, 1, 2, 3, 4, 5},
        )
    )
    out = {
        "benchmark": "bench_diffusers_adapter",
        "settings": {
            "n": args.n,
            "calls": args.calls,
            "repeats": args.repeats,
            "threads": args.threads,
            "ks": args.ks,
            "quick": args.quick,
            "unet_parameters": sum(p.numel() for p in tiny_unet().parameters()),
            "dtype": "float32",
        },
        "rows": rows,
        "environment": environment(args.threads),
    }
    import diffusers
    import peft

    out["environment"].update({"diffusers": diffusers.__version__, "peft": peft.__version__})
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {RESULTS}")
    return out


if __name__ == "__main__":
    main()
