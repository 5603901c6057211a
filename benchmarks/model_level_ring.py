"""End-to-end model-level RU/FU/LU on the shipped ring network (referee: the closed form).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/model_level_ring.py [--steps 600]

Levels are the demo's (``dualdiff.experiments.ring.make_problem``); the Gaussian mixture is only
the referee. ``pretrained`` is the shipped ring network; LU's ``l`` is the concept Gaussian's
log-density (a callable), RU's concept is the same Gaussian as a score model (its log-density is
exact, p0's comes from the network's probability-flow ODE), FU's forget set is 256 draws of the
concept inside a training set of 2048.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from dualdiff import (
    DensityEstimator,
    GaussianMixture,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
    PrimalDualTrainer,
)
from dualdiff.datasets import load_pretrained_ring
from dualdiff.engine import ConstraintEstimator
from dualdiff.experiments.ring import DEFAULTS, make_problem

SAMPLER = {"method": "heun", "steps": 40}


def _final(prob, model, n, objective):
    e = ConstraintEstimator(prob, method="ode", n_samples=n, sampler_kwargs=SAMPLER,
                            estimate_objective=objective)
    r = e(model, torch.Generator().manual_seed(123))
    return {"constraint": r.constraints.tolist(), "constraint_se": r.constraint_stderr.tolist(),
            "objective": r.objective, "objective_se": r.objective_stderr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--pool", type=int, default=2048)
    ap.add_argument("--only", default="LU,RU,FU")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    net = load_pretrained_ring()
    for p in net.parameters():
        p.requires_grad_(False)
    dens = DensityEstimator(sampler_kwargs=SAMPLER)
    out: dict = {"steps": args.steps, "pool": args.pool}
    t0 = time.time()
    pool = dens.sample(net, args.pool, (2,), torch.Generator().manual_seed(0))
    out["pool_seconds"] = time.time() - t0

    def trainable():
        m = copy.deepcopy(net)
        for p in m.parameters():
            p.requires_grad_(True)
        return m

    def train(kind, prob, init, dual_lr, primal):
        tr = PrimalDualTrainer(
            prob, trainable(), primal=primal, init_multipliers=init, primal_lr=5e-4,
            dual_lr=dual_lr, batch_size=512, estimate_every=25,
            estimator=ConstraintEstimator(prob, method="ode", n_samples=256,
                                          sampler_kwargs=SAMPLER, estimate_objective=False),
            seed=0,
        )
        tr.fit(args.steps, progress=False)
        k = max(1, int(0.4 * len(tr.history.records)))
        lam_avg = torch.tensor([r.multipliers for r in tr.history.records[-k:]]).mean(0)
        return tr, lam_avg

    for kind in [k for k in ("LU", "RU", "FU") if k in args.only]:
        t = time.time()
        delta = DEFAULTS[kind].delta
        ref_prob, c0 = make_problem(kind, delta)
        ref = ref_prob.solve_dual()
        level = float(ref_prob.bounds[0])
        q = ref_prob.unlearn[0]
        entry: dict = {"level": level, "c_p0_closed_form": c0,
                       "lam_closed_form": ref.multipliers.tolist(),
                       "objective_closed_form": ref.certificate.primal_value}
        if kind == "LU":
            prob = LikelihoodConstrainedProblem(net, [q.log_prob], bounds=[level],
                                                pretrained_data=pool)
        elif kind == "RU":
            prob = KLConstrainedProblem(net, [q], bounds=[level], pretrained_data=pool,
                                        density=dens)
        else:
            g = torch.Generator().manual_seed(1)
            n_forget = 256
            forget = q.sample(n_forget, generator=g)
            p0 = ref_prob.pretrained
            others = GaussianMixture(p0.weights[1:] / p0.weights[1:].sum(), p0.means[1:],
                                     p0.covariances[1:])
            train_set = torch.cat([others.sample(7 * n_forget, generator=g), forget])
            # levels on Delta = E_A[log p0 - log p]: KL(q||p) >= KL(q||p0) + delta iff Delta >= d
            prob = KLConstrainedProblem(net, [forget], bounds=[delta], direction="forward",
                                        pretrained_data=train_set,
                                        training_set_size=train_set.shape[0], density=dens)
            entry["level_on_delta"] = delta
            entry["lam_max"] = prob.lam_max.tolist()
        if prob.has_closed_form:
            raise AssertionError("stated with networks")
        if kind in ("LU", "RU"):
            te = time.time()
            est = prob.estimate_dual(n_samples=args.pool)
            entry.update({
                "estimate_seconds": time.time() - te,
                "lam_estimated": est.multipliers.tolist(),
                "lam_estimated_se": est.multiplier_stderr.tolist(),
                "z_vs_closed_form": ((est.multipliers - ref.multipliers)
                                     / est.multiplier_stderr).tolist(),
                "rel_err_vs_closed_form": ((est.multipliers - ref.multipliers)
                                           / ref.multipliers).tolist(),
                "ess": est.ess, "estimate_method": est.values_method,
                "predicted_objective": est.certificate.primal_value,
            })
            h = est.estimator.oracle(est.multipliers).hess if est.estimator else None
            curv = abs(float(h[0, 0])) if h is not None else 1.0
            dual_lr, init = 0.5 / curv, est
            entry["dual_lr_from"] = "0.5/|g''| of the estimated dual"
        else:
            dual_lr, init = 0.5 / abs(float(ref_prob.dual_hessian(ref.multipliers)[0, 0])), None
            entry["dual_lr_from"] = "0.5/|g''| of the closed-form referee (FU cannot estimate it)"
        primal = "composed" if kind == "FU" else "reweighted_dsm"
        tr, lam_avg = train(kind, prob, init, dual_lr, primal)
        entry.update({"primal": primal, "dual_lr": dual_lr,
                      "lam_trained_last": tr.multipliers.tolist(),
                      "lam_trained_avg_last40pct": lam_avg.tolist(),
                      "trained": _final(prob, tr.model, 512, objective=True),
                      "seconds": time.time() - t})
        out[kind] = entry
        print(json.dumps({kind: entry}), flush=True)
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
