"""Far-level certificate battery (issue 10): are ``optimal`` certificates ever wrong?

Backward-built 1-D instances with exact answers (``tests/problems/_far_levels.py``: the
optimum is fixed first, at ``frac`` of the dual domain's edge, the levels follow by scipy
quad): LU-log and RU, m = 1..3, variance scales 0.1 / 1 / 10, q_i as single Gaussians (LU:
closed form) or as two-component mixtures of one Gaussian (no closed form: the grid path).
Each solve is classified ``correct`` (optimal and right), ``inaccurate`` (no claim: status
inaccurate / max_iter) or ``wrong`` (a false claim: wrong optimum, a dual value above the
optimum beyond its error bar, boundary or infeasible for an interior optimum).

Run:  python benchmarks/battery_certificates.py [--n 150] [--seed 0] [--out FILE] [--slow 10]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "problems"))
from _far_levels import build, classify, problem


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--slow", type=float, default=10.0, help="print solves slower than this (s)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows, counts = [], collections.Counter()
    for i in range(args.n):
        kind = ["LU", "RU"][i % 2]
        grid_path = bool((i // 2) % 2)
        m = int(rng.integers(1, 4))
        frac = float(rng.uniform(0.8, 0.97))
        scale = float(rng.choice([0.1, 1.0, 10.0]))
        inst = build(rng, kind, m, frac, scale, grid_path)
        t0 = time.perf_counter()
        try:
            sol = problem(inst).solve_dual()
            verdict, why = classify(inst, sol)
            status = sol.status
        except Exception as exc:  # a crash claims nothing, but is counted
            verdict, why, status = "crash", f"{type(exc).__name__}: {str(exc)[:160]}", "crash"
        dt = time.perf_counter() - t0
        key = f"{kind}-{'grid' if grid_path else 'exact' if kind == 'LU' else 'grid*'}"
        counts[verdict] += 1
        counts[f"{key}:{verdict}"] += 1
        rows.append(
            {
                "i": i,
                "kind": kind,
                "grid_path": grid_path,
                "m": m,
                "frac": frac,
                "scale": scale,
                "status": status,
                "verdict": verdict,
                "why": why,
                "time_s": dt,
            }
        )
        if verdict == "wrong":
            print(f"[{i}] WRONG {kind} m={m} frac={frac:.3f} scale={scale}: {why}", flush=True)
        elif dt > args.slow:
            print(f"[{i}] slow {key} m={m} frac={frac:.3f} scale={scale}: {status} in {dt:.1f} s",
                  flush=True)
    times = [r["time_s"] for r in rows]
    print(
        f"instances {args.n}: correct {counts['correct']}, inaccurate {counts['inaccurate']}, "
        f"wrong {counts['wrong']}, crash {counts['crash']}; median solve {np.median(times):.3f} s, "
        f"max {max(times):.1f} s, total {sum(times):.1f} s"
    )
    for k in sorted(k for k in counts if ":" in k):
        print(f"  {k}: {counts[k]}")
    if args.out is not None:
        args.out.write_text(json.dumps({"counts": dict(counts), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
