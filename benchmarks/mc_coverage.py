"""Monte Carlo certificates: do the error bars cover the truth at their nominal rate? (issue 10)

Backward-built instances in d = 3, 5 with exact references, solved on the Monte Carlo path:

* LU-log: p0 a 3-component isotropic mixture, q one Gaussian written as a two-component
  mixture of itself (so the library takes the Monte Carlo path, not its closed form); the
  reference is the same problem with q as one Gaussian (exact closed form, any d).
* RU: p0 one Gaussian written as two equal components, q one Gaussian; reference likewise.
* FU: q a component of p0 (``p0 - lam q`` is a mixture with positive weights); the reference
  dual is computed here by sampling the exact mixtures' components (numpy, 1e6 draws per
  component, stratified, the known Gaussian part split off; not the library's sampler).

The optimum is fixed first (``lam* = frac * edge``), the levels follow from the reference.
For every repeat (another Monte Carlo seed) we record the status, whether
``dual_value +- 1.96 dual_error`` covers the true ``g(lam_hat)`` and the optimum ``D*``, and
whether ``gradient +- 1.96 grad_err`` covers the true gradient at ``lam_hat``.

Run:  python benchmarks/mc_coverage.py [--repeats 30] [--n 20000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "problems"))
from _mc_instances import coverage


def run(kinds, dims, fracs, repeats, n, seed):
    rows = []
    for kind in kinds:
        for d in dims:
            for frac in fracs:
                row = coverage(kind, d, frac, repeats, n, seed)
                rows.append(row)
                print(
                    f"{kind} d={d} frac={frac:.2f}: statuses {row['statuses']} | cover g(lam^) "
                    f"{row['coverage_g_at_lam_hat']:.2f}, D* {row['coverage_d_star']:.2f}, "
                    f"grad {row['coverage_gradient']:.2f} | mean z(D*) {row['z_d_star_mean']:+.2f}"
                    f" | lam bias {row['lam_bias_rel']:+.3%} sd {row['lam_sd_rel']:.3%} | "
                    f"err {row['dual_err_median']:.3g} vs sd {row['dual_sd_observed']:.3g} | "
                    f"{row['seconds']:.1f} s",
                    flush=True,
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="LU,RU,FU")
    ap.add_argument("--dims", default="3,5")
    ap.add_argument("--fracs", default="0.5,0.8")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = run(
        args.kinds.split(","),
        [int(s) for s in args.dims.split(",")],
        [float(s) for s in args.fracs.split(",")],
        args.repeats,
        args.n,
        args.seed,
    )
    if args.out is not None:
        args.out.write_text(json.dumps({"benchmark": "mc_coverage", "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
