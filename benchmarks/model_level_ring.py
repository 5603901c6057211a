"""End-to-end model-level RU/FU/LU on the shipped ring network (referee: the closed form).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/model_level_ring.py [--steps 200]
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
from dualdiff.datasets import load_pretrained_ring, ring_mixture
from dualdiff.engine import ConstraintEstimator

SAMPLER = {"method": "heun", "steps": 40}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--pool", type=int, default=1024)
    ap.add_argument("--only", default="LU,RU,FU")
    args = ap.parse_args()
    torch.manual_seed(0)
    ring = ring_mixture()
    net = load_pretrained_ring()
    for p in net.parameters():
        p.requires_grad_(False)
    q = GaussianMixture(torch.ones(1), ring.means[:1], ring.covariances[:1])
    dens = DensityEstimator(sampler_kwargs=SAMPLER)
    out: dict = {}
    t0 = time.time()
    pool = dens.sample(net, args.pool, (2,), torch.Generator().manual_seed(0))
    out["pool_seconds"] = time.time() - t0

    def trainable():
        m = copy.deepcopy(net)
        for p in m.parameters():
            p.requires_grad_(True)
        return m

    def est_final(prob, model, n=512):
        e = ConstraintEstimator(prob, method="ode", n_samples=n, sampler_kwargs=SAMPLER)
        r = e(model, torch.Generator().manual_seed(123))
        return r.constraints.tolist(), r.constraint_stderr.tolist(), r.objective, r.objective_stderr

    if "LU" in args.only:
        t = time.time()
        c0 = float((ring.log_prob(pool) * 0 + q.log_prob(pool)).mean())
        tau = c0 - 3.0
        ref = LikelihoodConstrainedProblem(ring, [q], bounds=[tau]).solve_dual()
        prob = LikelihoodConstrainedProblem(net, [q.log_prob], bounds=[tau], pretrained_data=pool)
        est = prob.estimate_dual()
        tr = PrimalDualTrainer(
            prob, trainable(), primal="reweighted_dsm", init_multipliers=est, primal_lr=1e-3,
            dual_lr=0.02, batch_size=256, estimate_every=50,
            estimator=ConstraintEstimator(prob, method="ode", n_samples=128, sampler_kwargs=SAMPLER,
                                          estimate_objective=False),
            seed=0,
        )
        tr.fit(args.steps, progress=False)
        c, ce, f, fe = est_final(prob, tr.model)
        out["LU"] = {
            "tau": tau, "lam_closed_form": ref.multipliers.tolist(),
            "lam_estimated": est.multipliers.tolist(),
            "lam_estimated_se": est.multiplier_stderr.tolist(),
            "z": ((est.multipliers - ref.multipliers) / est.multiplier_stderr).tolist(),
            "ess": est.ess, "lam_trained": tr.multipliers.tolist(),
            "constraint_trained": c, "constraint_trained_se": ce,
            "objective_closed_form": ref.certificate.primal_value, "objective_trained": f,
            "objective_trained_se": fe, "seconds": time.time() - t,
        }
        print(json.dumps({"LU": out["LU"]}), flush=True)

    if "RU" in args.only:
        t = time.time()
        kl0 = float((ring.log_prob(pool) - q.log_prob(pool)).mean())
        b = kl0 + 2.0
        ref = KLConstrainedProblem(ring, [q], bounds=[b]).solve_dual()
        prob = KLConstrainedProblem(net, [q], bounds=[b], pretrained_data=pool, density=dens)
        est = prob.estimate_dual(n_samples=args.pool)
        t_est = time.time() - t
        tr = PrimalDualTrainer(
            prob, trainable(), primal="reweighted_dsm", init_multipliers=est, primal_lr=1e-3,
            dual_lr=0.02, batch_size=256, estimate_every=50,
            estimator=ConstraintEstimator(prob, method="ode", n_samples=128, sampler_kwargs=SAMPLER,
                                          estimate_objective=False),
            seed=0,
        )
        tr.fit(args.steps, progress=False)
        c, ce, f, fe = est_final(prob, tr.model, n=256)
        out["RU"] = {
            "b": b, "lam_closed_form": ref.multipliers.tolist(),
            "lam_estimated": est.multipliers.tolist(),
            "lam_estimated_se": est.multiplier_stderr.tolist(),
            "z": ((est.multipliers - ref.multipliers) / est.multiplier_stderr).tolist(),
            "ess": est.ess, "estimate_seconds": t_est, "lam_trained": tr.multipliers.tolist(),
            "constraint_trained": c, "constraint_trained_se": ce,
            "objective_closed_form": ref.certificate.primal_value, "objective_trained": f,
            "objective_trained_se": fe, "seconds": time.time() - t,
        }
        print(json.dumps({"RU": out["RU"]}), flush=True)

    if "FU" in args.only:
        t = time.time()
        g = torch.Generator().manual_seed(1)
        forget = q.sample(64, generator=g)
        others = GaussianMixture(ring.weights[1:] / ring.weights[1:].sum(), ring.means[1:],
                                 ring.covariances[1:])
        retain = others.sample(448, generator=g)
        train = torch.cat([retain, forget])
        prob = KLConstrainedProblem(net, [forget], bounds=[1.0], direction="forward",
                                    pretrained_data=train, training_set_size=512, density=dens)
        tr = PrimalDualTrainer(
            prob, trainable(), primal="composed", primal_lr=1e-3, dual_lr=0.02, batch_size=256,
            estimate_every=50,
            estimator=ConstraintEstimator(prob, method="ode", n_samples=64, sampler_kwargs=SAMPLER,
                                          estimate_objective=False),
            seed=0,
        )
        tr.fit(args.steps, progress=False)
        c, ce, f, fe = est_final(prob, tr.model, n=64)
        out["FU"] = {
            "b": 1.0, "lam_max": prob.lam_max.tolist(), "lam_trained": tr.multipliers.tolist(),
            "delta_trained": c, "delta_trained_se": ce, "objective_trained": f,
            "objective_trained_se": fe, "seconds": time.time() - t,
        }
        print(json.dumps({"FU": out["FU"]}), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
