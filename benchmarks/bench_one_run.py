"""One primal-dual run vs a hand-tuned fixed-weight sweep to reach a requested RU level.

Question (issue "one run"): how many gradient steps does primal-dual training need to bring
the model's separation KL(p_theta || q) within 5% of a requested level b -- and keep it
there -- compared with the way ESD/SISS users get there: fine-tune at a hand-set weight,
look at the separation reached, change the weight, fine-tune again, until one weight lands
on the level. Goal: >= 5x fewer total steps.

Setting (exact constraint values, so no estimator noise enters the comparison):

* p0 = ring of 8 equal-weight isotropic Gaussians (``dualdiff.datasets.ring_mixture()``: radius
  4, std 0.5); q = component 0 (the concept to forget); RU problem
  min KL(p||p0) s.t. KL(p||q) >= b with b = KL(p0||q) + delta (KL(p0||q) = 61.93 nats).
  Integrals on a 85 x 85 grid (``GridQuadrature(extent=6, resolution=3)``; aliasing error
  ~exp(-2 pi^2 * 9), KL(p0||q) agrees with the default 217 x 217 grid to 1e-7).
* model: ``TrainableGaussianMixture`` initialised at p0 (weights, means and variances
  trainable). The RU target of a well-separated ring is, to ~e^-18, such a mixture (each mode
  keeps its covariance and moves by c (mu_j - mu_q)), so the model can represent it.
* primal step (identical everywhere): reweighted denoising score matching (the engine's
  default, exact for RU), Adam lr 0.02, batch 512, same trainer seed -> same batches.
* every 10 steps the model's exact KL(p_theta||q) and KL(p_theta||p0) are computed by the
  problem's quadrature (``ConstraintEstimator(problem, method="exact")``). These evaluations
  are not counted as steps on either side (the sweep needs the same evaluation per run).

(a) Primal-dual: ``PrimalDualTrainer`` (Lagrangian, projected SGD on lambda, exact
    estimator every 10 primal steps -- the cadence at which the sweep's runs are evaluated)
    with dual step size 1/|g''(0)|, where g''(0) = -Var_{p0}[log p0 - log q] is the dual
    Hessian at lambda = 0 -- computed from p0 and q alone, before any training
    (``problem.dual_hessian([0])``); its first dual step is the Newton step from lambda = 0.
    Headline dual-update rule: ``dual_update=SettledPrimal(kappa=0.25)`` (inexact dual ascent:
    an estimate drives a dual step only once the model's constraint value has settled at the
    current lambda, ``dualdiff.engine.dual_update``). Counted: the first evaluated step from
    which the value stays within b (1 +- 5%) for the next 100 steps ("entry step").
    History: the first headline was plain gradient descent-ascent (a dual step every 20
    primal steps, the engine convergence test's settings); it measured a median 3.6x, below
    the goal, because dual steps on a model still moving towards the previous target
    overshoot lambda (see the plot). The settled rule was written in response; the
    every-estimate configurations stay in every run as sensitivity rows, next to the settled
    rule with kappa 0.1 / 0.5, dual step sizes x0.25 / x0.5 / x4 and estimates every 20.

(b) Fixed-weight sweep: ``dualdiff.baselines.FixedWeightTrainer`` (the same primal step with
    the dual step switched off) at ESD guidance scales eta (lambda = eta/(1+eta)), each run
    for 300 steps. A run is charged only the steps until its outcome is *decided* (a lower
    bound on what a user without an oracle stopping rule would spend):
      - settled: the first evaluated step from which the value stays within 5% of b of the
        run's final value (mean over its last 100 steps) for the next 100 steps; the run hits
        if that final value is within b (1 +- 5%);
      - clearly over: the first step at which the value exceeds b (1 + 2 x 5%) (the value rises
        from KL(p0||q) towards its limit, so the run cannot end in the band) -- if earlier.
    Search strategies (the ratio depends on the strategy; all are reported):
      A. "grid + bisection" (the headline, the issue's realistic hand-tuning): a log grid of
         guidance scales, one per decade from ESD's default eta = 1 down to 1e-3 (all four
         runs paid, as a launched grid), then bisection in log eta between the largest "under"
         and the smallest "over" weight until a run hits (at most 12 runs in all).
         Also reported: the same runs charged a fixed per-run budget S = the settle step of
         the oracle run C (a user who fixes the fine-tuning length in advance).
      B. "informed secant" (an expert user with the primal-dual run's own information): start
         at the Newton guess lambda_0 = delta / |g''(0)| that the primal-dual run's first dual
         step takes, then secant steps on (lambda, final value), starting from
         (0, KL(p0||q)), until a run hits.
      C. "oracle": one fixed-weight run at the exact dual optimum lambda* (``solve_dual``) --
         what it costs to train once when the answer is known; charged its settle step.

(d) Model-level primal-dual with the ``estimate_dual`` warm start (issue 8): the same RU
    problem stated *without* densities -- ``ModelReverseKLProblem`` (what
    ``KLConstrainedProblem`` builds for score models) with score-only views of p0 and q, a
    fixed pool of ``--pool`` clean draws of p0 as the pretrained data and the log-ratios
    log p0 - log q supplied as a callable (here the exact one: the implicit-classifier identity
    with the mixture's own posterior, so that only the statement changes, not the values).
    ``estimate_dual`` on the pool gives lambda_hat (with its standard error) and the curvature
    |g_hat''(0)| before any training; ``PrimalDualTrainer`` starts at lambda_hat
    (``init_multipliers=estimate``) with dual step 1/|g_hat''(0)| and the headline rule. The
    primal step draws its batches from the pool (reweighted DSM with the estimated weights);
    the same exact evaluations as (a) decide the entry step (they are the only use of the
    closed form). The rule skips its first dual step
    (``dualdiff.experiments.ring_networks.warm_start_rule``): that estimate is of the
    pretrained model, and a step on it throws lambda away from the estimate (measured: to
    ~2 lambda_hat, 80 steps to the band instead of 30). Reported next to (a): the entry step
    and the ratio sweep A / model-level.

Reported per level and seed: every run, totals and the ratios sweep / primal-dual; medians
over seeds. The plot (seed 0) shows separation achieved KL(p||q) against deviation from p0
KL(p||p0): the exact optimal trade-off curve p_lambda, the sweep's final points and the
primal-dual trajectory.

Run:   python benchmarks/bench_one_run.py [--quick] [--seeds 0 1 2 3 4] [--deltas 10 30]
       [--dual-update settled|every] [--kappa 0.25] [--no-variants] [--no-plot]
       [--pool 8192]
       (~6 min on one thread; --quick ~20 s)
Writes benchmarks/results/bench_one_run.json and .png (``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from dualdiff import GridQuadrature, KLConstrainedProblem
from dualdiff._io import dump_strict_json
from dualdiff.baselines import FixedWeightTrainer, esd_eta, esd_lambda
from dualdiff.datasets import ring_mixture
from dualdiff.engine import (
    ConstraintEstimator,
    LowEffectiveSampleSizeWarning,
    PrimalDualTrainer,
    SettledPrimal,
)
from dualdiff.engine import TrainableGaussianMixture as TGM
from dualdiff.experiments.report import environment, results_location
from dualdiff.experiments.ring_networks import warm_start_rule
from dualdiff.experiments.runtime import format_table, limit_threads
from dualdiff.problems.model_level import ModelReverseKLProblem

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 5.0
GRID_ETA = [1.0, 0.1, 0.01, 0.001]
MAX_RUNS = 12


# ------------------------------------------------------------------------------ measurements
class Level:
    """Problem, requested level and exact references for one delta."""

    def __init__(self, delta: float, integration: GridQuadrature) -> None:
        p0 = ring_mixture()
        q = p0.component(0)
        self.p0 = p0
        probe = KLConstrainedProblem(p0, [q], bounds=[0.0], integration=integration)
        self.c0 = float(probe.constraint_values(p0)[0][0])
        self.delta = delta
        self.b = self.c0 + delta
        self.prob = KLConstrainedProblem(p0, [q], bounds=[self.b], integration=integration)
        self.h0 = abs(float(self.prob.dual_hessian([0.0])[0, 0]))
        sol = self.prob.solve_dual()
        self.lam_star = float(sol.multipliers[0])
        self.f_star = float(sol.certificate.primal_value)
        self.lam_newton = delta / self.h0

    def model_level(self, pool_size: int, seed: int) -> tuple[ModelReverseKLProblem, Any]:
        """The same problem stated with score-only models and its ``estimate_dual``."""
        import torch

        q = self.p0.component(0)
        pool = self.p0.sample(pool_size, generator=torch.Generator().manual_seed(10_000 + seed))

        def log_ratio(x: Any) -> Any:  # log p0 - log q = log p(0) - log p(0 | x)
            x = x.to(torch.float64)
            return (self.p0.log_prob(x) - q.log_prob(x)).reshape(1, -1)

        prob = ModelReverseKLProblem(
            ScoreOnly(self.p0), [ScoreOnly(q)], bounds=[self.b], log_ratio=log_ratio,
            pretrained_data=pool,
        )
        return prob, prob.estimate_dual(samples=pool)

    def curve(self, n: int = 60) -> list[dict[str, float]]:
        """Exact trade-off (KL(p_lam||p0), KL(p_lam||q)) for lambda log-spaced."""
        out = []
        hi = 0.3
        for k in range(n):
            lam = 1e-4 * (hi / 1e-4) ** (k / (n - 1))
            try:
                tg = self.prob.target([lam])
                out.append(
                    {
                        "lam": lam,
                        "kl_p0": float(self.prob.objective(tg)[0]),
                        "kl_q": float(self.prob.constraint_values(tg)[0][0]),
                    }
                )
            except (ValueError, ArithmeticError):
                break
        return out


class ScoreOnly:
    """A score model that hides its density: only ``score(x, t, cond)`` and ``schedule``."""

    def __init__(self, mixture: Any) -> None:
        self._mixture = mixture
        self.schedule = mixture.schedule

    def score(self, x: Any, t: Any = 0.0, cond: Any = None) -> Any:
        return self._mixture.score(x, t)


def _trace(trainer: Any, level: Level, steps: int, every: int) -> dict[str, list[float]]:
    """Run ``steps`` steps; every ``every`` steps record the model's exact KLs and lambda."""
    exact = ConstraintEstimator(level.prob, method="exact")  # both KLs from one log_prob pass
    tr: dict[str, list[float]] = {"step": [], "kl_q": [], "kl_p0": [], "lam": []}
    for k in range(1, steps + 1):
        trainer.step()
        if k % every == 0:
            est = exact(trainer.model)
            tr["step"].append(k)
            tr["kl_q"].append(float(est.constraints[0]))
            tr["kl_p0"].append(float(est.objective))
            tr["lam"].append(float(trainer.multipliers[0]))
    if trainer.history.skipped:
        tr["skipped"] = [len(trainer.history.skipped)]
    return tr


def _stays(vals: list[float], i: int, w: int, centre: float, tol: float) -> bool:
    return all(abs(v - centre) <= tol for v in vals[i : i + w + 1])


def entry_step(tr: dict[str, list[float]], b: float, tol: float, window: int) -> int | None:
    """First evaluated step from which KL(p||q) stays within b +- tol for ``window`` steps."""
    vals, steps = tr["kl_q"], tr["step"]
    w = window // (steps[1] - steps[0])
    for i in range(len(vals) - w):
        if _stays(vals, i, w, b, tol):
            return steps[i]
    return None


def decide(tr: dict[str, list[float]], b: float, tol: float, window: int) -> dict[str, Any]:
    """Outcome of a fixed-weight run and the steps charged for deciding it (see docstring)."""
    vals, steps = tr["kl_q"], tr["step"]
    w = window // (steps[1] - steps[0])
    final = statistics.fmean(vals[-w:])
    final_p0 = statistics.fmean(tr["kl_p0"][-w:]) if tr.get("kl_p0") else None
    settle = next((steps[i] for i in range(len(vals) - w) if _stays(vals, i, w, final, tol)), None)
    over_at = next((s for s, v in zip(steps, vals, strict=True) if v > b + 2 * tol), None)
    if abs(final - b) <= tol:
        outcome = "hit"
    else:
        outcome = "over" if final > b else "under"
    charged = settle if settle is not None else steps[-1]
    if outcome == "over" and over_at is not None:
        charged = min(charged, over_at)
    return {
        "final_kl_q": final,
        "final_kl_p0": final_p0,
        "outcome": outcome,
        "settle_step": settle,
        "over_step": over_at,
        "charged_steps": charged,
        "settled": settle is not None,
    }


class Runner:
    """Runs (and caches, by weight) fixed-weight runs of one level and seed."""

    def __init__(self, level: Level, seed: int, args: argparse.Namespace) -> None:
        self.level, self.seed, self.args = level, seed, args
        self.cache: dict[float, dict[str, Any]] = {}
        self.train = {"primal_lr": args.lr, "batch_size": args.batch, "seed": seed}

    def model(self) -> TGM:
        return TGM.from_mixture(self.level.p0)

    def fixed(self, lam: float) -> dict[str, Any]:
        key = float(lam)
        if key not in self.cache:
            a = self.args
            trainer = FixedWeightTrainer(
                self.level.prob, self.model(), [key], estimate_every=10**9, **self.train
            )
            tr = _trace(trainer, self.level, a.run_steps, a.every)
            res = decide(tr, self.level.b, a.tol * self.level.b, a.window)
            ess = self.level.prob.target([key]).population_ess(self.level.prob.rule)
            res.update(
                {"lam": key, "eta": float(esd_eta(key)[0]), "population_ess": ess, "trace": tr}
            )
            self.cache[key] = res
        return self.cache[key]

    def primal_dual(self, v: Variant) -> dict[str, Any]:
        a, lv = self.args, self.level
        rule = SettledPrimal(kappa=v.kappa) if v.rule == "settled" else "every"
        trainer = PrimalDualTrainer(
            lv.prob,
            self.model(),
            dual_lr=v.scale / lv.h0,
            estimate_every=v.every,
            dual_update=rule,
            **self.train,
        )
        tr = _trace(trainer, lv, a.pd_steps, a.every)
        entry = entry_step(tr, lv.b, a.tol * lv.b, a.window)
        w = a.window // a.every
        return {
            "dual_lr": v.scale / lv.h0,
            "dual_lr_scale": v.scale,
            "estimate_every": v.every,
            "dual_update": v.rule,
            "kappa": v.kappa if v.rule == "settled" else None,
            "dual_steps": trainer.history.dual_steps,
            "entry_step": entry,
            "final_lam": statistics.fmean(tr["lam"][-w:]),
            "final_kl_q": statistics.fmean(tr["kl_q"][-w:]),
            "final_kl_p0": statistics.fmean(tr["kl_p0"][-w:]),
            "trace": tr,
        }


    def primal_dual_model_level(self, v: Variant) -> dict[str, Any]:
        """(d): the model-level problem, warm-started at its ``estimate_dual`` multipliers."""
        a, lv = self.args, self.level
        prob, est = lv.model_level(a.pool, self.seed)
        assert est.estimator is not None
        h0_hat = abs(float(est.estimator.oracle(est.multipliers * 0).hess[0, 0]))
        # no dual step on the first estimate (of the pretrained model, not of p_lambda_hat)
        rule = warm_start_rule(v.rule, **({"kappa": v.kappa} if v.rule == "settled" else {}))
        exact = ConstraintEstimator(lv.prob, method="exact")  # the referee's exact values
        trainer = PrimalDualTrainer(
            prob,
            self.model(),
            dual_lr=v.scale / h0_hat,
            estimate_every=v.every,
            dual_update=rule,
            estimator=lambda model, generator: exact(model),
            init_multipliers=est,
            **self.train,
        )
        tr = _trace(trainer, lv, a.pd_steps, a.every)
        entry = entry_step(tr, lv.b, a.tol * lv.b, a.window)
        w = a.window // a.every
        return {
            "lam_estimated": float(est.multipliers[0]),
            "lam_estimated_stderr": float(est.multiplier_stderr[0]),
            "estimate_ess": est.ess,
            "pool": a.pool,
            "dual_hessian_at_0_estimated": -h0_hat,
            "dual_lr": v.scale / h0_hat,
            "dual_update": v.rule,
            "dual_steps": trainer.history.dual_steps,
            "entry_step": entry,
            "final_lam": statistics.fmean(tr["lam"][-w:]),
            "final_kl_q": statistics.fmean(tr["kl_q"][-w:]),
            "final_kl_p0": statistics.fmean(tr["kl_p0"][-w:]),
            "trace": tr,
        }


# ------------------------------------------------------------------------------ search rules
def search_grid_bisection(run: Any, grid: list[float] | None = None,
                          max_runs: int = MAX_RUNS) -> dict[str, Any]:
    """Strategy A: log grid of eta (launched together), then bisection in log eta.

    ``run.fixed(lam)`` trains (or returns the cached) fixed-weight run at ``lam`` and its
    outcome (:func:`decide`); ``grid`` defaults to ``GRID_ETA``.
    """
    runs = [run.fixed(float(esd_lambda(eta)[0])) for eta in (grid or GRID_ETA)]
    while not any(r["outcome"] == "hit" for r in runs) and len(runs) < max_runs:
        unders = [r["eta"] for r in runs if r["outcome"] == "under"]
        overs = [r["eta"] for r in runs if r["outcome"] == "over"]
        if not overs:
            eta = 10 * max(unders)
        elif not unders:
            eta = min(overs) / 10
        else:
            eta = math.sqrt(max(unders) * min(overs))
        runs.append(run.fixed(float(esd_lambda(eta)[0])))
    return _summary(runs)


def search_secant(run: Runner) -> dict[str, Any]:
    """Strategy B: start at the Newton guess delta/|g''(0)|, then secant on the final values."""
    lv = run.level
    pts = [(0.0, lv.c0)]
    lam = lv.lam_newton
    runs: list[dict[str, Any]] = []
    while len(runs) < MAX_RUNS:
        r = run.fixed(lam)
        runs.append(r)
        if r["outcome"] == "hit":
            break
        pts.append((lam, r["final_kl_q"]))
        (l0, c0), (l1, c1) = sorted(pts[-2:])
        slope = (c1 - c0) / (l1 - l0) if l1 > l0 and c1 != c0 else lv.h0
        lam = max(1e-6, pts[-1][0] + (lv.b - pts[-1][1]) / max(slope, 1e-9))
        lam = min(lam, 0.9)
    return _summary(runs)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": [{k: v for k, v in r.items() if k != "trace"} for r in runs],
        "n_runs": len(runs),
        "hit": any(r["outcome"] == "hit" for r in runs),
        "total_steps": sum(r["charged_steps"] for r in runs),
    }


# ------------------------------------------------------------------------------ main
def one(level: Level, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run = Runner(level, seed, args)
    head = Variant(args.dual_update, args.kappa, args.dual_scale, args.estimate_every)
    variants = [head, *(v for v in _variants(args) if v != head)]
    pd = {v.label: run.primal_dual(v) for v in variants}
    main_pd = pd[head.label]
    ml = run.primal_dual_model_level(head)
    a_res = search_grid_bisection(run)
    b_res = search_secant(run)
    oracle = run.fixed(level.lam_star)
    t_pd = main_pd["entry_step"]
    # Alternative charging: every run of the sweep gets the budget the run at lambda* needs
    # to settle (a user fixing one per-run budget S in advance).
    budget = oracle["settle_step"] or args.run_steps
    a_res["total_steps_fixed_budget"] = a_res["n_runs"] * budget

    def ratio(total: int) -> float | None:
        return None if t_pd is None else total / t_pd

    return {
        "seed": seed,
        "primal_dual": {n: {k: v for k, v in r.items() if k != "trace"} for n, r in pd.items()},
        "pd_entry_step": t_pd,
        "model_level": {k: v for k, v in ml.items() if k != "trace"},
        "model_level_entry_step": ml["entry_step"],
        "ratio_grid_bisection_model_level": (
            None if ml["entry_step"] is None else a_res["total_steps"] / ml["entry_step"]
        ),
        "sweep_grid_bisection": a_res,
        "sweep_secant": b_res,
        "oracle": {k: v for k, v in oracle.items() if k != "trace"},
        "ratio_grid_bisection": ratio(a_res["total_steps"]),
        "ratio_grid_bisection_fixed_budget": ratio(a_res["total_steps_fixed_budget"]),
        "ratio_secant": ratio(b_res["total_steps"]),
        "ratio_oracle": ratio(oracle["charged_steps"]),
        "ratio_grid_bisection_by_pd_variant": {
            n: (None if r["entry_step"] is None else a_res["total_steps"] / r["entry_step"])
            for n, r in pd.items()
        },
        "traces": {
            "pd": main_pd["trace"],
            "model_level": ml["trace"],
            "runs": {r["lam"]: r["trace"] for r in run.cache.values()},
        },
    }


class Variant(NamedTuple):
    """One primal-dual configuration: dual-update rule, its kappa, dual lr scale, cadence."""

    rule: str
    kappa: float
    scale: float
    every: int

    @property
    def label(self) -> str:
        rule = f"settled(k={self.kappa:g})" if self.rule == "settled" else "every"
        return f"{rule} {self.scale:g}x/{self.every}"


def _variants(args: argparse.Namespace) -> list[Variant]:
    """Sensitivity runs of the primal-dual trainer (besides the headline configuration).

    Settled rule: kappa 0.1 and 0.5; dual lr x0.25, x0.5 (the demo's scale) and x4; an estimate
    every 20 steps. Every-estimate rule (plain gradient descent-ascent): a dual step every 10,
    20 (this benchmark's first headline, the engine test's settings) and 50 steps, and the
    demo's settings (x0.5, every 25).
    """
    if args.no_variants:
        return []
    k = args.kappa
    return [
        Variant("settled", 0.1, 1.0, 10),
        Variant("settled", 0.5, 1.0, 10),
        Variant("settled", k, 0.25, 10),
        Variant("settled", k, 0.5, 10),
        Variant("settled", k, 4.0, 10),
        Variant("settled", k, 1.0, 20),
        Variant("every", k, 1.0, 10),
        Variant("every", k, 1.0, 20),
        Variant("every", k, 1.0, 50),
        Variant("every", k, 0.5, 25),
    ]


def _median(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def plot(levels: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    n = len(levels)
    fig, axes = plt.subplots(2, n, figsize=(6.2 * n, 9.0), squeeze=False)
    for col, lv in enumerate(levels):
        s0 = lv["seeds"][0]
        b, tol = lv["bound"], lv["tolerance"]
        tr = s0["traces"]["pd"]
        runs = {r["lam"]: r for r in s0["sweep_grid_bisection"]["runs"]}
        runs.update({r["lam"]: r for r in s0["sweep_secant"]["runs"]})
        for row, ax in enumerate(axes[:, col]):
            curve = lv["exact_curve"]
            ax.plot([c["kl_p0"] for c in curve], [c["kl_q"] for c in curve], color="0.6", lw=2,
                    label=r"exact optimum $p_\lambda$ (trade-off curve)")
            ax.axhspan(b - tol, b + tol, color="tab:green", alpha=0.12,
                       label="requested level b ± 5%")
            ax.axhline(b, color="tab:green", lw=0.8)
            ax.plot(tr["kl_p0"], tr["kl_q"], "-", color="tab:blue", lw=0.8, alpha=0.7,
                    label="primal-dual trajectory (every 10 steps)")
            ax.plot(tr["kl_p0"][-1], tr["kl_q"][-1], "o", color="tab:blue", ms=7,
                    label="primal-dual, last step")
            for r in runs.values():
                hit = r["outcome"] == "hit"
                ax.plot(r["final_kl_p0"], r["final_kl_q"], "*" if hit else "s", color="tab:red",
                        ms=10 if hit else 5)
                label = f"η={r['eta']:.2g}"
                if r["population_ess"] < 1e-3:
                    label += f" (ESS {r['population_ess']:.0e})"
                ax.annotate(label, (r["final_kl_p0"], r["final_kl_q"]), fontsize=7,
                            xytext=(5, -4 if row else -10), textcoords="offset points")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(r"deviation from $p_0$: KL($p_\theta\,\|\,p_0$) [nats]")
            ax.set_ylabel(r"separation: KL($p_\theta\,\|\,q$) [nats]")
            if row == 0:
                ax.plot([], [], "s", color="tab:red", label="fixed-weight runs (final; ★ = hit)")
                ax.set_xlim(3e-3, 20)
                ax.set_ylim(lv["kl_p0_q"] - 5, 160)
                sweep = s0["sweep_grid_bisection"]["total_steps"]
                ax.set_title(f"δ = {lv['delta']:g} (b = {b:.1f}), seed {s0['seed']}: primal-dual "
                             f"{s0['pd_entry_step']} steps, sweep A {sweep} steps", fontsize=9)
                ax.legend(fontsize=7, loc="upper left")
            else:
                xs = [*tr["kl_p0"], *(r["final_kl_p0"] for r in runs.values()
                                      if abs(r["final_kl_q"] - b) < 4 * tol)]
                ax.set_xlim(0.6 * min(xs), 1.6 * max(xs))
                ax.set_ylim(b - 4 * tol, b + 4 * tol)
                ax.set_title("zoom on the requested level", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deltas", type=float, nargs="+", default=[10.0, 30.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--lr", type=float, default=0.02, help="primal Adam learning rate")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--tol", type=float, default=0.05, help="relative tolerance on b")
    ap.add_argument("--window", type=int, default=100, help="steps the value must stay")
    ap.add_argument("--every", type=int, default=10, help="evaluate the exact KLs every k steps")
    ap.add_argument("--estimate-every", type=int, default=10,
                    help="primal steps per constraint estimate (the sweep is evaluated as often)")
    ap.add_argument("--dual-update", choices=["settled", "every"], default="settled",
                    help="headline dual-update rule (dualdiff.engine.dual_update)")
    ap.add_argument("--kappa", type=float, default=0.25,
                    help="headline relative-error tolerance of the settled rule")
    ap.add_argument("--pd-steps", type=int, default=300)
    ap.add_argument("--run-steps", type=int, default=300, help="steps of each sweep run")
    ap.add_argument("--dual-scale", type=float, default=1.0,
                    help="headline dual step size in units of 1/|g''(0)|")
    ap.add_argument("--no-variants", action="store_true",
                    help="skip the primal-dual sensitivity runs (see _variants)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: one level, one seed")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the PNG from an existing bench_one_run.json")
    ap.add_argument("--pool", type=int, default=8192,
                    help="pretrained samples of the model-level case (d)")
    ap.add_argument("--output", type=Path, default=None,
                    help="folder (default benchmarks/results; --quick: a temporary folder)")
    args = ap.parse_args(argv)
    args.output = results_location(args.output, RESULTS, quick=args.quick and not args.replot,
                                   name="bench_one_run")
    if args.quick:
        args.deltas, args.seeds, args.no_variants = args.deltas[:1], args.seeds[:1], True
    args.output.mkdir(parents=True, exist_ok=True)
    if args.replot:
        saved = json.loads((args.output / "bench_one_run.json").read_text())
        plot(saved["levels"], args.output / "bench_one_run.png")
        print(f"wrote {args.output / 'bench_one_run.png'}")
        return 0
    warnings.simplefilter("ignore", LowEffectiveSampleSizeWarning)

    t_start = time.perf_counter()
    levels: list[dict[str, Any]] = []
    integration = GridQuadrature(extent=6.0, resolution=3.0)
    with limit_threads(args.threads):
        for delta in args.deltas:
            lv = Level(delta, integration)
            t0 = time.perf_counter()
            seeds = [one(lv, s, args) for s in args.seeds]
            levels.append(
                {
                    "delta": delta,
                    "kl_p0_q": lv.c0,
                    "bound": lv.b,
                    "tolerance": args.tol * lv.b,
                    "tolerance_fraction_of_delta": args.tol * lv.b / delta,
                    "lam_star": lv.lam_star,
                    "eta_star": float(esd_eta(lv.lam_star)[0]),
                    "optimal_value": lv.f_star,
                    "dual_hessian_at_0": -lv.h0,
                    "lam_newton": lv.lam_newton,
                    "exact_curve": lv.curve(),
                    "seeds": seeds,
                    "median_pd_entry_step": _median([s["pd_entry_step"] for s in seeds]),
                    "median_sweep_grid_bisection_steps": _median(
                        [s["sweep_grid_bisection"]["total_steps"] for s in seeds]
                    ),
                    "median_sweep_secant_steps": _median(
                        [s["sweep_secant"]["total_steps"] for s in seeds]
                    ),
                    "median_oracle_steps": _median([s["oracle"]["charged_steps"] for s in seeds]),
                    "median_ratio_grid_bisection": _median(
                        [s["ratio_grid_bisection"] for s in seeds]
                    ),
                    "median_ratio_grid_bisection_fixed_budget": _median(
                        [s["ratio_grid_bisection_fixed_budget"] for s in seeds]
                    ),
                    "median_ratio_secant": _median([s["ratio_secant"] for s in seeds]),
                    "median_ratio_oracle": _median([s["ratio_oracle"] for s in seeds]),
                    "median_model_level_entry_step": _median(
                        [s["model_level_entry_step"] for s in seeds]
                    ),
                    "median_ratio_grid_bisection_model_level": _median(
                        [s["ratio_grid_bisection_model_level"] for s in seeds]
                    ),
                    "seconds": time.perf_counter() - t0,
                }
            )
    total = time.perf_counter() - t_start

    # ---------------------------------------------------------------- report
    rows = []
    for lv in levels:
        for s in lv["seeds"]:
            a, bres = s["sweep_grid_bisection"], s["sweep_secant"]
            rows.append([
                f"{lv['delta']:g}", str(s["seed"]), str(s["pd_entry_step"]),
                f"{a['total_steps']} ({a['n_runs']} runs{'' if a['hit'] else ', no hit'})",
                f"{bres['total_steps']} ({bres['n_runs']})",
                str(s["oracle"]["charged_steps"]),
                _fmt(s["ratio_grid_bisection"]), _fmt(s["ratio_secant"]), _fmt(s["ratio_oracle"]),
            ])
    print(format_table(
        ["delta", "seed", "PD steps", "A grid+bisect", "B secant", "C oracle",
         "A/PD", "B/PD", "C/PD"],
        rows, right={2, 3, 4, 5, 6, 7, 8},
    ))
    print()
    by_variant = _variant_summary(levels)
    print("Primal-dual configurations (headline first): median entry step per delta, median A/PD")
    print(format_table(
        ["configuration", *(f"delta={lv['delta']:g}" for lv in levels), "median A/PD"],
        [
            [name, *(_fmt(e, 0) for e in row["median_entry_step"]), _fmt(row["median_ratio"])]
            for name, row in by_variant.items()
        ],
        right=set(range(1, len(levels) + 2)),
    ))
    print()
    for lv in levels:
        print(
            f"delta={lv['delta']:g}: b={lv['bound']:.2f} (+-{lv['tolerance']:.2f} nats = "
            f"{100 * lv['tolerance_fraction_of_delta']:.0f}% of delta), "
            f"lambda*={lv['lam_star']:.4g} (eta*={lv['eta_star']:.4g}); "
            f"medians: PD {lv['median_pd_entry_step']}, "
            f"A {lv['median_sweep_grid_bisection_steps']}, B {lv['median_sweep_secant_steps']}, "
            f"C {lv['median_oracle_steps']}; ratio A/PD {_fmt(lv['median_ratio_grid_bisection'])} "
            f"(fixed budget {_fmt(lv['median_ratio_grid_bisection_fixed_budget'])}), "
            f"B/PD {_fmt(lv['median_ratio_secant'])}, C/PD {_fmt(lv['median_ratio_oracle'])}"
        )
    print()
    print("(d) Model-level problem (no densities), warm start at estimate_dual's lambda_hat:")
    print(format_table(
        ["delta", "seed", "lambda*", "lambda_hat ± se", "PD steps (a)", "model-level steps",
         "A/model-level"],
        [
            [f"{lv['delta']:g}", str(s["seed"]), f"{lv['lam_star']:.4g}",
             f"{s['model_level']['lam_estimated']:.4g} ± "
             f"{s['model_level']['lam_estimated_stderr']:.1g}",
             str(s["pd_entry_step"]), str(s["model_level_entry_step"]),
             _fmt(s["ratio_grid_bisection_model_level"])]
            for lv in levels for s in lv["seeds"]
        ],
        right={2, 3, 4, 5, 6},
    ))
    headline_ml = _median(
        [s["ratio_grid_bisection_model_level"] for lv in levels for s in lv["seeds"]]
    )
    print(f"Model-level median A/PD: {_fmt(headline_ml)}")
    headline = _median([s["ratio_grid_bisection"] for lv in levels for s in lv["seeds"]])
    ok = headline is not None and headline >= GOAL
    print()
    print("Search strategies (the ratio depends on them):")
    print(f"  A grid+bisection: eta in {GRID_ETA} (ESD default 1 down to 1e-3, all paid), then")
    print("    bisection in log eta on under/over outcomes; each run charged its decision step.")
    print("    'fixed budget': every run charged the settle step of the run at lambda* instead.")
    print("  B informed secant: starts at the PD run's own Newton guess delta/|g''(0)|.")
    print("  C oracle: one run at the exact lambda* (a lower bound no sweep can beat).")
    print(f"Headline (median over levels and seeds of A/PD): {_fmt(headline)} "
          f"(goal >= {GOAL:g}): {'met' if ok else 'NOT met'}; total {total:.0f} s")

    out = {
        "benchmark": "bench_one_run",
        "goal_ratio": GOAL,
        "headline_ratio_grid_bisection": headline,
        "headline_configuration": next(iter(by_variant)),
        "model_level_ratio_grid_bisection": headline_ml,
        "ratio_grid_bisection_by_pd_configuration": by_variant,
        "goal_met": ok,
        "search_strategies": {
            "A_grid_bisection": f"fixed-weight runs at ESD guidance scales {GRID_ETA} (lambda = "
            "eta/(1+eta)), all paid; then bisection in log eta between the largest 'under' and "
            f"the smallest 'over' weight until a run hits (at most {MAX_RUNS} runs)",
            "B_secant": "start at lambda_0 = delta/|g''(0)| (the primal-dual run's first dual "
            "step), then secant steps on (lambda, settled KL(p||q)) from (0, KL(p0||q))",
            "C_oracle": "one fixed-weight run at lambda* from solve_dual",
            "charging_fixed_budget": "alternative for A: every run charged S = the settle "
            "step of the oracle run at lambda* (one per-run budget fixed in advance)",
            "charging": "each fixed-weight run is charged its decision step: settled (value "
            "within tol of its final mean for `window` steps) or, if earlier, clearly over "
            "(value > b + 2 tol); primal-dual is charged its entry step (value within b +- tol "
            "for `window` steps)",
        },
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        }
        | {
            "problem": "RU, p0 = ring_mixture() (8 Gaussians, radius 4, std 0.5), q = component "
            "0, b = KL(p0||q) + delta",
            "integration": "GridQuadrature(extent=6, resolution=3): 85 x 85 points",
            "model": "TrainableGaussianMixture.from_mixture(p0) (weights, means, variances)",
            "primal": "reweighted_dsm, Adam",
            "model_level": "ModelReverseKLProblem(ScoreOnly(p0), [ScoreOnly(q)], "
            "log_ratio=exact, pretrained_data=pool of --pool draws); estimate_dual warm start, "
            "dual lr 1/|g_hat''(0)|, headline rule; exact evaluations as in (a)",
        },
        "environment": environment(args.threads),
        "seconds": total,
        "levels": levels,
    }
    path = args.output / "bench_one_run.json"
    dump_strict_json(_jsonable(out), path, indent=1)  # atomic; NaN -> null + reason
    print(f"wrote {path}")
    if not args.no_plot:
        png = args.output / "bench_one_run.png"
        plot(levels, png)
        print(f"wrote {png}")
    return 0


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _variant_summary(levels: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per primal-dual configuration: median entry step per level and median A/PD ratio."""
    names = list(levels[0]["seeds"][0]["primal_dual"])
    out = {}
    for name in names:
        entries = [
            _median([s["primal_dual"][name]["entry_step"] for s in lv["seeds"]]) for lv in levels
        ]
        ratios = [
            s["ratio_grid_bisection_by_pd_variant"][name] for lv in levels for s in lv["seeds"]
        ]
        never = sum(r is None for r in ratios)
        out[name] = {
            "median_entry_step": entries,
            "median_ratio": _median(ratios),
            "runs_never_entering": never,
        }
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


if __name__ == "__main__":
    sys.exit(main())
