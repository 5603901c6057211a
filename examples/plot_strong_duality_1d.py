"""
Strong duality on a 1-D mixture: the dual function, primal vs dual, and the whole frontier
==========================================================================================

The reverse- and forward-KL unlearning problems are *not* convex, yet their duality gap is
zero (:ref:`strong-duality`). This example checks that claim numerically on a 1-D Gaussian
mixture, in three steps:

1. draw the concave dual function :math:`g(\\lambda)` over its whole domain and mark the
   maximiser found by :meth:`~dualdiff.UnlearningProblem.solve_dual`;
2. solve the *primal* independently — a brute-force, nonconvex optimisation over discretised
   densities (:func:`dualdiff.testing.brute_force_primal`, SLSQP from several starts, never
   told about the closed form) — and compare its optimal value with the dual optimum, for all
   three problems (RU, FU, LU);
3. trace the whole trade-off frontier :math:`P^\\star(b)` — the smallest possible deviation
   from :math:`p_0` for every constraint level :math:`b` — in **one sweep over the
   multiplier**, without solving a single optimisation problem, and check it against
   ``solve_dual`` at a few levels.
"""

# %%
# The pretrained model and the concept
# ------------------------------------
# ``p0`` is a three-component mixture; the concept to forget, ``q``, is its right-most
# component (weight 0.2). Levels are set relative to the pretrained model
# (:doc:`/choosing_levels`): the reverse-KL problem (RU) asks for :math:`\delta = 10` nats
# more separation than :math:`p_0` already has, :math:`b=\mathrm{KL}(p_0\|q)+\delta`.

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.interpolate import CubicHermiteSpline

from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem
from dualdiff.testing import brute_force_primal, discrete_dual_max

torch.set_num_threads(1)  # tiny tensors: one thread avoids thread start-up costs

p0 = GaussianMixture(weights=[0.5, 0.3, 0.2], means=[[-3.0], [0.0], [3.0]], covariances=0.5)
q = p0.component(2)


def pretrained_value(kind: str) -> float:
    """The constraint functional at p0: KL(p0||q) (RU), KL(q||p0) (FU), E_p0[log q] (LU)."""
    if kind == "LU":
        probe = LikelihoodConstrainedProblem(p0, [q], bounds=[0.0])
    else:
        probe = KLConstrainedProblem(
            p0, [q], bounds=[0.0], direction="reverse" if kind == "RU" else "forward"
        )
    return float(probe.constraint_values(p0)[0][0])


def make_problem(kind: str, delta: float):
    """The problem of ``kind`` at ``delta`` nats beyond the pretrained model."""
    c0 = pretrained_value(kind)
    if kind == "LU":
        return LikelihoodConstrainedProblem(p0, [q], bounds=[c0 - delta])
    direction = "reverse" if kind == "RU" else "forward"
    return KLConstrainedProblem(p0, [q], bounds=[c0 + delta], direction=direction)


C0 = {kind: pretrained_value(kind) for kind in ("RU", "FU", "LU")}
print("value at p0:  KL(p0||q) = {RU:.3f}   KL(q||p0) = {FU:.3f}   E_p0[log q] = {LU:.3f}"
      .format(**C0))

ru = make_problem("RU", 10.0)
sol = ru.solve_dual()
lam_star = float(sol.multipliers[0])
print(f"RU, b = {float(ru.bounds[0]):.3f}:  lambda* = {lam_star:.5f},  "
      f"D* = g(lambda*) = {sol.dual_value:.6f}")
print(sol.certificate)

# %%
# The dual function over its domain
# ---------------------------------
# For RU the dual domain is :math:`0\le\lambda<1` (the target
# :math:`p_0^{1/(1-\lambda)}q^{-\lambda/(1-\lambda)}` must be normalisable;
# ``sol.domain`` describes it). :math:`g` is concave, :math:`g(0)=0` (the Lagrangian minimiser
# at :math:`\lambda=0` is :math:`p_0` itself), and it falls without bound towards the end of
# the domain, where the target concentrates. Its derivative is the constraint violation of
# the target, :math:`g'(\lambda)=b-\mathrm{KL}(p_\lambda\|q)` (Danskin's theorem,
# :meth:`~dualdiff.UnlearningProblem.dual_gradient`): the maximiser is where the target meets
# the level exactly.

print("dual domain:", sol.domain["description"])
lams = np.linspace(0.0, 0.995, 400)
g = np.array([ru.dual([lam]) for lam in lams])
zoom = np.linspace(0.0, 2.5 * lam_star, 200)
g_zoom = np.array([ru.dual([lam]) for lam in zoom])
grad_zoom = np.array([float(ru.dual_gradient([lam])[0]) for lam in zoom])

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
ax = axes[0]
ax.plot(lams, g, "k")
ax.axvline(1.0, color="0.5", ls=":", label="end of the domain")
ax.plot([lam_star], [sol.dual_value], "o", color="C3", label=r"$\lambda^\star$ (solve_dual)")
ax.set(xlabel=r"$\lambda$", ylabel=r"$g(\lambda)$", title="RU dual function on its domain")
ax.legend()

ax = axes[1]
ax.plot(zoom, g_zoom, "k", label=r"$g(\lambda)$")
ax.plot([lam_star], [sol.dual_value], "o", color="C3")
ax.axhline(sol.dual_value, color="C3", lw=0.8, ls="--", label=r"$D^\star$")
ax.set(xlabel=r"$\lambda$", ylabel=r"$g(\lambda)$", title="near the maximiser")
ax2 = ax.twinx()
ax2.plot(zoom, grad_zoom, color="C0", label=r"$g'(\lambda)=b-\mathrm{KL}(p_\lambda\|q)$")
ax2.axhline(0.0, color="C0", lw=0.6)
ax2.set_ylabel(r"$g'(\lambda)$ [nats]", color="C0")
lines = ax.get_legend_handles_labels()
lines2 = ax2.get_legend_handles_labels()
ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize=8)
fig.tight_layout()

# %%
# Primal vs dual, for all three problems
# --------------------------------------
# :func:`~dualdiff.testing.brute_force_primal` discretises the problem on a uniform grid of
# 121 points and minimises the primal objective over probability vectors — a nonconvex
# problem for RU and FU — by SLSQP from three starts (:math:`p_0` and random Dirichlet
# points). :func:`~dualdiff.testing.discrete_dual_max` maximises the dual of the *same*
# discrete problem with scipy. Strong duality says the two values agree; both are
# independent of the library's solver and closed forms. The continuous optimum
# ``solve_dual().dual_value`` differs from them only by the discretisation of the grid.

rows = []
brute = {}
for kind, delta in (("RU", 10.0), ("FU", 3.0), ("LU", 5.0)):
    prob = make_problem(kind, delta)
    s = prob.solve_dual()
    start = time.perf_counter()
    bf = brute_force_primal(prob, n_points=121, starts=3, seed=0)
    elapsed = time.perf_counter() - start
    dd = discrete_dual_max(bf.discrete)
    brute[kind] = (prob, s, bf)
    rows.append((kind, float(s.multipliers[0]), s.dual_value, bf.value, dd.value, elapsed))

print(f"{'':4}{'lambda*':>10}{'D* (cont.)':>14}{'P* (brute)':>14}{'D* (discr.)':>14}"
      f"{'|P-D| discr.':>14}{'time[s]':>9}")
for kind, lam, d_cont, p_bf, d_disc, elapsed in rows:
    print(f"{kind:4}{lam:10.5f}{d_cont:14.8f}{p_bf:14.8f}{d_disc:14.8f}"
          f"{abs(p_bf - d_disc):14.2e}{elapsed:9.2f}")

# %%
# The brute-force optimum is not only as good as the closed-form target — it *is* the target:
# divided by the grid spacing, the optimal probability vector lies on the closed-form density
# :math:`p_{\lambda^\star}` (RU: geometric reweighting; FU: subtraction; LU: exponential
# tilt).

xs = torch.linspace(-7.0, 7.0, 600, dtype=torch.float64)[:, None]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
for ax, kind in zip(axes, ("RU", "FU", "LU"), strict=True):
    prob, s, bf = brute[kind]
    grid = bf.discrete.x
    h = grid[1] - grid[0]
    ax.plot(xs[:, 0], p0.log_prob(xs).exp(), color="0.6", label="$p_0$")
    ax.plot(xs[:, 0], s.target.log_prob(xs).exp(), "k", label=r"closed form $p_{\lambda^\star}$")
    ax.plot(grid, bf.p / h, ".", color="C3", ms=4, label="brute-force primal")
    ax.set(xlabel="$x$", title=f"{kind}: $\\lambda^\\star$ = {float(s.multipliers[0]):.4f}")
axes[0].set_ylabel("density")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %%
# The whole frontier from one sweep over the multiplier
# -----------------------------------------------------
# The optimal value :math:`P^\star(b)` as a function of the level is the trade-off curve
# between "how much separation" and "how much deviation from :math:`p_0`". Computing it
# naively means one dual solve per level. Duality gives it for free:
#
# *Every* multiplier :math:`\lambda` in the domain solves the problem **for some level**,
# namely the level its target meets exactly, :math:`b(\lambda)=C(p_\lambda)`. Indeed, for any
# :math:`p` with :math:`C(p)\ge b(\lambda)`,
#
# .. math::
#    f(p)\;\ge\;f(p)-\lambda\bigl(C(p)-b(\lambda)\bigr)\;\ge\;
#    \min_{p'}\Bigl[f(p')-\lambda\bigl(C(p')-b(\lambda)\bigr)\Bigr]\;=\;f(p_\lambda),
#
# since :math:`p_\lambda` minimises the Lagrangian and :math:`C(p_\lambda)=b(\lambda)`
# (Everett's theorem). Hence :math:`P^\star(b(\lambda))=f(p_\lambda)`, and the frontier is the
# **parametric curve** :math:`\lambda\mapsto\bigl(b(\lambda),\,f(p_\lambda)\bigr)`: one
# closed-form target and two integrals per grid point, no optimisation. Along the curve the
# slope is the multiplier itself, :math:`dP^\star/db=\lambda` — the price of separation
# (:doc:`/choosing_levels`). For LU the same holds with :math:`\tau(\lambda)=\mathbb
# E_{p_\lambda}[\log q]`. For FU the sweep ends at :math:`\lambda_{\max}=\operatorname{ess\,inf}
# p_0/q=0.2`: the largest level with an optimal solution is :math:`b(\lambda_{\max})`, the
# separation of the model retrained without :math:`q`.


def sweep(kind: str, lam_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Levels (as nats beyond p0) and optimal values along the multiplier grid."""
    prob = make_problem(kind, 1.0)  # the level does not enter p_lam, C(p_lam) or f(p_lam)
    deltas, values = [], []
    for lam in lam_grid:
        target = prob.target([float(lam)])
        c = float(prob.constraint_values(target)[0][0])
        deltas.append(C0[kind] - c if kind == "LU" else c - C0[kind])
        values.append(prob.objective(target)[0])
    return np.array(deltas), np.array(values)


fu_lam_max = make_problem("FU", 1.0).lam_max[0].value
u = np.linspace(0.0, 1.0 - 1e-3, 60)
grids = {
    "RU": np.linspace(0.0, 0.12, 60),
    "LU": np.linspace(0.0, 0.12, 60),
    # the FU level grows steeply near lambda_max: put more multipliers there
    "FU": fu_lam_max * (1.0 - (1.0 - u) ** 3),
}
start = time.perf_counter()
frontier = {kind: sweep(kind, lam_grid) for kind, lam_grid in grids.items()}
print(f"three frontiers, 180 targets: {time.perf_counter() - start:.2f} s")

# %%
# The check: at a few levels, solve the dual from scratch and compare with the curve. To read
# the curve between sweep points we interpolate with cubic Hermite polynomials whose slopes
# are the multipliers, :math:`dP^\star/d\delta=\lambda` — the sensitivity identity at work.

print(f"{'':4}{'delta':>7}{'P* (sweep)':>13}{'P* (solve_dual)':>17}{'lambda (sweep)':>16}"
      f"{'lambda*':>10}")
checks = {"RU": [2.0, 5.0, 10.0, 20.0], "LU": [2.0, 5.0, 10.0, 20.0], "FU": [1.0, 3.0, 6.0]}
solved = {}
for kind, deltas in checks.items():
    d_curve, p_curve = frontier[kind]
    solved[kind] = []
    for delta in deltas:
        s = make_problem(kind, delta).solve_dual()
        p_sweep = float(CubicHermiteSpline(d_curve, p_curve, grids[kind])(delta))
        lam_sweep = float(np.interp(delta, d_curve, grids[kind]))
        solved[kind].append((delta, s.certificate.primal_value, float(s.multipliers[0])))
        print(f"{kind:4}{delta:7.1f}{p_sweep:13.6f}{s.certificate.primal_value:17.6f}"
              f"{lam_sweep:16.5f}{float(s.multipliers[0]):10.5f}")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
labels = {
    "RU": r"RU: $\mathrm{KL}(p\|p_0)$",
    "LU": r"LU: $\mathrm{KL}(p\|p_0)$",
    "FU": r"FU: $\mathrm{KL}(p_0\|p)$",
}
for color, kind in zip(("C0", "C2", "C1"), ("RU", "LU", "FU"), strict=True):
    d_curve, p_curve = frontier[kind]
    axes[0].plot(d_curve, p_curve, color=color, label=labels[kind] + " (one sweep)")
    axes[1].plot(d_curve, grids[kind], color=color, label=kind)
    pts = np.array(solved[kind])
    axes[0].plot(pts[:, 0], pts[:, 1], "o", mfc="none", color=color)
    axes[1].plot(pts[:, 0], pts[:, 2], "o", mfc="none", color=color)
axes[0].axvline(frontier["FU"][0][-1], color="C1", ls=":", lw=1)
axes[0].text(frontier["FU"][0][-1], 2e-3, r" FU ceiling ($\lambda_{\max}$)", color="C1",
             fontsize=8)
axes[0].plot([], [], "ko", mfc="none", label="solve_dual at that level")
axes[0].set(xlabel=r"extra separation $\delta$ beyond $p_0$ [nats]",
            ylabel=r"optimal value $P^\star$ [nats]", title="trade-off frontier",
            xlim=(0, 25), ylim=(1e-3, 10.0), yscale="log")
axes[0].legend(fontsize=8, loc="upper left")
axes[1].set(xlabel=r"extra separation $\delta$ beyond $p_0$ [nats]",
            ylabel=r"multiplier $\lambda$ = slope $dP^\star/db$",
            title="the price of separation", xlim=(0, 25))
axes[1].legend(fontsize=8)
fig.tight_layout()

# %%
# RU and LU price separation similarly at small :math:`\delta`: to first order in
# :math:`\lambda`, LU tilts :math:`p_0` along :math:`-\log q` and RU along
# :math:`\log p_0-\log q`, and on this mixture :math:`\log q` varies much more than
# :math:`\log p_0`, so the two directions nearly coincide. They part ways as the level
# grows — RU sharpens :math:`p_0` by the power :math:`1/(1-\lambda)`, LU does not. FU,
# measured in the other KL direction, stops at its ceiling. Every point of these curves
# carries a zero-gap certificate, because each is the closed-form optimum for its own level.

# Save the figures (``./figures`` or ``$DUALDIFF_FIGURES``) so a headless run keeps them, then
# show them when a display is available.
from dualdiff.experiments.report import save_open_figures

for path in save_open_figures("plot_strong_duality_1d"):
    print("saved", path)
plt.show()
