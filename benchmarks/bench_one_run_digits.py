"""One primal-dual run vs an ESD weight sweep to reach a requested forget level on digits.

The digits counterpart of ``bench_one_run.py`` (same counting rules, imported from it): how
many primal steps does ``PrimalDualTrainer`` need -- warm-started from ``estimate_dual`` -- to
bring the shipped digits DDPM's separation from digit ``c`` to a requested level and keep it
there, compared with the ESD user's way: fine-tune at a hand-set guidance scale, look at the
separation reached, change the scale, fine-tune again, until one run lands on the level.
Goal (issue 9): >= 5x fewer total steps.

Setting (:mod:`dualdiff.experiments.digits`, the ``--quick`` budget's optimiser, batch,
parameters and composed-score primal step for every run):

* RU: ``KLConstrainedProblem(null view, [class-c view], bounds=[b])`` with the classifier's
  log-ratios :math:`r(x) = \\log p(c) - \\log p(c\\mid x)`. The separation measured is
  :math:`C(p_\\theta) = E_{p_\\theta}[r]` (a lower bound of :math:`\\mathrm{KL}(p_\\theta\\|q)`
  when the classifier is exact; the same quantity the trainer's estimator uses).
* Level: :math:`b = C_0 + \\delta`, with :math:`C_0` the value on ``--pool`` DDIM samples of the
  pretrained model (levels relative to the pretrained model, stated on its own samples so that
  the warm start and the measurement agree).
* Referee (not counted as steps on either side): every ``--every`` steps, :math:`C` on
  ``--eval-samples`` DDIM samples of the model being trained, with the *same* noise at every
  evaluation and in every run (common random numbers: the trace is smooth and every method is
  judged on the same draws). Band: :math:`|C-b| \\le` ``--tol`` :math:`\\cdot\\,\\delta`; the entry
  step is the first evaluated step from which the value stays in the band for ``--window``
  steps.
* Primal-dual: ``init_multipliers = estimate_dual(samples=pool)``, no dual step on the first
  estimate (of the pretrained model: ``warm_start_rule``), the trainer's own 64-sample
  estimator every 10 steps. Two dual steps (``VARIANTS``): ``dualdiff digits``'s own
  (``dual_lr = 0.02`` on every estimate; the headline, not tuned here) and the Newton step
  :math:`1/|\\hat g''(\\hat\\lambda)|` of the estimated dual with the settled rule.
* ESD sweep (strategy A of ``bench_one_run``): ``FixedWeightTrainer`` at
  :math:`\\lambda = \\eta/(1+\\eta)` (ESD, unconditional anchor) on a log grid of guidance
  scales (``--grid``, paid in full as a launched grid) then bisection in :math:`\\log\\eta`
  until a run hits; each run charged the steps until its outcome is decided
  (``bench_one_run.decide``: a lower bound on what a user spends).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_one_run_digits.py [--seeds 0 1 2]
      [--deltas 3] [--quick]
Writes benchmarks/results/bench_one_run_digits.{json,png} (``--quick``: a smoke budget, to a
temporary folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from bench_one_run import (  # same folder: the shared counting and search rules
    decide,
    entry_step,
    search_grid_bisection,
)

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 5.0
MAX_RUNS = 8
#: Primal-dual dual steps: "digits" = ``dualdiff digits``'s own (dual_lr 0.02 on every
#: estimate, the headline: not tuned for this benchmark); "newton" = 1/|g''(lam_hat)| of the
#: estimated dual with the settled rule (``bench_one_run``'s headline on the ring).
VARIANTS = ("digits", "newton")


class DigitsLevel:
    """Setup, pool, level and referee of one (seed, delta)."""

    def __init__(self, cfg: Any, delta: float, args: argparse.Namespace) -> None:
        from dualdiff.experiments.digits import DigitsSetup, _null_labels, _ru_problem, _sample

        self.setup = DigitsSetup(cfg)
        self.args = args
        self.pool = _sample(self.setup.net, _null_labels(args.pool), cfg.sample_steps,
                            cfg.seed + 50_000).to(torch.float32)
        self.ratio = self.setup.log_ratio()
        with torch.no_grad():
            self.c0 = float(self.ratio(self.pool).to(torch.float64).mean())
        self.delta = delta
        self.b = self.c0 + delta
        self.tol = args.tol * delta
        base = _ru_problem(self.setup, self.b)
        # the same problem, with the pretrained samples being the pool of model draws
        self.prob = type(base)(base.pretrained, base.unlearn, bounds=[self.b],
                               pretrained_data=self.pool, log_ratio=self.ratio)
        self._sample, self._null = _sample, _null_labels

    def separation(self, student: Any) -> float:
        """The referee: C on fixed-noise samples of ``student``."""
        a = self.args
        x = self._sample(student, self._null(a.eval_samples), self.setup.cfg.sample_steps,
                         777_777)
        with torch.no_grad():
            return float(self.ratio(x).to(torch.float64).mean())


def _trace(trainer: Any, student: Any, lv: DigitsLevel, steps: int) -> dict[str, list[float]]:
    every = lv.args.every
    tr: dict[str, list[float]] = {"step": [], "kl_q": [], "lam": []}
    for k in range(1, steps + 1):
        trainer.step()
        if k % every == 0:
            tr["step"].append(k)
            tr["kl_q"].append(lv.separation(student))
            tr["lam"].append(float(trainer.multipliers[0]))
    return tr


class DigitsRunner:
    """Fixed-weight runs (cached by weight) and the primal-dual run of one level."""

    def __init__(self, lv: DigitsLevel) -> None:
        self.lv = lv
        self.cache: dict[float, dict[str, Any]] = {}

    def _opts(self) -> dict[str, Any]:
        from dualdiff.experiments.digits import _trainer_options

        return _trainer_options(self.lv.setup.cfg)

    def fixed(self, lam: float) -> dict[str, Any]:
        from dualdiff import Conditioned, FixedWeightTrainer, esd_eta

        key = float(lam)
        if key not in self.cache:
            lv, a = self.lv, self.lv.args
            student = lv.setup.student()
            from dualdiff.experiments.digits import _sample_estimator

            # the trainer estimates once at the start even with a fixed weight: give it the
            # same cheap estimator as the primal-dual run (never the ODE default)
            estimator = _sample_estimator(lv.setup, lv.prob, student,
                                          lambda x: lv.ratio(x).reshape(-1))
            opts = {**self._opts(), "estimate_every": 10**9}
            tr_obj = FixedWeightTrainer(lv.prob, Conditioned(student, None), [key],
                                        primal="composed", estimator=estimator, **opts)
            t0 = time.perf_counter()
            tr = _trace(tr_obj, student, lv, a.run_steps)
            res = decide(tr, lv.b, lv.tol, a.window)
            res.update({"lam": key, "eta": float(esd_eta([key])[0]),
                        "wall_s": time.perf_counter() - t0, "trace": tr})
            self.cache[key] = res
            print(f"  ESD eta={res['eta']:.4g} (lam={key:.4g}): {res['outcome']}, final "
                  f"{res['final_kl_q']:.3f} vs b={lv.b:.3f}, charged {res['charged_steps']}",
                  flush=True)
        return self.cache[key]

    def primal_dual(self, variant: str) -> dict[str, Any]:
        """One primal-dual run; ``variant`` picks the dual step (see ``VARIANTS``)."""
        from dualdiff import Conditioned, PrimalDualTrainer
        from dualdiff.experiments.digits import _sample_estimator
        from dualdiff.experiments.ring_networks import warm_start_rule

        lv, a = self.lv, self.lv.args
        est = lv.prob.estimate_dual(samples=lv.pool)
        assert est.estimator is not None
        hess = abs(float(est.estimator.oracle(est.multipliers).hess[0, 0]))
        student = lv.setup.student()
        estimator = _sample_estimator(lv.setup, lv.prob, student,
                                      lambda x: lv.ratio(x).reshape(-1))
        if variant == "newton":
            dual_lr, rule = 1.0 / hess, warm_start_rule("settled")
        else:  # the dual step of ``dualdiff digits`` (DigitsConfig.dual_lr, every estimate)
            dual_lr, rule = lv.setup.cfg.dual_lr, warm_start_rule("every")
        trainer = PrimalDualTrainer(
            lv.prob, Conditioned(student, None), primal="composed", estimator=estimator,
            init_multipliers=est, dual_lr=dual_lr, dual_update=rule, **self._opts(),
        )
        t0 = time.perf_counter()
        tr = _trace(trainer, student, lv, a.pd_steps)
        entry = entry_step(tr, lv.b, lv.tol, a.window)
        w = max(1, a.window // a.every)
        print(f"  PD ({variant}): lam_hat={float(est.multipliers[0]):.4g} +- "
              f"{float(est.multiplier_stderr[0]):.2g}, entry step {entry}, final "
              f"{statistics.fmean(tr['kl_q'][-w:]):.3f}", flush=True)
        return {
            "lam_estimated": float(est.multipliers[0]),
            "lam_estimated_stderr": float(est.multiplier_stderr[0]),
            "estimate_ess": est.ess,
            "predicted_constraint": float(est.predicted_constraints[0]),
            "dual_hessian_estimated": -hess,
            "variant": variant,
            "dual_lr": dual_lr,
            "dual_steps": trainer.history.dual_steps,
            "entry_step": entry,
            "final_lam": statistics.fmean(tr["lam"][-w:]),
            "final_separation": statistics.fmean(tr["kl_q"][-w:]),
            "wall_s": time.perf_counter() - t0,
            "trace": tr,
        }


def sweep(run: DigitsRunner, grid: list[float]) -> dict[str, Any]:
    """``bench_one_run``'s strategy A (grid, then bisection in log eta) on digits runs."""
    out = search_grid_bisection(run, grid, MAX_RUNS)
    out["wall_s"] = sum(r["wall_s"] for r in out["runs"])
    return out


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return
    r = results[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    tr = r["traces"]["pd"]
    ax.plot(tr["step"], tr["kl_q"], "k-", lw=2, label="primal-dual, digits dual step")
    tn = r["traces"]["pd_newton"]
    ax.plot(tn["step"], tn["kl_q"], "k:", lw=2, label="primal-dual, Newton dual step")
    for lam, t in r["traces"]["runs"].items():
        ax.plot(t["step"], t["kl_q"], "--", lw=1, label=f"ESD lam={float(lam):.3g}")
    ax.axhspan(r["b"] - r["tol"], r["b"] + r["tol"], color="C2", alpha=0.2, label="band")
    ax.set_xlabel("primal step")
    ax.set_ylabel("separation E_p[log p(c) - log p(c|x)] [nats]")
    ax.set_title(f"digits, seed {r['seed']}, delta={r['delta']:g}")
    ax.legend(fontsize=6)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print and save the figures. Returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--deltas", type=float, nargs="+", default=[2.0])
    ap.add_argument("--grid", type=float, nargs="+", default=[0.3, 0.1, 0.03])
    ap.add_argument("--pool", type=int, default=1024)
    ap.add_argument("--eval-samples", type=int, default=256)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--tol", type=float, default=0.25, help="band half-width / delta")
    ap.add_argument("--run-steps", type=int, default=200)
    ap.add_argument("--pd-steps", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="smoke budget, temporary folder")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from dualdiff.experiments.digits import DigitsConfig, smoke_config

    if args.quick:
        args.seeds, args.deltas, args.grid = args.seeds[:1], args.deltas[:1], args.grid[:2]
        args.pool, args.eval_samples, args.every, args.window = 16, 8, 2, 2
        args.run_steps = args.pd_steps = 6
        base, folder = smoke_config(), Path(tempfile.mkdtemp(prefix="bench_one_run_digits-"))
    else:
        base, folder = DigitsConfig.quick(), RESULTS
    t_start = time.perf_counter()
    results = []
    for delta in args.deltas:
        for seed in args.seeds:
            print(f"delta={delta:g}, seed {seed}", flush=True)
            lv = DigitsLevel(replace(base, seed=seed), delta, args)
            run = DigitsRunner(lv)
            pds = {v: run.primal_dual(v) for v in VARIANTS}
            pd = pds[VARIANTS[0]]
            sw = sweep(run, args.grid)
            t_pd = pd["entry_step"]
            results.append({
                "seed": seed, "delta": delta, "c0": lv.c0, "b": lv.b, "tol": lv.tol,
                "primal_dual": {k: v for k, v in pd.items() if k != "trace"},
                "primal_dual_variants": {n: {k: v for k, v in r.items() if k != "trace"}
                                         for n, r in pds.items()},
                "sweep": sw,
                "ratio": None if t_pd is None or not sw["hit"] else sw["total_steps"] / t_pd,
                "ratio_by_variant": {
                    n: None if r["entry_step"] is None or not sw["hit"]
                    else sw["total_steps"] / r["entry_step"] for n, r in pds.items()},
                "traces": {"pd": pd["trace"], "pd_newton": pds["newton"]["trace"],
                           "runs": {str(k): v["trace"] for k, v in run.cache.items()}},
            })
            print(f"  ratio sweep/PD = {results[-1]['ratio']}", flush=True)
            _save(results, args, base, folder, t_start)  # partial results survive
    med = _save(results, args, base, folder, t_start)
    print("\n| delta | seed | C0 | b | PD entry (digits / Newton) | sweep runs | sweep steps "
          "| ratio (digits / Newton) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        v = r["primal_dual_variants"]
        rv = r["ratio_by_variant"]
        print(f"| {r['delta']:g} | {r['seed']} | {r['c0']:.2f} | {r['b']:.2f} | "
              f"{v['digits']['entry_step']} / {v['newton']['entry_step']} | "
              f"{r['sweep']['n_runs']} | {r['sweep']['total_steps']} | "
              f"{rv['digits']} / {rv['newton']} |")
    print(f"median ratio {med} (goal >= {GOAL}); results in {folder}")
    return 0


def _save(results: list[dict[str, Any]], args: argparse.Namespace, base: Any, folder: Path,
          t_start: float) -> float | None:
    """Write the JSON and the figure of the runs so far; return the median ratio."""
    from dualdiff._io import dump_strict_json
    from dualdiff.experiments.report import environment

    ratios = [r["ratio"] for r in results if r["ratio"] is not None]
    med = statistics.median(ratios) if ratios else None
    out = {
        "benchmark": "bench_one_run_digits", "goal": f">= {GOAL}x fewer steps",
        "median_ratio": med, "met": None if med is None else med >= GOAL,
        "n_failed": len(results) - len(ratios), "args": vars(args), "config": asdict(base),
        "results": results, "wall_s": time.perf_counter() - t_start,
        "environment": environment(),
    }
    dump_strict_json(out, folder / "bench_one_run_digits.json", indent=1)
    _plot(results, folder / "bench_one_run_digits.png")
    return med


if __name__ == "__main__":
    sys.exit(main())
