"""
The three unlearning targets on a 2-D mixture: RU, FU and LU
=============================================================

Every unlearning problem in dualdiff has a closed-form optimal distribution, a reweighting of
the pretrained model :math:`p_0` (see :doc:`/mathematics`):

* **RU** (reverse KL, concept unlearning) — geometric reweighting
  :math:`p_\\lambda \\propto p_0^{1/(1-\\lambda)}\\, q^{-\\lambda/(1-\\lambda)}`;
* **FU** (forward KL, data unlearning) — subtraction
  :math:`p_\\lambda = (p_0 - \\lambda q)/(1-\\lambda)`;
* **LU** (likelihood constraint) — exponential tilt
  :math:`p_\\lambda \\propto p_0\\, q^{-\\lambda}`.

This example builds a three-component mixture, picks one component as the concept ``q`` to
forget, asks each problem for a separation one level beyond what :math:`p_0` already has, solves
the dual, and draws the three targets next to :math:`p_0` and :math:`q`. Each solution comes with
a certificate: the duality gap (zero up to quadrature error at the optimum), the constraint
values and the slack.
"""

# %%
# The pretrained model and the concept
# ------------------------------------
# ``q`` is the third component of ``p0``: a concept the model learned with weight 0.2.

import matplotlib.pyplot as plt
import torch

from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem

torch.set_num_threads(1)  # tiny tensors: extra threads only add synchronisation cost

p0 = GaussianMixture(
    weights=[0.5, 0.3, 0.2],
    means=[[-2.0, 0.0], [1.5, 1.5], [1.5, -1.5]],
    covariances=[[0.6, 0.3], [0.4, 0.4], [0.3, 0.5]],
)
q = p0.component(2)

# %%
# Levels relative to the pretrained model
# ---------------------------------------
# Constraint levels are most natural relative to :math:`p_0`: RU asks for
# :math:`\mathrm{KL}(p\|q) \ge \mathrm{KL}(p_0\|q) + 2`, FU for
# :math:`\mathrm{KL}(q\|p) \ge \mathrm{KL}(q\|p_0) + 1`, and LU for
# :math:`\mathbb E_p[\log q] \le \mathbb E_{p_0}[\log q] - 3` (all in nats). The values at
# :math:`p_0` come from the problems themselves (``constraint_values`` of a candidate).

kl_p0_q = float(KLConstrainedProblem(p0, [q], bounds=[0.0]).constraint_values(p0)[0][0])
kl_q_p0 = float(
    KLConstrainedProblem(p0, [q], bounds=[0.0], direction="forward").constraint_values(p0)[0][0]
)
e_log_q = float(LikelihoodConstrainedProblem(p0, [q], bounds=[0.0]).constraint_values(p0)[0][0])
print(f"at p0: KL(p0||q) = {kl_p0_q:.3f}, KL(q||p0) = {kl_q_p0:.3f}, E_p0[log q] = {e_log_q:.3f}")

problems = {
    "RU": KLConstrainedProblem(p0, [q], bounds=[kl_p0_q + 2.0], direction="reverse"),
    "FU": KLConstrainedProblem(p0, [q], bounds=[kl_q_p0 + 1.0], direction="forward"),
    "LU": LikelihoodConstrainedProblem(p0, [q], bounds=[e_log_q - 3.0], likelihood="log"),
}

# %%
# Solve the duals and read the certificates
# -----------------------------------------
# ``solve_dual`` maximises the concave dual over its domain and certifies the closed-form
# target: by strong duality the gap is zero (to quadrature accuracy), the constraint is active
# (slack 0) and complementary slackness holds.

solutions = {}
for kind, prob in problems.items():
    sol = prob.solve_dual()
    solutions[kind] = sol
    cert = sol.certificate
    print(f"--- {kind}: lambda* = {sol.multipliers.tolist()}  ({sol.status})")
    print(f"    objective {cert.primal_value:.5f}, dual {cert.dual_value:.5f}, gap {cert.gap:.2e}")
    print(
        f"    constraint {cert.constraint_values.tolist()} vs level {prob.bounds.tolist()}, "
        f"slack {cert.slack.tolist()}, feasible {cert.feasible}"
    )

# %%
# Densities
# ---------
# RU sharpens :math:`p_0` (power :math:`1/(1-\lambda) > 1`) and pushes mass away from ``q``
# everywhere; FU removes a share :math:`\lambda` of ``q``'s mass and renormalises, leaving the
# other modes' shapes untouched; LU tilts by :math:`q^{-\lambda}` without sharpening.

xs = torch.linspace(-5.0, 4.5, 160, dtype=torch.float64)
grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), dim=-1)  # (160, 160, 2)
panels = {"$p_0$": p0.log_prob(grid), "$q$ (forget)": q.log_prob(grid)}
for kind, sol in solutions.items():
    lam = float(sol.multipliers[0])
    panels[rf"{kind} target, $\lambda^*={lam:.3f}$"] = sol.target.log_prob(grid)

fig, axes = plt.subplots(1, len(panels), figsize=(17, 3.6), sharex=True, sharey=True)
for ax, (title, logp) in zip(axes, panels.items(), strict=True):
    ax.contourf(xs, xs, torch.exp(logp), levels=20, cmap="magma")
    ax.contour(xs, xs, q.log_prob(grid), levels=[-4.0], colors="c", linewidths=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("$x_1$")
axes[0].set_ylabel("$x_2$")
fig.suptitle("density of each distribution (cyan: a level set of q)")
fig.tight_layout()

# %%
# How much mass each target leaves on the concept
# -----------------------------------------------
# The mass of each distribution in the concept's region (where ``q``'s responsibility under
# ``p0`` exceeds one half), by the RU problem's quadrature rule.

rule = problems["RU"].rule
region = (p0.responsibilities(rule.points)[:, 2] > 0.5).to(torch.float64)
for name, dist in [("p0", p0)] + [(k, s.target) for k, s in solutions.items()]:
    mass, _ = rule.integral(torch.exp(dist.log_prob(rule.points)) * region)
    print(f"mass on the concept region: {name:>2}  {float(mass):.4f}")

# Save the figures (``./figures`` or ``$DUALDIFF_FIGURES``) so a headless run keeps them, then
# show them when a display is available.
from dualdiff.experiments.report import save_open_figures

for path in save_open_figures("plot_targets_2d"):
    print("saved", path)
plt.show()
