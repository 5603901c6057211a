"""
Gaussian mixtures: densities, scores and samples at every diffusion time
========================================================================

:class:`dualdiff.GaussianMixture` is the analytic model behind every exact check in
dualdiff: its density, score and samples are known in closed form, and under the
variance-preserving forward process :math:`x_t = \\alpha_t x_0 + \\sigma_t \\varepsilon` it
stays a Gaussian mixture with components
:math:`\\mathcal N(\\alpha_t \\mu_k, \\alpha_t^2 \\Sigma_k + \\sigma_t^2 I)`.

This example builds a 2-D mixture of three components, draws the contours of
``log_prob`` with samples on top, and shows how the noised marginals
(:meth:`~dualdiff.GaussianMixture.noised`) and their scores blur the modes together as
the diffusion time grows — the reason why mode weights are decided at high noise.
"""

# %%
# A pretrained model and a concept to forget
# ------------------------------------------
# ``p0`` plays the pretrained model; its third component ``q`` is the concept an unlearning
# problem would separate from (see :doc:`/mathematics`).

import matplotlib.pyplot as plt
import torch

from dualdiff import GaussianMixture

torch.set_num_threads(1)  # tiny tensors: extra threads only add synchronisation cost
torch.manual_seed(0)

p0 = GaussianMixture(
    weights=[0.5, 0.3, 0.2],
    means=[[-2.0, 0.0], [1.5, 1.5], [1.5, -1.5]],
    covariances=[[0.6, 0.3], [0.4, 0.4], [0.3, 0.5]],  # diagonal, one row per component
)
q = p0.component(2)
print(p0)
print("mixture mean:", p0.mean().tolist())

# %%
# Density and samples
# -------------------
# ``log_prob`` maps points of shape ``(..., d)`` to ``(...)``, so a whole grid is one call.

xs = torch.linspace(-5.0, 5.0, 200, dtype=torch.float64)
grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), dim=-1)  # (200, 200, 2)
logp = p0.log_prob(grid)
samples = p0.sample(600)

fig, ax = plt.subplots(figsize=(5.5, 4.8))
cs = ax.contourf(xs, xs, logp.clamp_min(-12.0), levels=24, cmap="viridis")
fig.colorbar(cs, ax=ax, label=r"$\log p_0(x)$")
ax.contour(xs, xs, q.log_prob(grid), levels=4, colors="white", linewidths=0.8)
ax.scatter(samples[:, 0], samples[:, 1], s=4, c="k", alpha=0.5, label="samples of $p_0$")
ax.set(xlabel="$x_1$", ylabel="$x_2$", title="$p_0$ (filled) and the concept $q$ (white)")
ax.legend(loc="lower left")
fig.tight_layout()

# %%
# The marginals along the forward diffusion
# -----------------------------------------
# ``noised(t)`` returns the exact marginal :math:`p_{0,t}`; ``score(x, t)`` its score.
# At small ``t`` the three modes are distinct; at large ``t`` every component has been
# pulled towards the origin and widened to unit variance, and the scores of all
# components (hence of ``p0`` and of ``q``) point the same way.

times = [0.0, 0.2, 0.5, 1.0]
coarse = torch.linspace(-4.5, 4.5, 15, dtype=torch.float64)
cgrid = torch.stack(torch.meshgrid(coarse, coarse, indexing="xy"), dim=-1)

fig, axes = plt.subplots(1, len(times), figsize=(13, 3.4), sharex=True, sharey=True)
for ax, t in zip(axes, times, strict=True):
    pt = p0.noised(t)
    ax.contourf(xs, xs, pt.log_prob(grid).clamp_min(-12.0), levels=20, cmap="viridis")
    s = p0.score(cgrid, t=t)
    s = s / s.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # directions only
    ax.quiver(cgrid[..., 0], cgrid[..., 1], s[..., 0], s[..., 1], color="w", width=0.004)
    alpha = float(p0.schedule.alpha(torch.tensor(t, dtype=torch.float64)))
    ax.set_title(rf"$t={t}$, $\alpha_t={alpha:.2f}$")
    ax.set_xlabel("$x_1$")
axes[0].set_ylabel("$x_2$")
fig.suptitle(r"$\log p_{0,t}$ and the direction of $\nabla_x \log p_{0,t}$")
fig.tight_layout()

# %%
# The noised mixture is a mixture with the same weights: its components are available
# exactly, which is what lets dualdiff measure the error of approximate (composed) scores
# at every diffusion time.

p_half = p0.noised(0.5)
print("weights at t=0.5:", p_half.weights.tolist())
print("covariance of component 0 at t=0.5:", p_half.covariances[0].tolist())

# Save the figures (``./figures`` or ``$DUALDIFF_FIGURES``) so a headless run keeps them, then
# show them when a display is available.
from dualdiff.experiments.report import save_open_figures

for path in save_open_figures("plot_gaussian_mixture_basics"):
    print("saved", path)
plt.show()
