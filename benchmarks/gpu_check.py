"""Device check (run on a CUDA machine): the engine and demo model on the GPU.

Fine-tunes the shipped ring model for FU on ``cuda`` for a few hundred primal-dual steps with
probability-flow-ODE estimates, checks the multipliers stay in the dual domain and approach
the closed form, and times a primal step on CPU vs GPU (ratio in one run). Prints and saves
``benchmarks/results/gpu_check.json`` (or ``$OUT/gpu_check.json``).
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import torch

from dualdiff.datasets.ring import load_pretrained_ring
from dualdiff.engine import ConstraintEstimator, PrimalDualTrainer
from dualdiff.experiments.ring import make_problem


def time_steps(device: str, prob, n: int = 50) -> float:
    model = copy.deepcopy(load_pretrained_ring())
    model.module.to(device)
    trainer = PrimalDualTrainer(
        prob, model, primal_lr=5e-4, dual_lr=1e-12, batch_size=4096, estimate_every=10**9,
        estimator=lambda m, g: prob.bounds.clone(), device=device, seed=0,
    )
    trainer.fit(5, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.fit(n, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA device"
    torch.set_num_threads(4)
    prob, _ = make_problem("FU", 2.0)
    sol = prob.solve_dual()
    lam_star = float(sol.multipliers[0])
    curvature = float(-prob.dual_hessian(sol.multipliers)[0, 0])
    model = copy.deepcopy(load_pretrained_ring())
    model.module.to("cuda")
    est = ConstraintEstimator(
        prob, method="ode", n_samples=512, estimate_objective=False,
        ode_kwargs={"rtol": 1e-4, "atol": 1e-4},
    )
    trainer = PrimalDualTrainer(
        prob, model, primal_lr=5e-4, dual_lr=0.5 / curvature, batch_size=512,
        estimator=est, estimate_every=25, device="cuda", seed=0,
    )
    t0 = time.perf_counter()
    hist = trainer.fit(600, progress=False)
    wall = time.perf_counter() - t0
    lams = [r.multipliers[0] for r in hist.records]
    lam_avg = sum(lams[-240:]) / 240
    in_domain = all(0.0 <= v <= prob.lam_max[0].value for v in lams)
    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "fu_lam_star": lam_star,
        "fu_lam_trained_avg_last_240": lam_avg,
        "fu_rel_error": abs(lam_avg - lam_star) / lam_star,
        "multipliers_always_in_domain": in_domain,
        "skipped_steps": len(hist.skipped),
        "fit_600_steps_wall_s": wall,
        "param_device": str(next(model.parameters()).device),
        "step_time_cpu_s": time_steps("cpu", prob),
        "step_time_cuda_s": time_steps("cuda", prob),
    }
    out["cpu_over_cuda_step_time"] = out["step_time_cpu_s"] / out["step_time_cuda_s"]
    print(json.dumps(out, indent=1))
    dest = Path(os.environ.get("OUT", "benchmarks/results"))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "gpu_check.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
