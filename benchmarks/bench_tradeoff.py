"""Separation vs deviation and retention on digits: constrained RU/LU at levels vs ESD weights.

The paper's central comparison, on the shipped digits DDPM (class removal of one digit): the
constrained methods at ``>= 3`` levels (RU: :math:`C_0 + \\delta`, LU: :math:`C_0 - \\delta`,
levels relative to the pretrained constraint value) against ESD (unconditional anchor) swept
over ``>= 5`` guidance scales :math:`\\eta`, each run with the same parameters (all), optimiser,
batch and step budget as ``dualdiff digits --quick`` (:mod:`dualdiff.experiments.digits`).
Per run: forget accuracy (separation), path-KL deviation from the pretrained model, retained
accuracy (class-conditional samples of the other digits) and FD to held-out retained digits.

Configuration actually run on the shared 2-core machine (documented in the report): one seed,
RU at three levels, ESD at five scales (``--lu`` adds LU at three levels). The ring setting and
three seeds of the full design are **not** run here (time); ``--seeds`` runs more seeds.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_tradeoff.py [--seeds 0] [--lu] [--quick]
Writes benchmarks/results/bench_tradeoff_digits.{json,md,png} (``--quick``: a 2-step smoke
budget to /tmp/bench_tradeoff).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
RU_DELTAS = (0.75, 1.5, 3.0)
LU_DELTAS = (0.75, 1.5, 3.0)
ESD_ETAS = (0.1, 0.25, 0.5, 1.0, 2.0)


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _pareto_note(rows: list[dict[str, Any]]) -> list[str]:
    """For each constrained run: the ESD runs that deviate no less and forget no more."""
    rows = [r for r in rows if r["deviation"] is not None]
    esd = [r for r in rows if r["method"] == "ESD"]
    notes = []
    for r in rows:
        if r["method"] == "ESD":
            continue
        worse = [e for e in esd if e["deviation"] >= r["deviation"]
                 and e["forget_accuracy"] >= r["forget_accuracy"]]
        better = [e for e in esd if e["deviation"] <= r["deviation"]
                  and e["forget_accuracy"] <= r["forget_accuracy"]]
        notes.append(
            f"{r['method']} (seed {r['seed']}, {r['knob']}): dominates {len(worse)} of "
            f"{len(esd)} ESD runs, dominated by {len(better)}"
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--lu", action="store_true", help="also LU at three levels")
    ap.add_argument("--quick", action="store_true", help="smoke budget, results to /tmp")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from dualdiff.experiments.digits import (
        DigitsConfig,
        DigitsSetup,
        pretrained_levels,
        run_method,
        smoke_config,
    )

    base = smoke_config() if args.quick else DigitsConfig.quick()
    base = replace(base, esd_anchors=("unconditional",))
    folder = Path("/tmp/bench_tradeoff") if args.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    pres = {}
    for seed in args.seeds:
        setup = DigitsSetup(replace(base, seed=seed))
        pre, levels, _ = pretrained_levels(setup)
        pres[seed] = pre
        c0_ru, c0_lu = pre["ru_constraint_on_data"], pre["lu_constraint_on_data"]
        plan: list[tuple[str, str, Any]] = [("RU", f"delta={d}", d) for d in RU_DELTAS]
        if args.lu:
            plan += [("LU", f"delta={d}", d) for d in LU_DELTAS]
        plan += [("ESD", f"eta={e}", e) for e in ESD_ETAS]
        for method, knob, value in plan:
            lv = dict(levels)
            if method == "RU":
                lv["RU"] = c0_ru + value
            elif method == "LU":
                lv["LU"] = c0_lu - value
            else:
                setup.cfg = replace(setup.cfg, esd_eta=value)
            print(f"seed {seed}: {method} {knob}", flush=True)
            for row in run_method(setup, method, lv, progress=False):
                row.pop("_samples")
                rows.append({"seed": seed, "knob": knob, **row})
    wall = time.perf_counter() - t_start

    header = ("| method | knob | seed | forget acc | deviation [nats] | retained acc | FD | "
              "lam |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for seed, pre in pres.items():
        lines.append(f"| pretrained | - | {seed} | {pre['forget_accuracy']:.3f} | 0 | "
                     f"{pre['retained_accuracy']:.3f} | {_f(pre['fd_retained'], '.1f')} | - |")
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['knob']} | {r['seed']} | {r['forget_accuracy']:.3f} | "
            f"{_f(r['deviation'], '.2f')} | {r['retained_accuracy']:.3f} | "
            f"{_f(r['fd_retained'], '.1f')} | "
            f"{','.join(f'{v:.3g}' for v in r['multipliers'])} |"
        )
    notes = _pareto_note(rows)
    md = (
        "# Trade-off on digits (class removal of digit "
        f"{base.forget_class})\n\nReduced configuration actually run: seeds {args.seeds}, "
        f"{base.steps} steps per run, RU at {len(RU_DELTAS)} levels"
        + (f", LU at {len(LU_DELTAS)} levels" if args.lu else "")
        + f", ESD (unconditional anchor) at {len(ESD_ETAS)} scales; one shared core; "
        f"{wall:.0f} s wall. Not run: the ring setting, three seeds.\n\n"
        + header + "\n".join(lines) + "\n\nDominance (lower deviation and lower forget "
        "accuracy both better; ties count as dominance):\n\n"
        + "\n".join(f"- {n}" for n in notes) + "\n"
    )
    _write(folder / "bench_tradeoff_digits.md", md)
    out = {"benchmark": "bench_tradeoff", "setting": "digits", "config": asdict(base),
           "seeds": args.seeds, "ru_deltas": RU_DELTAS, "lu_deltas": LU_DELTAS if args.lu else [],
           "esd_etas": ESD_ETAS, "pretrained": pres, "runs": rows, "dominance": notes,
           "wall_s": wall}
    _write(folder / "bench_tradeoff_digits.json", json.dumps(out, indent=2, allow_nan=False))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print(md)
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in (("RU", "o"), ("LU", "s"), ("ESD", "^")):
        sel = [r for r in rows if r["method"] == method and r["deviation"] is not None]
        if not sel:
            continue
        axes[0].plot([r["deviation"] for r in sel], [r["forget_accuracy"] for r in sel],
                     marker, label=method)
        axes[1].plot([r["retained_accuracy"] for r in sel], [r["forget_accuracy"] for r in sel],
                     marker, label=method)
        for r in sel:
            axes[0].annotate(r["knob"], (r["deviation"], r["forget_accuracy"]), fontsize=6)
    for seed, pre in pres.items():
        axes[0].plot([0.0], [pre["forget_accuracy"]], "k*", label=f"pretrained (seed {seed})")
        axes[1].plot([pre["retained_accuracy"]], [pre["forget_accuracy"]], "k*")
    axes[0].set_xlabel("deviation: path-KL to the pretrained model [nats]")
    axes[1].set_xlabel("retained accuracy")
    for ax in axes:
        ax.set_ylabel(f"forget accuracy (fraction of digit {base.forget_class})")
        ax.legend(fontsize=7)
    tmp = folder / ".tmp-bench_tradeoff_digits.png"
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, folder / "bench_tradeoff_digits.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
