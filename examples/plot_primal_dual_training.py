"""
Primal-dual fine-tuning of a score model
========================================

When the optimal unlearned model can only be reached by training — a diffusion network whose
target is a reweighting of itself — dualdiff fine-tunes the model while it learns the
multipliers (:doc:`/engine`): primal steps on the weights at fixed :math:`\\lambda`, projected
dual steps :math:`\\lambda\\leftarrow\\Pi_{\\mathcal D}(\\lambda+\\eta\\,(b-\\hat C))` from
estimates of the constraint values of the *current model*.

This example runs :class:`~dualdiff.PrimalDualTrainer` on the three problems (RU, FU, LU)
with a :class:`~dualdiff.TrainableGaussianMixture` as the score model: a Gaussian mixture
whose weights, means and variances are trainable parameters, so that its constraint values
are exact and cheap to compute, and whose trained state can be compared with the closed-form
optimum :math:`p_{\\lambda^\\star}` of :meth:`~dualdiff.UnlearningProblem.solve_dual`. The
last section repeats the RU run with the ESD-style composed-score primal step, which lands on
the wrong multiplier.
"""

# %%
# Problems and their closed-form answers
# --------------------------------------
# ``p0`` is a two-component mixture, ``q`` its right component (weight 0.3). Each level asks
# for a little more than :math:`p_0` already has (:doc:`/choosing_levels`).

import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from dualdiff import (
    GaussianMixture,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
    PrimalDualTrainer,
    TrainableGaussianMixture,
)

torch.set_num_threads(1)  # tiny tensors: one thread avoids thread start-up costs

p0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
q = p0.component(1)


def make_problem(kind: str, delta: float):
    """Level ``delta`` nats beyond the pretrained model's value of the constraint."""
    if kind == "LU":
        c0 = float(LikelihoodConstrainedProblem(p0, [q], bounds=[0.0]).constraint_values(p0)[0])
        return LikelihoodConstrainedProblem(p0, [q], bounds=[c0 - delta])
    direction = "reverse" if kind == "RU" else "forward"
    probe = KLConstrainedProblem(p0, [q], bounds=[0.0], direction=direction)
    c0 = float(probe.constraint_values(p0)[0])
    return KLConstrainedProblem(p0, [q], bounds=[c0 + delta], direction=direction)


problems = {"RU": make_problem("RU", 2.0), "FU": make_problem("FU", 0.4),
            "LU": make_problem("LU", 2.0)}
solutions = {kind: prob.solve_dual() for kind, prob in problems.items()}
for kind, sol in solutions.items():
    print(f"{kind}: level {float(problems[kind].bounds[0]):8.4f}   lambda* = "
          f"{float(sol.multipliers[0]):.4f}   P* = {sol.certificate.primal_value:.4f}   "
          f"status {sol.status}")

# %%
# Training
# --------
# Each run starts from the pretrained parameters and :math:`\lambda=0`. The primal step is
# reweighted denoising score matching (``primal="reweighted_dsm"``, the default): Adam steps
# on the denoising loss of samples of :math:`p_0` weighted by
# :math:`w_\lambda=p_\lambda/p_0`, whose minimiser is the exact noised score of the target at
# every diffusion time. Every ``estimate_every = 20`` primal steps the constraint value of the
# current model is estimated — exactly here (``estimator="auto"`` picks ``"exact"`` because the
# model has a ``log_prob``; a network would use probability-flow ODE likelihoods) — and the
# dual takes one projected step. A good dual step size is about the inverse curvature of the
# dual function, :math:`\eta\approx 1/|g''(\lambda^\star)|` (a Newton step); for an analytic
# problem :meth:`~dualdiff.UnlearningProblem.dual_hessian` gives it. After 400 steps both step
# sizes are annealed for 200 more steps — the primal one from 0.02 to 0.005, the dual one to a
# quarter, directly in the optimisers that Cooper drives — so that the iterates settle near
# the saddle point.

STEPS = 600
ANNEAL_AT = 400


def train(kind: str, primal: str = "reweighted_dsm"):
    prob, sol = problems[kind], solutions[kind]
    curvature = abs(float(prob.dual_hessian(sol.multipliers)[0, 0]))
    model = TrainableGaussianMixture.from_mixture(p0)
    trainer = PrimalDualTrainer(
        prob, model, primal=primal, primal_lr=0.02, dual_lr=1.0 / curvature,
        batch_size=512, estimate_every=20, seed=0,
    )
    start = time.perf_counter()
    trainer.fit(ANNEAL_AT, progress=False)
    for group in trainer.constrained_optimizer.primal_optimizers[0].param_groups:
        group["lr"] = 0.005
    for group in trainer.constrained_optimizer.dual_optimizers[0].param_groups:
        group["lr"] *= 0.25
    history = trainer.fit(STEPS - ANNEAL_AT, progress=False)  # the history is cumulative
    elapsed = time.perf_counter() - start
    return model, trainer, history, elapsed


runs = {kind: train(kind) for kind in problems}

# %%
# Multipliers, constraint values and objective during training
# ------------------------------------------------------------
# The history records the multipliers after every step and the estimates of every dual step
# (``history.estimates``: constraint values and the objective of the model at that step). The
# dashed lines are the closed-form answers: :math:`\lambda^\star`, the level, and the optimal
# value :math:`P^\star`.

fig, axes = plt.subplots(3, 3, figsize=(13, 8), sharex=True)
for col, kind in enumerate(problems):
    prob, sol = problems[kind], solutions[kind]
    model, trainer, history, _ = runs[kind]
    est = history.estimates
    est_steps = [e["step"] for e in est]
    axes[0, col].plot(history.steps, [m[0] for m in history.multipliers], color="C0")
    axes[0, col].axhline(float(sol.multipliers[0]), color="k", ls="--", lw=1)
    axes[0, col].set_title(kind)
    axes[1, col].plot(est_steps, [e["constraints"][0] for e in est], "o-", ms=3, color="C1")
    axes[1, col].axhline(float(prob.bounds[0]), color="k", ls="--", lw=1)
    axes[2, col].plot(est_steps, [e["objective"] for e in est], "o-", ms=3, color="C2")
    axes[2, col].axhline(sol.certificate.primal_value, color="k", ls="--", lw=1)
    axes[2, col].set_xlabel("step")
    for row in range(3):
        axes[row, col].axvline(ANNEAL_AT, color="0.8", lw=0.8, zorder=0)
axes[0, 0].set_ylabel(r"multiplier $\lambda$")
axes[1, 0].set_ylabel("constraint value\n(dashed: level)")
axes[2, 0].set_ylabel("objective\n(dashed: $P^\\star$)")
fig.tight_layout()

# %%
# The multipliers rise until the model meets its level and then fluctuate around
# :math:`\lambda^\star` (the primal steps are stochastic). Averaged over the annealed phase
# they match the closed form to about one per cent. The certificate of the trained model at
# the averaged multiplier (:meth:`~dualdiff.UnlearningProblem.certificate`) bounds how far it
# is from optimal: when the model is feasible (slack :math:`\ge 0`), its objective exceeds
# :math:`P^\star` by at most the gap — a guarantee that needs no knowledge of
# :math:`P^\star`. The constraint value of the last iterate still fluctuates by about 0.1
# nats (RU, LU) from one primal step to the next; when it ends slightly below its level
# (negative slack), the gap is not a bound and the slack is the number to read.

print(f"{'':4}{'lambda*':>9}{'lambda (avg)':>14}{'rel.err':>9}{'P*':>9}{'f(model)':>10}"
      f"{'slack':>9}{'gap':>9}{'time[s]':>9}")
for kind in problems:
    prob, sol = problems[kind], solutions[kind]
    model, trainer, history, elapsed = runs[kind]
    lam_avg = float(np.mean([m[0] for m in history.multipliers[ANNEAL_AT:]]))
    lam_star = float(sol.multipliers[0])
    cert = prob.certificate(model, [lam_avg])
    print(f"{kind:4}{lam_star:9.4f}{lam_avg:14.4f}{abs(lam_avg / lam_star - 1):9.1%}"
          f"{sol.certificate.primal_value:9.4f}{cert.primal_value:10.4f}"
          f"{float(cert.slack[0]):9.3f}{cert.gap:9.4f}{elapsed:9.1f}")

# %%
# The trained densities next to the closed-form targets:

xs = torch.linspace(-6.0, 6.0, 400, dtype=torch.float64)[:, None]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
for ax, kind in zip(axes, problems, strict=True):
    model = runs[kind][0]
    with torch.no_grad():
        ax.plot(xs[:, 0], p0.log_prob(xs).exp(), color="0.6", label="$p_0$")
        ax.plot(xs[:, 0], solutions[kind].target.log_prob(xs).exp(), "k",
                label=r"closed form $p_{\lambda^\star}$")
        ax.plot(xs[:, 0], model.log_prob(xs).exp(), "--", color="C3", label="trained model")
    ax.set(title=kind, xlabel="$x$")
axes[0].set_ylabel("density")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %%
# The composed-score primal step prices separation wrongly
# --------------------------------------------------------
# ``primal="composed"`` regresses the model on the ESD-style composed field
# :math:`s_{0,t}+\eta(s_{0,t}-s_{q,t})` instead of the exact noised target score. At
# :math:`t>0` that field is not the score of the noised target (:ref:`diffusion-view`): it
# moves less mass away from :math:`q`. The dual step still enforces the level — it measures
# the model, not the field — so it raises :math:`\lambda` until the model meets it. The result
# is feasible but the multiplier is no longer the price of the level, and the model pays more
# deviation from :math:`p_0` than necessary.

composed = train("RU", primal="composed")
prob, sol = problems["RU"], solutions["RU"]
lam_rw = float(np.mean([m[0] for m in runs["RU"][2].multipliers[ANNEAL_AT:]]))
lam_comp = float(np.mean([m[0] for m in composed[2].multipliers[ANNEAL_AT:]]))
obj_rw = float(np.mean([e["objective"] for e in runs["RU"][2].estimates[-10:]]))
obj_comp = float(np.mean([e["objective"] for e in composed[2].estimates[-10:]]))
print(f"RU lambda*: closed form {float(sol.multipliers[0]):.4f}, reweighted DSM {lam_rw:.4f}, "
      f"composed {lam_comp:.4f} ({lam_comp / float(sol.multipliers[0]) - 1:+.0%})")
print(f"RU KL(p||p0) over the last 10 estimates: P* = {sol.certificate.primal_value:.4f}, "
      f"reweighted DSM {obj_rw:.4f}, composed {obj_comp:.4f}")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for (label, run), color in zip((("reweighted DSM", runs["RU"]), ("composed", composed)),
                               ("C0", "C1"), strict=True):
    history = run[2]
    axes[0].plot(history.steps, [m[0] for m in history.multipliers], color=color, label=label)
    est = history.estimates
    axes[1].plot([e["step"] for e in est], [e["objective"] for e in est], "o-", ms=3,
                 color=color, label=label)
axes[0].axhline(float(sol.multipliers[0]), color="k", ls="--", lw=1, label=r"$\lambda^\star$")
axes[1].axhline(sol.certificate.primal_value, color="k", ls="--", lw=1, label=r"$P^\star$")
axes[0].set(xlabel="step", ylabel=r"$\lambda$", title="RU multiplier")
axes[1].set(xlabel="step", ylabel=r"$\mathrm{KL}(p_\theta\|p_0)$", title="RU objective")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()

# Save the figures (``./figures`` or ``$DUALDIFF_FIGURES``) so a headless run keeps them, then
# show them when a display is available.
from dualdiff.experiments.report import save_open_figures

for path in save_open_figures("plot_primal_dual_training"):
    print("saved", path)
plt.show()
