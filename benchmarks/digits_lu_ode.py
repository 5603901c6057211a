r"""LU on digits with the concept model's own log-likelihood, on a GPU.

``dualdiff digits`` states LU with the classifier's :math:`\log p(c\mid x)` because the
probability-flow ODE log-likelihood under the concept model ``Conditioned(unet, c)`` costs about
3 s per image on a CPU core (``docs/digits.rst``). This script runs the other statement,
:math:`\ell = \log p_0(x\mid c)` by the ODE, through the public API:

1. :math:`\ell_j` of the 1,500 training images (``DensityEstimator``: dopri5, rtol = atol =
   1e-5, one Hutchinson probe), twice with fresh probes: the difference of the two passes is
   the Hutchinson noise of one value. Timed.
2. The level :math:`\tau`, fixed by a rule before any training: the constraint value
   :math:`E_{p_\lambda}[\ell]` of the training set tilted by :math:`e^{-\lambda\ell}` (LU's
   closed-form optimum with :math:`p_0` the empirical distribution) at the :math:`\lambda` that
   leaves digit ``c`` a quarter (``--share``) of its training share (bisection in
   :math:`\lambda`).
3. ``LikelihoodConstrainedProblem(Conditioned(teacher, None), [Conditioned(teacher, c)],
   bounds=[tau], pretrained_data=train_images, density=...)``, the ``estimate_dual`` warm start
   on the training images (their :math:`\ell` cached for the reweighted DSM's batches).
4. ``PrimalDualTrainer(primal="reweighted_dsm")`` with ``dualdiff digits --quick``'s class
   budget (40 steps, batch 64, Adam 2e-4, clip 1, all parameters, seed 0); every 10 steps the
   dual step sees :math:`\hat C = \frac1n\sum_j\ell(x_j)` on 64 DDIM samples of the model (ODE
   log-likelihoods), step size :math:`1/(2|\hat g''(\hat\lambda)|)` from the warm start's
   estimated dual curvature (the units of :math:`\ell` are not those of the classifier rows'
   fixed ``dual_lr``).
5. :math:`E_p[\ell]` on 256 DDIM samples of the pretrained and the unlearned model (the
   constraint before and after, against :math:`\tau`), and ``dualdiff digits``' own
   ``evaluate`` of both models (forget and retained accuracy, FD, NLLs, deviation), on the CPU
   as for every row of the digits report.

Run (on a CUDA machine; ``--smoke`` is a CPU-sized budget whose numbers mean nothing)::

    HF_HUB_OFFLINE=1 python benchmarks/digits_lu_ode.py --threads 16 [--seed 1]
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/digits_lu_ode.py --smoke --device cpu

Prints a line per stage and writes ``digits_lu_ode.json`` (strict JSON, atomically; ``$OUT``
when set, else ``benchmarks/results``) after every stage, so a run stopped early keeps what it
measured.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dualdiff.problems.contract import DensityEstimator


@dataclass
class TimedDensity(DensityEstimator):
    """The library's density estimator, counting the log-densities it computes and their time."""

    calls: list[dict[str, float]] = field(default_factory=list)

    def log_prob(self, model: Any, x: torch.Tensor, generator: Any = None) -> torch.Tensor:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = super().log_prob(model, x, generator)
        self.calls.append({"n": int(x.shape[0]), "wall_s": time.perf_counter() - t0})
        return out


def tilt_level(values: torch.Tensor, is_c: torch.Tensor, share: float) -> dict[str, float]:
    r"""The tilt :math:`w\propto e^{-\lambda\ell}` of the empirical :math:`p_0` leaving class ``c``
    ``share`` times its share: ``lam``, the level :math:`E_w[\ell]`, the shares and the ESS."""
    v = values.to(torch.float64)
    base = float(is_c.double().mean())
    if base == 0.0:
        raise ValueError("tilt_level: the images hold no image of the forgotten class")
    target = share * base

    def at(lam: float) -> tuple[float, float, float]:
        w = torch.softmax(-lam * v, 0)
        return float(w[is_c].sum()), float(w @ v), float(1.0 / (v.numel() * (w * w).sum()))

    lo, hi = 0.0, 1e-4
    while at(hi)[0] > target:
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:
            raise RuntimeError("tilt_level: no lam up to 1e3 lowers the class share enough")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if at(mid)[0] > target else (lo, mid)
    s, level, ess = at(hi)
    return {"lam": hi, "level": level, "share": s, "base_share": base,
            "mean_l": float(v.mean()), "ess_fraction": ess}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny budget (tests; numbers mean nothing)")
    ap.add_argument("--share", type=float, nargs="+", default=[0.25, 0.5],
                    help="class shares of the level rule, one LU run each, in this order")
    ap.add_argument("--steps", type=int, default=None, help="default: the quick class budget")
    ap.add_argument("--final-samples", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="a further share is not started past 55%% of this wall time")
    ap.add_argument("--seed", type=int, default=0,
                    help="the digits experiment's seed (training, samplers, evaluation)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()

    from dualdiff import (
        Conditioned,
        ConstraintEstimate,
        LikelihoodConstrainedProblem,
        PrimalDualTrainer,
    )
    from dualdiff._io import dump_strict_json
    from dualdiff.experiments.digits import (
        DigitsConfig,
        DigitsSetup,
        _null_labels,
        _sample,
        _sample_estimator,
        _trainer_options,
        evaluate,
        smoke_config,
    )

    if a.threads:
        torch.set_num_threads(a.threads)
    dest = Path(os.environ.get("OUT", "benchmarks/results"))
    dest.mkdir(parents=True, exist_ok=True)
    name = "digits_lu_ode" + ("_smoke" if a.smoke else "") + (f"_seed{a.seed}" if a.seed else "")
    out_path = dest / f"{name}.json"
    cfg = replace(smoke_config() if a.smoke else DigitsConfig.quick(), seed=a.seed)
    if a.steps is not None:
        cfg = replace(cfg, steps=a.steps)
    tol = 1e-2 if a.smoke else 1e-5
    n_final = 16 if a.smoke else a.final_samples
    out: dict[str, Any] = {
        "benchmark": "digits_lu_ode", "smoke": a.smoke, "device": a.device,
        "device_name": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
        "torch": torch.__version__, "ode": {"method": "dopri5", "rtol": tol, "atol": tol,
                                            "divergence": "hutchinson, 1 probe"},
        "config": {"steps": cfg.steps, "batch_size": cfg.batch_size, "primal_lr": cfg.primal_lr,
                   "grad_clip": cfg.grad_clip, "estimate_every": cfg.estimate_every,
                   "estimate_samples": cfg.estimate_samples, "sample_steps": cfg.sample_steps,
                   "shares": a.share, "final_samples": n_final, "seed": cfg.seed},
        "stages": {},
    }
    t_all = time.perf_counter()

    def save() -> None:  # atomic, strict JSON (a non-finite value: null, listed with a reason)
        dump_strict_json(out, out_path, indent=1)

    def stage(name: str, t0: float, **values: Any) -> None:
        values["wall_s"] = time.perf_counter() - t0
        out["stages"][name] = values
        out["wall_s"] = time.perf_counter() - t_all
        save()
        print(f"[{out['wall_s']:7.1f} s] {name}: " + ", ".join(
            f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in values.items() if not isinstance(v, (list, dict))), flush=True)

    torch.manual_seed(cfg.seed)
    setup = DigitsSetup(cfg)
    train, labels = setup.split.train_images, setup.split.train_labels
    if a.smoke:  # a few images of each class, so the rule has class c to work with
        idx = torch.cat([torch.nonzero(labels == k).reshape(-1)[:2] for k in range(10)])
        train, labels = train[idx], labels[idx]
    density = TimedDensity(ode_kwargs={"rtol": tol, "atol": tol})
    teacher = copy.deepcopy(setup.teacher).to(a.device)
    concept = Conditioned(teacher, setup.c)

    def problem(level: float) -> Any:
        return LikelihoodConstrainedProblem(Conditioned(teacher, None), [concept],
                                            bounds=[level], pretrained_data=train,
                                            density=density)

    def constraint_on_samples(net: Any, prob: Any) -> dict[str, float]:
        x = _sample(net, _null_labels(n_final), cfg.sample_steps, cfg.seed + 5000)
        est = ConstraintEstimate.from_values(prob, prob.likelihood_values(x)[0])
        return {"mean": float(est.constraints[0]), "stderr": float(est.constraint_stderr[0])}

    def metrics_of(net: Any) -> dict[str, Any]:
        ev = evaluate(setup, net, cfg.seed)
        ev.pop("_samples")
        return ev

    # 1. l on the training images, two passes with fresh Hutchinson probes
    t0 = time.perf_counter()
    passes = [density.log_prob(concept, train, torch.Generator(device=a.device).manual_seed(k))
              for k in (1, 2)]
    diff = passes[0] - passes[1]
    is_c = labels == setup.c
    v = passes[0]
    stage("ell_train", t0, n=int(train.shape[0]), pass_wall_s=[c["wall_s"] for c in density.calls],
          mean=float(v.mean()), mean_c=float(v[is_c].mean()), mean_other=float(v[~is_c].mean()),
          min=float(v.min()), max=float(v.max()),
          hutchinson_sd_per_value=float(diff.std() / math.sqrt(2.0)),
          auc_c_vs_other=float((v[is_c][:, None] > v[~is_c][None, :]).double().mean()))

    # the pretrained model: E_p0[l] on its own samples
    t0 = time.perf_counter()
    pre_constraint = constraint_on_samples(teacher, problem(0.0))
    stage("pretrained_constraint", t0, **pre_constraint)

    def run_share(share: float) -> dict[str, Any]:
        key = f"share_{share:g}"
        # 2. the level
        t0 = time.perf_counter()
        rule = tilt_level(v, is_c, share)
        stage(f"{key}/level", t0, **rule)
        # 3. the problem and the warm start (its l of the training images is cached)
        t0 = time.perf_counter()
        prob = problem(rule["level"])
        n_calls = len(density.calls)
        est = prob.estimate_dual(samples=train)
        assert est.estimator is not None
        hess = abs(float(est.estimator.oracle(est.multipliers).hess[0, 0]))
        dual_lr = 0.5 / hess
        warm = {"lam_hat": float(est.multipliers[0]),
                "lam_hat_stderr": float(est.multiplier_stderr[0]),
                "ess_fraction": float(est.ess),
                "predicted_constraint": float(est.predicted_constraints[0]),
                "dual_curvature": hess, "dual_lr": dual_lr,
                "ode_calls": len(density.calls) - n_calls}
        stage(f"{key}/warm_start", t0, **warm)
        # 4. primal-dual training
        student = setup.student().to(a.device)
        estimator = _sample_estimator(setup, prob, student,
                                      lambda x: prob.likelihood_values(x)[0])
        trainer = PrimalDualTrainer(
            prob, Conditioned(student, None), primal="reweighted_dsm", estimator=estimator,
            init_multipliers=est, dual_lr=dual_lr, device=a.device, **_trainer_options(cfg),
        )
        n_calls = len(density.calls)
        t0 = time.perf_counter()
        history = []
        for _ in range(cfg.steps):
            rec = trainer.step()
            last = trainer.last_estimate
            history.append({"step": rec.step, "lam": float(rec.multipliers[0]),
                            "estimate": None if last is None else float(last.constraints[0])})
        calls = density.calls[n_calls:]
        train_out = {"steps": cfg.steps, "final_lam": float(trainer.multipliers[0]),
                     "history": history, "ode_calls": len(calls),
                     "ode_images": sum(c["n"] for c in calls),
                     "ode_wall_s": sum(c["wall_s"] for c in calls),
                     "skipped_steps": sum(r.skipped is not None for r in trainer.history.records)}
        stage(f"{key}/train", t0, **train_out)
        # 5. the constraint after, then the digits metrics on the CPU
        t0 = time.perf_counter()
        after = constraint_on_samples(student, prob)
        stage(f"{key}/constraint", t0, level=rule["level"], **after)
        t0 = time.perf_counter()
        ev = metrics_of(student.to("cpu"))
        stage(f"{key}/evaluate", t0, **{k: ev[k] for k in (
            "forget_accuracy", "retained_accuracy", "fd_retained", "deviation")})
        return {"share": share, "rule": rule, "warm_start": warm, "train": train_out,
                "constraint_on_samples": after, "metrics": ev}

    out["runs"] = []
    for share in a.share:
        if out["runs"] and time.perf_counter() - t_all > 0.55 * a.budget_s:
            print(f"skipping share {share}: past 55% of --budget-s {a.budget_s}", flush=True)
            continue
        out["runs"].append(run_share(share))
        save()

    # the pretrained model's digits metrics (CPU), last: the GPU work comes first
    t0 = time.perf_counter()
    out["pretrained"] = {"constraint_on_samples": pre_constraint,
                         **metrics_of(setup.net)}
    pre = out["pretrained"]
    for run in out["runs"]:
        m = run["metrics"]
        run["targets"] = {
            "forget_accuracy_halved": m["forget_accuracy"] <= 0.5 * pre["forget_accuracy"],
            "retained_at_least_90pct": m["retained_accuracy"]
            >= 0.9 * pre["retained_accuracy"],
            "constraint_met_within_2se": bool(
                run["constraint_on_samples"]["mean"]
                <= run["rule"]["level"] + 2.0 * run["constraint_on_samples"]["stderr"]),
        }
    stage("pretrained_evaluate", t0, forget_accuracy=pre["forget_accuracy"],
          retained_accuracy=pre["retained_accuracy"])
    stage("done", t_all, runs=len(out["runs"]))


if __name__ == "__main__":
    main()
