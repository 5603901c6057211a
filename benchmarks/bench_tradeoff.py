"""Separation vs deviation and retention: constrained methods at levels vs weight sweeps.

The paper's central comparison (issue 9). In each setting the constrained methods run at
``>= 3`` levels and each weight-based baseline at ``>= 5`` weights, all with the same model,
parameters, optimiser, batch and step budget, over ``--seeds`` (default 0 1 2). Per run:

* **separation** (how far from the unwanted distribution),
* **deviation** from the pretrained model (the problem's objective or a path-KL),
* **retention** of what must be kept.

Settings
--------
``ring-class``  (exact, analytic; class removal)
    p0 = the 8-mode ring (``ring_mixture()``), q = mode 0; model ``TrainableGaussianMixture``
    initialised at p0, reweighted-DSM primal step, Adam lr 0.02, batch 512, 400 steps
    (``bench_one_run``'s setting). RU at levels KL(p0||q) + delta, LU (``log q``) at levels
    E_p0[log q] - delta, vs **ESD** at guidance scales eta (RU's fixed weight
    eta/(1+eta), unconditional anchor). Separation = the model's mass in mode 0's cell
    (Bayes cell of p0; lower is better -- the ring's "forget accuracy"), deviation =
    KL(p||p0), retention = 1 - TV(p restricted to the other cells, p0's other 7 modes).
    Constrained runs use exact constraint values (``ConstraintEstimator(method="exact")``),
    the settled dual rule and the Newton dual step 1/|g''(0)|.
``ring-data``  (exact, analytic; data removal)
    Same p0 and q (the "forget data" q is a mode, a = 1/8 of p0, lam_max = 1/8). FU at levels
    KL(q||p0) + delta vs **SISS** at fixed weights lam (FU's signed loss at a fixed
    multiplier) and **NegGrad** (ascent on the forget loss with a retain term of q_r = p0's
    other modes) at forget weights nu. Separation = KL(q||p) (forget NLL rise; higher is
    better), deviation = KL(p0||p), retention = 1 - TV as above.
``digits-class``  (the shipped digits DDPM; ``dualdiff digits --quick`` budget)
    RU and LU at levels C_0 +- delta vs ESD (unconditional anchor) at scales eta.
    Separation = forget accuracy (fraction of unconditional samples of digit c; lower is
    better), deviation = path-KL of the null view, retention = retained accuracy.
``digits-data``
    FU at levels (multiples of the default FU level) vs SISS as published (importance-
    sampled pairs, kappa = 1/2) at five values of its knob ``scaling_norm`` (the forget
    gradient's fixed norm; ``"auto"`` in ``dualdiff digits`` is 10% of the data gradient's
    norm, about 0.05) and NegGrad at forget weights. Separation = forget-set NLL rise (higher is
    better), deviation = path-KL, retention = held-out NLL change (lower is better).

Dominance (per setting and seed): for every constrained run and every baseline, the
baseline's separation is interpolated (linear in deviation, between the two baseline runs
that bracket the constrained run's deviation) and compared with the constrained run's; the
table reports the difference, "+" meaning the constrained run forgets more at equal
deviation. Runs outside the baseline's deviation range are reported as "outside".

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_tradeoff.py [--settings ring-class ...]
      [--seeds 0 1 2] [--quick]
Writes benchmarks/results/bench_tradeoff_<setting>.{json,md,png} (``--quick``: a smoke budget,
to a temporary folder).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("ring-class", "ring-data", "digits-class", "digits-data")


@dataclass(frozen=True)
class Axes:
    """What a setting measures: keys, labels and which direction is better."""

    separation: str
    separation_label: str
    higher_separation_better: bool
    deviation_label: str
    retention: str
    retention_label: str
    constrained: tuple[str, ...]
    baselines: tuple[str, ...]


AXES = {
    "ring-class": Axes("forget_mass", "mass in mode 0's cell (lower = more forgetting)", False,
                       "KL(p || p0) [nats]", "retention", "retention 1 - TV (other modes)",
                       ("RU", "LU"), ("ESD",)),
    "ring-data": Axes("kl_q_p", "KL(q || p) = forget NLL rise + const [nats]", True,
                      "KL(p0 || p) [nats]", "retention", "retention 1 - TV (other modes)",
                      ("FU",), ("SISS", "NegGrad")),
    "digits-class": Axes("forget_accuracy", "forget accuracy (lower = more forgetting)", False,
                         "path-KL to the pretrained model [nats]", "retained_accuracy",
                         "retained accuracy", ("RU", "LU"), ("ESD",)),
    "digits-data": Axes("forget_nll_rise", "forget-set NLL rise [nats/image]", True,
                        "path-KL to the pretrained model [nats]", "heldout_nll_change",
                        "|held-out NLL change| [nats/image]", ("FU",), ("SISS", "NegGrad")),
}


# ------------------------------------------------------------------------------ ring
class Ring:
    """The analytic ring problems and exact metrics on one grid."""

    def __init__(self) -> None:
        from dualdiff import GridQuadrature, KLConstrainedProblem, LikelihoodConstrainedProblem
        from dualdiff.datasets import ring_mixture
        from dualdiff.models import GaussianMixture

        self.p0 = ring_mixture()
        self.q = self.p0.component(0)
        self.q_r = GaussianMixture(self.p0.weights[1:] / self.p0.weights[1:].sum(),
                                   self.p0.means[1:], self.p0.covariances[1:])
        self.grid = GridQuadrature(extent=6, resolution=3)
        self.ru0 = KLConstrainedProblem(self.p0, [self.q], bounds=[0.0], integration=self.grid)
        self.rule = self.ru0.rule
        x = self.rule.points
        self.w = torch.exp(self.rule.log_weights)
        self.cell0 = self.p0.responsibilities(x).argmax(-1) == 0
        self.log_q = self.q.log_prob(x)
        self.log_p0 = self.p0.log_prob(x)
        self.p_r = torch.exp(self.q_r.log_prob(x))
        self.c_ru = float(self.ru0.constraint_values(self.p0)[0][0])
        self.e_logq = float((self.w * torch.exp(self.log_p0) * self.log_q).sum())
        self.c_fu = float((self.w * torch.exp(self.log_q) * (self.log_q - self.log_p0)).sum())
        self.ru = lambda b: KLConstrainedProblem(self.p0, [self.q], bounds=[b],
                                                 integration=self.grid)
        self.lu = lambda tau: LikelihoodConstrainedProblem(self.p0, [self.q], bounds=[tau],
                                                           integration=self.grid)
        self.fu = lambda b: KLConstrainedProblem(self.p0, [self.q], bounds=[b],
                                                 direction="forward", integration=self.grid)

    def metrics(self, model: Any) -> dict[str, float]:
        """Exact (grid) separation, deviation and retention of a trained mixture."""
        with torch.no_grad():
            lp = model.log_prob(self.rule.points).to(torch.float64)
        p = torch.exp(lp)
        mass = float((self.w * p).sum())
        out_mass = float((self.w * p * (~self.cell0)).sum())
        p_out = p * (~self.cell0) / max(out_mass, 1e-300)
        tv = 0.5 * float((self.w * (p_out - self.p_r).abs()).sum())
        p0 = torch.exp(self.log_p0)
        q = torch.exp(self.log_q)
        return {
            "mass": mass,
            "forget_mass": float((self.w * p * self.cell0).sum()),
            "kl_p_p0": float((self.w * p * (lp - self.log_p0)).sum()),
            "kl_p_q": float((self.w * p * (lp - self.log_q)).sum()),
            "kl_p0_p": float((self.w * p0 * (self.log_p0 - lp)).sum()),
            "kl_q_p": float((self.w * q * (self.log_q - lp)).sum()),
            "e_p_log_q": float((self.w * p * self.log_q).sum()),
            "retention": 1.0 - tv,
        }


RING_TRAIN = {"primal_lr": 0.02, "batch_size": 512}


def _ring_model(ring: Ring) -> Any:
    from dualdiff.engine import TrainableGaussianMixture

    return TrainableGaussianMixture.from_mixture(ring.p0)


def _ring_pd(ring: Ring, prob: Any, seed: int, steps: int) -> tuple[Any, list[float]]:
    from dualdiff.engine import ConstraintEstimator, PrimalDualTrainer, SettledPrimal

    model = _ring_model(ring)
    h0 = abs(float(prob.dual_hessian([0.0])[0, 0]))
    tr = PrimalDualTrainer(prob, model, dual_lr=1.0 / h0, estimate_every=10,
                           dual_update=SettledPrimal(kappa=0.25),
                           estimator=ConstraintEstimator(prob, method="exact"),
                           seed=seed, **RING_TRAIN)
    for _ in range(steps):
        tr.step()
    return model, [float(v) for v in tr.multipliers]


def _ring_fixed(ring: Ring, prob: Any, lam: float, seed: int, steps: int) -> Any:
    from dualdiff.baselines import FixedWeightTrainer
    from dualdiff.engine import ConstraintEstimator

    model = _ring_model(ring)
    tr = FixedWeightTrainer(prob, model, [lam], estimate_every=10**9,
                            estimator=ConstraintEstimator(prob, method="exact"),
                            seed=seed, **RING_TRAIN)
    for _ in range(steps):
        tr.step()
    return model


def _ring_neggrad(ring: Ring, nu: float, seed: int, steps: int) -> Any:
    from dualdiff.baselines import neggrad_loss

    model = _ring_model(ring)
    opt = torch.optim.Adam(model.parameters(), lr=RING_TRAIN["primal_lr"])
    g = torch.Generator().manual_seed(seed)
    n = RING_TRAIN["batch_size"]
    for _ in range(steps):
        xr = ring.q_r.sample(n, generator=g)
        xf = ring.q.sample(n, generator=g)
        loss = neggrad_loss(model, xr, xf, 1.0, g, forget_weight=nu)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def run_ring_class(seeds: list[int], quick: bool) -> list[dict[str, Any]]:
    from dualdiff import esd_lambda

    ring = Ring()
    steps = 20 if quick else 400
    ru_deltas = (10.0, 30.0, 60.0)
    lu_deltas = (10.0, 30.0, 60.0)
    etas = (0.003, 0.01, 0.02, 0.04, 0.08)
    rows = []
    for seed in seeds:
        for d in ru_deltas:
            prob = ring.ru(ring.c_ru + d)
            model, lam = _ring_pd(ring, prob, seed, steps)
            rows.append({"method": "RU", "knob": f"delta={d:g}", "seed": seed,
                         "multipliers": lam, **ring.metrics(model)})
        for d in lu_deltas:
            prob = ring.lu(ring.e_logq - d)
            model, lam = _ring_pd(ring, prob, seed, steps)
            rows.append({"method": "LU", "knob": f"delta={d:g}", "seed": seed,
                         "multipliers": lam, **ring.metrics(model)})
        prob = ring.ru(ring.c_ru)
        for eta in etas:
            lam = float(esd_lambda([eta])[0])
            model = _ring_fixed(ring, prob, lam, seed, steps)
            rows.append({"method": "ESD", "knob": f"eta={eta:g}", "seed": seed,
                         "multipliers": [lam], **ring.metrics(model)})
        print(f"ring-class seed {seed}: {len(rows)} runs", flush=True)
    for r in rows:
        r["deviation"] = r["kl_p_p0"]
    return rows


def run_ring_data(seeds: list[int], quick: bool) -> list[dict[str, Any]]:
    ring = Ring()
    steps = 20 if quick else 400
    lam_max = float(ring.fu(ring.c_fu + 1.0).lam_max[0].value)
    fu_deltas = (0.5, 1.0, 2.0)
    siss_lams = tuple(f * lam_max for f in (0.2, 0.4, 0.6, 0.8, 0.95))
    nus = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    rows = []
    for seed in seeds:
        for d in fu_deltas:
            prob = ring.fu(ring.c_fu + d)
            model, lam = _ring_pd(ring, prob, seed, steps)
            rows.append({"method": "FU", "knob": f"delta={d:g}", "seed": seed,
                         "multipliers": lam, "lam_max": lam_max, **ring.metrics(model)})
        prob = ring.fu(ring.c_fu)
        for lam in siss_lams:
            model = _ring_fixed(ring, prob, lam, seed, steps)
            rows.append({"method": "SISS", "knob": f"lam={lam:.4g}", "seed": seed,
                         "multipliers": [lam], "lam_max": lam_max, **ring.metrics(model)})
        for nu in nus:
            model = _ring_neggrad(ring, nu, seed, steps)
            rows.append({"method": "NegGrad", "knob": f"nu={nu:g}", "seed": seed,
                         "multipliers": [], **ring.metrics(model)})
        print(f"ring-data seed {seed}: {len(rows)} runs", flush=True)
    for r in rows:
        r["deviation"] = r["kl_p0_p"]
    return rows


# ------------------------------------------------------------------------------ digits
def _digits_runs(seeds: list[int], quick: bool,
                 plan: Callable[[Any, dict[str, Any], dict[str, Any]],
                                list[tuple[str, str, dict[str, Any], Any]]]
                 ) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], Any]:
    from dualdiff.experiments.digits import (
        DigitsConfig,
        DigitsSetup,
        pretrained_levels,
        run_method,
        smoke_config,
    )

    base = smoke_config() if quick else DigitsConfig.quick()
    base = replace(base, esd_anchors=("unconditional",))
    rows: list[dict[str, Any]] = []
    pres: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        setup = DigitsSetup(replace(base, seed=seed))
        pre, levels, _ = pretrained_levels(setup)
        pres[seed] = pre
        for method, knob, lv, cfg in plan(base, pre, levels):
            setup.cfg = replace(cfg, seed=seed)
            print(f"seed {seed}: {method} {knob}", flush=True)
            for row in run_method(setup, method, {**levels, **lv}, progress=False):
                row.pop("_samples")
                rows.append({"seed": seed, "knob": knob, **row,
                             "forget_nll_rise": row["forget_nll"] - pre["forget_nll"],
                             "heldout_nll_change": abs(row["heldout_nll"]
                                                       - pre["heldout_nll"])})
    return rows, pres, base


def run_digits_class(seeds: list[int], quick: bool
                     ) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], Any]:
    def plan(base: Any, pre: dict[str, Any], levels: dict[str, Any]
             ) -> list[tuple[str, str, dict[str, Any], Any]]:
        c_ru, c_lu = pre["ru_constraint_on_data"], pre["lu_constraint_on_data"]
        out = [("RU", f"delta={d}", {"RU": c_ru + d}, base) for d in (0.75, 1.5, 3.0)]
        out += [("LU", f"delta={d}", {"LU": c_lu - d}, base) for d in (0.75, 1.5, 3.0)]
        out += [("ESD", f"eta={e}", {}, replace(base, esd_eta=e))
                for e in (0.1, 0.25, 0.5, 1.0, 2.0)]
        return out

    return _digits_runs(seeds, quick, plan)


def run_digits_data(seeds: list[int], quick: bool
                    ) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], Any]:
    def plan(base: Any, pre: dict[str, Any], levels: dict[str, Any]
             ) -> list[tuple[str, str, dict[str, Any], Any]]:
        fu = levels["FU"]
        out = [("FU", f"level={f:g}x", {"FU": f * fu}, base) for f in (0.5, 1.0, 1.5)]
        out += [("SISS", f"scaling_norm={v:g}", {}, replace(base, siss_scaling_norm=v))
                for v in (0.005, 0.01, 0.02, 0.05, 0.1)]
        out += [("NegGrad", f"nu={nu:g}", {}, replace(base, neggrad_forget_weight=nu))
                for nu in (0.01, 0.02, 0.05, 0.1, 0.2)]
        return out

    return _digits_runs(seeds, quick, plan)


# ------------------------------------------------------------------------------ analysis
def _interp(points: list[tuple[float, float]], x: float) -> float | None:
    """Baseline separation at deviation ``x``, interpolated between the bracketing runs.

    Log-log when both quantities are positive (the frontiers are close to power laws there;
    a straight chord of a convex frontier would credit the constrained run with an advantage
    it does not have), linear otherwise. ``None`` outside the baseline's range.
    """
    pts = sorted(points)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            if x1 == x0:
                return y0
            if min(x0, y0, x1, y1, x) > 0:
                s = math.log(x / x0) / math.log(x1 / x0)
                return math.exp(math.log(y0) + s * (math.log(y1) - math.log(y0)))
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def dominance(rows: list[dict[str, Any]], ax: Axes) -> list[dict[str, Any]]:
    """Constrained separation minus the baseline's at equal deviation (same seed)."""
    sign = 1.0 if ax.higher_separation_better else -1.0
    out = []
    for r in rows:
        if r["method"] not in ax.constrained or r.get("deviation") is None:
            continue
        for b in ax.baselines:
            pts = [(x["deviation"], x[ax.separation]) for x in rows
                   if x["method"] == b and x["seed"] == r["seed"]
                   and x.get("deviation") is not None and math.isfinite(x["deviation"])]
            y = _interp(pts, r["deviation"])
            out.append({"method": r["method"], "knob": r["knob"], "seed": r["seed"],
                        "baseline": b, "deviation": r["deviation"],
                        "advantage": None if y is None else sign * (r[ax.separation] - y)})
    return out


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def report(setting: str, rows: list[dict[str, Any]], extra: dict[str, Any], folder: Path,
           wall: float) -> str:
    """Write ``bench_tradeoff_<setting>.{json,md,png}``; return the markdown."""
    from dualdiff._io import dump_strict_json
    from dualdiff.experiments.report import environment

    ax = AXES[setting]
    dom = dominance(rows, ax)
    lines = [f"# Trade-off: {setting}\n", f"Seeds {sorted({r['seed'] for r in rows})}; "
             f"{len(rows)} runs; {wall:.0f} s wall. Separation: {ax.separation_label}; "
             f"deviation: {ax.deviation_label}; retention: {ax.retention_label}.\n",
             "| method | knob | seed | separation | deviation | retention | lam |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lam = ",".join(f"{v:.3g}" for v in r.get("multipliers", []))
        lines.append(f"| {r['method']} | {r['knob']} | {r['seed']} | "
                     f"{_fmt(r[ax.separation])} | {_fmt(r.get('deviation'))} | "
                     f"{_fmt(r.get(ax.retention))} | {lam} |")
    lines += ["", "Advantage at equal deviation (constrained minus baseline separation, "
              "oriented so that + = more forgetting; 'outside' = deviation outside the "
              "baseline's range; log-log interpolation between the two bracketing baseline runs):",
              "", "| method | knob | baseline | seeds: advantage | "
              "median |", "|---|---|---|---|---|"]
    keys = sorted({(d["method"], d["knob"], d["baseline"]) for d in dom})
    for m, k, b in keys:
        sel = [d for d in dom if (d["method"], d["knob"], d["baseline"]) == (m, k, b)]
        vals = [d["advantage"] for d in sel if d["advantage"] is not None]
        per = ", ".join(f"{d['seed']}: {_fmt(d['advantage'], '+.3g')}"
                        if d["advantage"] is not None else f"{d['seed']}: outside" for d in sel)
        lines.append(f"| {m} | {k} | {b} | {per} | "
                     f"{_fmt(statistics.median(vals) if vals else None, '+.3g')} |")
    md = "\n".join(lines) + "\n"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(md)
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / f"bench_tradeoff_{setting}.md")
    dump_strict_json({"benchmark": "bench_tradeoff", "setting": setting, "axes": asdict(ax),
                      "runs": rows, "dominance": dom, "wall_s": wall, **extra,
                      "environment": environment()},
                     folder / f"bench_tradeoff_{setting}.json")
    _plot(setting, rows, extra.get("pretrained"), folder / f"bench_tradeoff_{setting}.png")
    return md


def _plot(setting: str, rows: list[dict[str, Any]], pre: Any, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return
    ax_ = AXES[setting]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    markers = {"RU": "o", "LU": "s", "FU": "D", "ESD": "^", "SISS": "v", "NegGrad": "x"}
    for i, method in enumerate(ax_.constrained + ax_.baselines):
        sel = [r for r in rows if r["method"] == method and r.get("deviation") is not None]
        if not sel:
            continue
        kw = {"color": f"C{i}", "marker": markers.get(method, "."), "linestyle": "none",
              "label": method}
        axes[0].plot([r["deviation"] for r in sel], [r[ax_.separation] for r in sel], **kw)
        axes[1].plot([r[ax_.retention] for r in sel], [r[ax_.separation] for r in sel], **kw)
    if pre:
        for seed, p in pre.items():
            if ax_.separation in p:
                axes[0].plot([0.0], [p[ax_.separation]], "k*",
                             label="pretrained" if seed == min(pre) else None)
    axes[0].set_xlabel(ax_.deviation_label)
    axes[0].set_xscale("symlog", linthresh=0.1)
    axes[1].set_xlabel(ax_.retention_label)
    for a in axes:
        a.set_ylabel(ax_.separation_label)
        a.legend(fontsize=7)
    fig.suptitle(f"bench_tradeoff: {setting} (all seeds)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    plt.close(fig)


def _reanalyse(settings: list[str]) -> int:
    """Rewrite ``bench_tradeoff_<setting>.{md,json,png}`` from the runs saved in the JSON."""
    import json

    for setting in dict.fromkeys(settings):
        path = RESULTS / f"bench_tradeoff_{setting}.json"
        if not path.exists():
            print(f"{setting}: no {path.name}, skipped")
            continue
        saved = json.loads(path.read_text())
        extra = {k: saved[k] for k in ("seeds", "config") if k in saved}
        if "pretrained" in saved:
            extra["pretrained"] = {int(k): v for k, v in saved["pretrained"].items()}
        extra["reanalysed_from_saved_runs"] = True
        print(report(setting, saved["runs"], extra, RESULTS, saved["wall_s"]), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the chosen settings; print and save the tables. Returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="smoke budget, temporary folder")
    ap.add_argument("--reanalyse", action="store_true",
                    help="no training: redo the tables and figures from the saved JSON runs")
    args = ap.parse_args(argv)
    if args.reanalyse:
        return _reanalyse(args.settings)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(tempfile.mkdtemp(prefix="bench_tradeoff-")) if args.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds[:1] if args.quick else args.seeds
    for setting in dict.fromkeys(args.settings):
        t0 = time.perf_counter()
        extra: dict[str, Any] = {"seeds": seeds}
        if setting == "ring-class":
            rows = run_ring_class(seeds, args.quick)
        elif setting == "ring-data":
            rows = run_ring_data(seeds, args.quick)
        else:  # slow: the report is rewritten after every seed (partial results survive)
            fn = run_digits_class if setting == "digits-class" else run_digits_data
            rows, pres = [], {}
            for k, seed in enumerate(seeds):
                r, p, base = fn([seed], args.quick)
                rows += r
                pres.update(p)
                for pre in pres.values():
                    pre["forget_nll_rise"], pre["heldout_nll_change"] = 0.0, 0.0
                extra.update({"seeds": seeds[: k + 1], "pretrained": pres,
                              "config": asdict(base)})
                if k + 1 < len(seeds):
                    report(setting, rows, extra, folder, time.perf_counter() - t0)
        md = report(setting, rows, extra, folder, time.perf_counter() - t0)
        print(md, flush=True)
    print(f"results in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
