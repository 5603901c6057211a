"""Overhead of the primal-dual engine (Cooper) over a bare PyTorch loop of the same step.

Both loops run the same computation on identical copies of the same model:

1. draw a batch (pretrained samples, diffusion times, noise) from the loop's own generator;
2. on estimation steps, call the same (cheap, synthetic) constraint estimator;
3. build (or reuse) the closed-form target at the current multipliers, compute
   self-normalised reweighting weights and their effective sample size;
4. weighted denoising score-matching loss, backward, global gradient norm + finiteness check,
   Adam step;
5. on estimation steps, the dual step lam <- Proj(lam + eta * violation) with the same
   projection, and the population effective sample size of each new target.

The engine does it through ``PrimalDualTrainer.step()`` -- one Cooper
``SimultaneousOptimizer.roll`` on the ``UnlearningCMP`` plus the trainer's bookkeeping (history
record, NaN guard, multiplier snapshot); the bare loop does it with plain torch calls. Steps
of the two loops alternate and are timed one by one (CPU and wall time; medians). The
script checks that both produce the *same* trajectory (losses, multipliers and parameters equal
bit for bit) and reports per-step time as the ratio engine / bare.

Model: ``MLPScoreNet(dim=1, hidden=128, depth=3)`` (float32) wrapped in ``ModuleScoreModel``;
problem: forward-KL unlearning of one component of a 1-D two-component mixture; batch 512.
Two schedules: a dual step every step (``estimate_every=1``) and every 10 steps.
The synthetic estimator returns a fixed constraint value, so the multipliers move on every dual
step and the target is rebuilt each time (the realistic worst case for the engine).

Goal: ratio <= 1.10 (CPU time, one thread; see benchmarks/README.md for the conventions).

Run:  python benchmarks/bench_engine.py [--steps 200] [--repeats 5] [--threads 1] [--quick]
Writes benchmarks/results/bench_engine.json.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dualdiff import GaussianMixture, KLConstrainedProblem
from dualdiff._io import dump_strict_json
from dualdiff.cli import environment, format_table, limit_threads
from dualdiff.diffusion.losses import denoising_score_matching_loss
from dualdiff.engine import (
    ConstraintEstimate,
    DualDomainProjection,
    PrimalDualTrainer,
    TargetCache,
    violations_from,
)
from dualdiff.experiments.report import results_location
from dualdiff.models.module_adapter import MLPScoreNet, ModuleScoreModel

RESULTS = Path(__file__).resolve().parent / "results" / "bench_engine.json"
GOAL = 1.10
BATCH = 512
PRIMAL_LR, DUAL_LR, MARGIN = 1e-3, 1e-4, 1e-3


def make_problem() -> Any:
    p0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
    return KLConstrainedProblem(p0, [p0.component(1)], bounds=[1.5], direction="forward")


class FixedEstimator:
    """Synthetic estimator: constraint value 1.0 (violation b - 1 = 0.5 > 0) at no cost."""

    def __init__(self, problem: Any) -> None:
        self.problem = problem
        self.c = torch.ones(problem.m, dtype=torch.float64)

    def __call__(self, model: Any, generator: torch.Generator | None) -> ConstraintEstimate:
        return ConstraintEstimate(
            constraints=self.c,
            constraint_stderr=torch.zeros_like(self.c),
            violations=violations_from(self.problem, self.c),
            method="custom",
        )


class BareLoop:
    """The same primal-dual step written with plain torch calls (no Cooper, no trainer)."""

    def __init__(self, problem: Any, model: Any, estimate_every: int, seed: int) -> None:
        self.problem = problem
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=PRIMAL_LR)
        self.lam = torch.zeros(problem.m, dtype=torch.float64)
        self.proj = DualDomainProjection(problem, margin=MARGIN)
        self.targets = TargetCache(problem)
        self.estimator = FixedEstimator(problem)
        self.every = estimate_every
        self.gen = torch.Generator().manual_seed(seed)
        self.sched = model.schedule
        self.k = 0
        self.losses: list[float] = []
        self.multipliers: list[list[float]] = []
        self.ess: list[float] = []
        self.pop_ess: list[float] = []
        self._pop_key: tuple[float, ...] | None = None

    def step(self) -> None:
        due = self.k % self.every == 0
        p0 = self.problem.pretrained
        x0 = p0.sample(BATCH, generator=self.gen).to(torch.float64)
        u = torch.rand(BATCH, dtype=torch.float64, generator=self.gen)
        t = self.sched.t_min + (self.sched.t_max - self.sched.t_min) * u
        noise = torch.randn(x0.shape, dtype=torch.float64, generator=self.gen)
        if not (torch.isfinite(x0).all() and torch.isfinite(noise).all()):
            raise FloatingPointError("non-finite batch")
        est = self.estimator(self.model, self.gen) if due else None
        target = self.targets(self.lam)
        with torch.no_grad():
            p = torch.softmax(target.log_weight(x0), 0)
            ess = float(1.0 / (BATCH * (p**2).sum()))
        dtype = self.params[0].dtype
        loss = denoising_score_matching_loss(
            self.model, x0.to(dtype), t=t.to(dtype), noise=noise.to(dtype),
            weights=(p * BATCH).to(dtype), reduction="mean",
        )
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError("non-finite loss")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(nn.utils.get_total_norm([q.grad for q in self.params if q.grad is not None]))
        if not math.isfinite(norm):
            raise FloatingPointError("non-finite gradient")
        self.opt.step()
        if est is not None:
            self.lam = self.proj(self.lam + DUAL_LR * est.violations)
        key = tuple(target.multipliers.tolist())
        if key != self._pop_key:
            self._pop_key = key
            self.pop_ess.append(float(target.population_ess(self.problem.rule)))
        self.k += 1
        self.losses.append(float(loss.detach()))
        self.multipliers.append(self.lam.tolist())
        self.ess.append(ess)


def make_model(seed: int) -> ModuleScoreModel:
    torch.manual_seed(seed)
    net = MLPScoreNet(1, hidden=128, depth=3)
    # MLPScoreNet zero-initialises its read-out; randomise it so gradients flow everywhere.
    nn.init.normal_(net.output.weight, std=0.1)
    return ModuleScoreModel(net)


def timed(step: Any) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    step()
    return time.process_time() - c0, time.perf_counter() - t0


def bench(estimate_every: int, steps: int, repeats: int, warmup: int) -> dict[str, Any]:
    problem = make_problem()
    model = make_model(0)
    engine_model, bare_model = copy.deepcopy(model), copy.deepcopy(model)
    trainer = PrimalDualTrainer(
        problem, engine_model, primal_lr=PRIMAL_LR, dual_lr=DUAL_LR, batch_size=BATCH,
        estimator=FixedEstimator(problem), estimate_every=estimate_every, domain_margin=MARGIN,
        seed=1, ess_warning=0.0,
    )
    bare = BareLoop(problem, bare_model, estimate_every, seed=1)
    times: dict[str, dict[str, list[float]]] = {
        "engine": {"cpu": [], "wall": []}, "bare": {"cpu": [], "wall": []}
    }
    for _ in range(warmup):
        trainer.step()
        bare.step()
    # Steps alternate (engine, bare), (bare, engine), ... so that load on a shared machine
    # hits both loops alike; the step index (dual or not) is the same for both.
    for i in range(steps * repeats):
        pair = [("engine", trainer.step), ("bare", bare.step)]
        for name, fn in pair if i % 2 == 0 else pair[::-1]:
            cpu, wall = timed(fn)
            times[name]["cpu"].append(cpu)
            times[name]["wall"].append(wall)
    # Same computation: identical trajectories, bit for bit.
    eng_losses = [rec.loss for rec in trainer.history.records]
    eng_lams = [rec.multipliers for rec in trainer.history.records]
    same = (
        eng_losses == bare.losses
        and eng_lams == bare.multipliers
        and [rec.ess for rec in trainer.history.records] == bare.ess
        and [e["value"] for e in trainer.history.population_ess] == bare.pop_ess
        and all(
            torch.equal(a, b)
            for a, b in zip(engine_model.parameters(), bare_model.parameters(), strict=True)
        )
    )
    med = {k: {m: statistics.median(v[m]) for m in ("cpu", "wall")} for k, v in times.items()}
    return {
        "estimate_every": estimate_every,
        "steps_timed": steps * repeats,
        "engine_ms": {m: 1e3 * med["engine"][m] for m in ("cpu", "wall")},
        "bare_ms": {m: 1e3 * med["bare"][m] for m in ("cpu", "wall")},
        "overhead_ms": {m: 1e3 * (med["engine"][m] - med["bare"][m]) for m in ("cpu", "wall")},
        "ratio_cpu": med["engine"]["cpu"] / med["bare"]["cpu"],
        "ratio_wall": med["engine"]["wall"] / med["bare"]["wall"],
        "identical_trajectories": bool(same),
        "final_multiplier": eng_lams[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (steps x repeats timed)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run (steps=40, repeats=2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default benchmarks/results/bench_engine.json; --quick: "
                        "a temporary folder)")
    args = parser.parse_args(argv)
    out_path = results_location(args.out, RESULTS, quick=args.quick, name="bench_engine")
    if args.quick:
        args.steps, args.repeats, args.warmup = 40, 2, 5
    rows = []
    with limit_threads(args.threads):
        for every in (1, 10):
            rows.append(bench(every, args.steps, args.repeats, args.warmup))
    print(
        format_table(
            ["estimate_every", "engine[ms]", "bare[ms]", "overhead[ms]", "ratio(cpu)",
             "ratio(wall)", "same"],
            [
                [
                    str(r["estimate_every"]),
                    format(r["engine_ms"]["cpu"], ".3f"),
                    format(r["bare_ms"]["cpu"], ".3f"),
                    format(r["overhead_ms"]["cpu"], ".3f"),
                    format(r["ratio_cpu"], ".3f"),
                    format(r["ratio_wall"], ".3f"),
                    str(r["identical_trajectories"]),
                ]
                for r in rows
            ],
            right={1, 2, 3, 4, 5},
        )
    )
    worst = max(r["ratio_cpu"] for r in rows)
    ok = worst <= GOAL and all(r["identical_trajectories"] for r in rows)
    print(f"worst CPU-time ratio {worst:.3f} (goal <= {GOAL}): {'met' if ok else 'NOT met'}")
    out = {
        "benchmark": "bench_engine",
        "goal_ratio": GOAL,
        "goal_met": ok,
        "worst_ratio_cpu": worst,
        "rows": rows,
        "settings": {
            "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
            "threads": args.threads, "batch": BATCH, "model": "MLPScoreNet(1, 128, 3) float32",
            "problem": "FU, p0 = 0.7 N(-2,1) + 0.3 N(2,1), q = N(2,1), b = 1.5",
            "primal_lr": PRIMAL_LR, "dual_lr": DUAL_LR,
        },
        "environment": environment(args.threads),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dump_strict_json(out, out_path, indent=2)  # atomic; NaN -> null + reason
    print(f"wrote {out_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
