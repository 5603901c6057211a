r"""``dualdiff demo``: primal-dual unlearning of a diffusion model on the 2-D ring, vs the optimum.

For each problem — RU (forget ring component 0 as a *concept*), FU (forget it as *data*) and LU
(bound the log-likelihood of generated samples under it) — the demo

1. sets the constraint level relative to the pretrained distribution
   (:math:`b = C(p_0) + \delta`, :math:`\tau = E_{p_0}[\log q] - \delta`) and solves the dual in
   closed form (multipliers, optimal value :math:`P^\star = D^\star`, population effective
   sample size of :math:`w_\lambda`);
2. fine-tunes the pretrained MLP noise-prediction model from its weights with
   :class:`~dualdiff.engine.PrimalDualTrainer` (reweighted denoising score matching, Cooper
   multipliers projected into the dual domain) using **model-based** constraint estimates from
   probability-flow-ODE likelihoods;
3. compares trained multipliers, constraint values and objective with the closed form and
   writes ``report.json`` and figures.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._validation import check_choice, check_int
from ..datasets.ring import load_pretrained_ring, ring_mixture
from ..engine import ConstraintEstimator, PrimalDualTrainer
from ..problems import AnalyticProblem as UnlearningProblem  # the closed-form problems
from ..problems import KLConstrainedProblem, LikelihoodConstrainedProblem
from .report import begin_report, finish_report, save_figure, tolerance_statement, verdict

__all__ = ["DemoConfig", "make_problem", "run_demo", "run_problem"]

#: Forgotten ring component.
FORGET = 0


@dataclass(frozen=True)
class DemoConfig:
    r"""Settings of one demo run.

    Attributes
    ----------
    kind
        ``"RU"``, ``"FU"`` or ``"LU"``.
    delta
        Level offset from the pretrained distribution's constraint value (nats).
    steps
        Primal steps.
    estimate_every
        Primal steps per dual step (and per model-based constraint estimate).
    estimate_samples
        Samples per ODE-based estimate during training.
    final_samples
        Samples of the final ODE-based evaluation.
    primal_lr
        Adam step size of the reweighted denoising score-matching step. It decays linearly to
        ``final_lr_fraction * primal_lr`` over the run, so the model settles on the target of
        the converged multipliers.
    batch_size
        Batch of the reweighted denoising score-matching step.
    final_lr_fraction
        See ``primal_lr``.
    dual_step
        Dual step size as a multiple of :math:`1/|g''(\lambda^\star)|` (the dual's curvature).
    dual_update
        The trainer's dual-update rule, ``"every"`` (each estimate is a dual step) or
        ``"settled"`` (only once the model has settled; use ``dual_step=1``, the Newton step).
    average_fraction
        Fraction of the final steps whose multipliers are averaged for the report.
    figure_samples
        Samples drawn from each model for the figures.
    """

    kind: str
    delta: float
    steps: int = 1200
    estimate_every: int = 25
    estimate_samples: int = 256
    final_samples: int = 2000
    primal_lr: float = 5e-4
    final_lr_fraction: float = 0.1
    batch_size: int = 512
    dual_step: float = 0.5
    dual_update: str = "every"
    average_fraction: float = 0.4
    figure_samples: int = 2000


DEFAULTS = {
    "RU": DemoConfig("RU", delta=32.0),
    "FU": DemoConfig("FU", delta=2.0, steps=2000, estimate_every=40),
    "LU": DemoConfig("LU", delta=32.0),
}


def make_problem(kind: str, delta: float) -> tuple[UnlearningProblem, float]:
    """The ring problem of ``kind`` with level ``C(p0) + delta`` (``- delta`` for LU)."""
    check_choice(kind, "kind", "make_problem", ["RU", "FU", "LU"])
    p0 = ring_mixture()
    q = p0.component(FORGET)

    def build(level: float) -> UnlearningProblem:
        if kind == "LU":
            return LikelihoodConstrainedProblem(p0, [q], bounds=[level], likelihood="log")
        if kind == "RU":
            return KLConstrainedProblem(p0, [q], bounds=[level], direction="reverse")
        return KLConstrainedProblem(p0, [q], bounds=[level], direction="forward")

    probe = build(0.0)
    c0 = float(probe.constraint_values(p0)[0][0])
    level = c0 - delta if kind == "LU" else c0 + delta
    return build(level), c0


def _linear_lr_decay(lr0: float, final_fraction: float, steps: int) -> Any:
    """Trainer callback: primal step size decays linearly from ``lr0`` to ``final_fraction*lr0``."""

    def callback(trainer: PrimalDualTrainer, record: Any) -> None:
        frac = min(1.0, (record.step + 1) / steps)
        lr = lr0 * (1.0 - (1.0 - final_fraction) * frac)
        for opt in trainer.constrained_optimizer.primal_optimizers or ():
            for group in opt.param_groups:
                group["lr"] = lr

    return callback


def _ode_estimator(
    prob: UnlearningProblem, n: int, tol: float, *, objective: bool
) -> ConstraintEstimator:
    """Model-based estimates from probability-flow-ODE samples and likelihoods."""
    ode = {"rtol": tol, "atol": tol}
    return ConstraintEstimator(
        prob,
        method="ode",
        n_samples=n,
        estimate_objective=objective,
        ode_kwargs=ode,
        sampler_kwargs=ode,
    )


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def run_problem(
    cfg: DemoConfig,
    output: Path,
    *,
    seed: int = 0,
    progress: bool = True,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one problem; returns its report entry (also writes its figures when possible).

    Figures are written atomically and recorded in ``report["outputs"]`` when ``report`` is
    given (see :mod:`dualdiff.experiments.report`).
    """
    t0 = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    prob, c_p0 = make_problem(cfg.kind, cfg.delta)
    sol = prob.solve_dual()
    lam_star = sol.multipliers
    curvature = float(-prob.dual_hessian(lam_star)[0, 0])
    dual_lr = cfg.dual_step / curvature
    ess = sol.target.population_ess(prob.rule)
    pretrained = load_pretrained_ring()
    model = copy.deepcopy(pretrained)
    for p in model.parameters():
        p.requires_grad_(True)
    estimator = _ode_estimator(prob, cfg.estimate_samples, 1e-4, objective=False)
    trainer = PrimalDualTrainer(
        prob,
        model,
        primal="reweighted_dsm",
        primal_lr=cfg.primal_lr,
        dual_lr=dual_lr,
        batch_size=cfg.batch_size,
        estimator=estimator,
        estimate_every=cfg.estimate_every,
        dual_update=cfg.dual_update,
        seed=seed,
        callbacks=[_linear_lr_decay(cfg.primal_lr, cfg.final_lr_fraction, cfg.steps)],
    )
    history = trainer.fit(cfg.steps, progress=progress)
    n_avg = max(1, int(cfg.average_fraction * cfg.steps))
    tail = history.records[-n_avg:]
    lam_trained = [_mean([r.multipliers[i] for r in tail]) for i in range(prob.m)]
    # final model-based evaluation with more samples, objective included
    final_est = _ode_estimator(prob, cfg.final_samples, 1e-5, objective=True)
    gen = torch.Generator().manual_seed(seed + 1)
    est = final_est(model, gen)
    pre_est = final_est(pretrained, torch.Generator().manual_seed(seed + 2))
    assert est.objective is not None and est.objective_stderr is not None
    cert = prob.certificate_from_estimates(
        lam_trained,
        est.objective,
        est.constraints,
        objective_error=est.objective_stderr,
        constraint_errors=est.constraint_stderr,
        method="ode",
    )
    levels = prob.bounds.tolist()
    c_trained = est.constraints.tolist()
    entry: dict[str, Any] = {
        "problem": cfg.kind,
        "instance": {
            "pretrained": prob.pretrained.to_dict(),
            "unlearn": [q.to_dict() for q in prob.unlearn],
            "forgotten_component": FORGET,
        },
        "config": asdict(cfg),
        "bounds": levels,
        "constraint_value_of_pretrained_distribution": c_p0,
        "multipliers_closed_form": lam_star.tolist(),
        "multipliers_trained": lam_trained,
        "constraint_values_trained": c_trained,
        "constraint_stderr_trained": est.constraint_stderr.tolist(),
        "constraint_values_pretrained_model": pre_est.constraints.tolist(),
        "objective_trained": est.objective,
        "objective_stderr_trained": est.objective_stderr,
        "objective_pretrained_model": pre_est.objective,
        "dual_optimum": sol.dual_value,
        "dual_status": sol.status,
        "certificate_closed_form": sol.certificate.to_dict(),
        "certificate": cert.to_dict(),
        "population_ess": ess,
        "dual_lr": dual_lr,
        "dual_update": cfg.dual_update,
        "relative_errors": {
            "multipliers": [
                abs(a - b) / abs(b) for a, b in zip(lam_trained, lam_star.tolist(), strict=True)
            ],
            "constraints": [
                abs(a - b) / abs(b) for a, b in zip(c_trained, levels, strict=True)
            ],
            "objective": abs(est.objective - sol.dual_value) / abs(sol.dual_value),
        },
        "history": {
            "step": [r.step for r in history.records],
            "multipliers": [r.multipliers for r in history.records],
            "estimates": [
                {"step": r.step, **(r.estimate or {})} for r in history.records if r.estimate
            ],
        },
    }
    entry["wall_time_s"] = time.perf_counter() - t0
    _figures(entry, prob, sol, pretrained, model, output, seed, cfg.figure_samples, report)
    return entry


def _figures(
    entry: dict[str, Any],
    prob: UnlearningProblem,
    sol: Any,
    pretrained: Any,
    model: Any,
    output: Path,
    seed: int,
    n_samples: int,
    report: dict[str, Any] | None = None,
) -> None:
    """Sample plots (before/after over the densities) and trajectories, written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - plot extra missing
        entry["figures"] = []
        entry["figures_note"] = (
            "matplotlib is not installed: pip install 'dualdiff-unlearning[plot]'"
        )
        return
    from ..diffusion.sampling import sample_ode

    kind = entry["problem"]
    gen = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        kw: dict[str, Any] = {"rtol": 1e-4, "atol": 1e-4, "dtype": torch.float32}
        before = sample_ode(pretrained, (n_samples, 2), generator=gen, **kw)
        after = sample_ode(model, (n_samples, 2), generator=gen, **kw)
    g = torch.linspace(-7, 7, 200, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    dens = torch.exp(sol.target.log_prob(pts)).reshape(200, 200)
    dens0 = torch.exp(prob.pretrained.log_prob(pts)).reshape(200, 200)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharex=True, sharey=True)
    mu = prob.unlearn[0].means[0].tolist()
    for ax, smp, title, d, dlabel in (
        (axes[0], before, "pretrained model: samples over the p0 density", dens0,
         "p0 density"),
        (axes[1], after, f"fine-tuned model: samples over the closed-form {kind} target",
         dens, f"{kind} target density"),
    ):
        cs = ax.contour(xx.numpy(), yy.numpy(), d.numpy(), levels=8, cmap="viridis",
                        linewidths=0.8)
        fig.colorbar(cs, ax=ax, shrink=0.85, label=dlabel)
        s = smp.detach().cpu().numpy()
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.35, color="tab:red",
                   label=f"model samples (n={len(s)}, ODE)")
        ax.scatter([mu[0]], [mu[1]], marker="x", s=80, color="black",
                   label="forgotten component (mean)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, markerscale=2)
    fig.tight_layout()
    samples_png = save_figure(fig, output / f"{kind}_samples.png", report, dpi=110)
    plt.close(fig)

    hist = entry["history"]
    unit = "E[log q] (nats)" if kind == "LU" else "KL (nats)"
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    axes[0].plot(hist["step"], [m[0] for m in hist["multipliers"]], label="trained")
    axes[0].axhline(entry["multipliers_closed_form"][0], color="k", ls="--",
                    label="closed form lam*")
    axes[0].set_xlabel("primal step")
    axes[0].set_ylabel("multiplier lam (dimensionless)")
    axes[0].set_title("dual variable", fontsize=9)
    axes[0].legend(fontsize=8)
    est = hist["estimates"]
    steps = [e["step"] for e in est]
    vals = [e["constraints"][0] for e in est]
    errs = [e["constraint_stderr"][0] for e in est]
    axes[1].errorbar(steps, vals, yerr=errs, fmt="o-", ms=3, label="ODE estimate ± se")
    axes[1].axhline(entry["bounds"][0], color="k", ls="--", label="level")
    axes[1].set_xlabel("primal step")
    axes[1].set_ylabel(f"constraint value, {unit}")
    axes[1].set_title("constraint", fontsize=9)
    axes[1].legend(fontsize=8)
    names = ["pretrained model", "fine-tuned model"]
    fvals = [entry["objective_pretrained_model"], entry["objective_trained"]]
    ferrs = [0.0, entry["objective_stderr_trained"]]
    axes[2].errorbar([0, 1], fvals, yerr=ferrs, fmt="o", ms=6, capsize=4,
                     label="ODE estimate ± se")
    axes[2].axhline(entry["dual_optimum"], color="k", ls="--", label="P* = D* (closed form)")
    axes[2].set_xticks([0, 1], names)
    axes[2].set_xlim(-0.5, 1.5)
    axes[2].set_ylabel("objective f, KL (nats)")
    axes[2].set_title("objective vs the optimum", fontsize=9)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{kind}: primal-dual trajectories", fontsize=10)
    fig.tight_layout()
    traj_png = save_figure(fig, output / f"{kind}_trajectories.png", report, dpi=110)
    plt.close(fig)
    entry["figures"] = [samples_png.name, traj_png.name]


TOLERANCES = {"multipliers": 0.10, "constraints": 0.10, "objective": 0.25}


#: File names the demo writes (stale ones are removed before a run).
OWNED_PATTERNS = ("RU_*.png", "FU_*.png", "LU_*.png")


def run_demo(
    output: str | Path,
    *,
    problems: tuple[str, ...] = ("RU", "FU", "LU"),
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the demo for ``problems`` and write ``output/report.json`` (+ PNG figures).

    ``steps`` and ``overrides`` (any :class:`DemoConfig` field) replace the defaults of every
    run (e.g. a short smoke run in the tests). Repeated problems run once.

    The output folder is claimed first (:func:`~dualdiff.experiments.report.begin_report`: a
    report marked ``"incomplete"`` with the arguments, seed and versions; stale figures of an
    earlier run removed), figures are written atomically, and the final report replaces the
    incomplete one atomically as strict JSON.

    Returns the report; ``report["passed"]`` says whether every run's verdict
    (:func:`~dualdiff.experiments.report.verdict`: multipliers and constraint values within
    10%, objective within 25% of the optimum, estimated slack and duality gap not below
    -3 standard errors) is ``ok``; ``report["verdict"]`` states the tolerances.
    """
    owner = "run_demo"
    seed = check_int(seed, "seed", owner, low=0)
    if steps is not None:
        steps = check_int(steps, "steps", owner, low=1)
    if isinstance(problems, str):
        problems = (problems,)
    for kind in problems:
        check_choice(kind, "problems", owner, list(DEFAULTS))
    problems = tuple(dict.fromkeys(problems))
    out = Path(output)
    report = begin_report(
        out,
        experiment="dualdiff demo",
        arguments={"problems": list(problems), "seed": seed, "steps": steps,
                   "overrides": dict(overrides or {})},
        seed=seed,
        owned_patterns=OWNED_PATTERNS,
    )
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    runs = []
    for kind in problems:
        changes = dict(overrides or {})
        if steps is not None:
            changes["steps"] = steps
        cfg = DemoConfig(**{**asdict(DEFAULTS[kind]), **changes})
        runs.append(run_problem(cfg, out, seed=seed, progress=progress, report=report))
    for r in runs:
        v = verdict(r["relative_errors"], TOLERANCES, r["certificate"])
        r["verdict"] = v
        r["passed"] = v["passed"]
    report.update({
        "runs": runs,
        "tolerances": TOLERANCES,
        "verdict": tolerance_statement(TOLERANCES),
        "passed": all(r["passed"] for r in runs),
        "wall_time_s": time.perf_counter() - t0,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    })
    finish_report(out, report)
    return report
