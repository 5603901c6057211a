r"""Weight-based unlearning baselines as fixed-multiplier special cases (see :doc:`/baselines`).

The usual unlearning baselines for diffusion models use *the same operators* as the
constrained problems, with the multiplier set by hand instead of by duality. This module
introduces no new formula; it converts each baseline's hyperparameter into a multiplier and
hands it to the existing operators:

* **ESD** (Gandikota et al., *Erasing Concepts from Diffusion Models*, ICCV 2023) — the RU
  target at a fixed :math:`\lambda`: its negative-guidance score
  :math:`s_0 + \eta\,(s_0 - s_q)` is :math:`s_\lambda` with
  :math:`\lambda = \eta/(1+\eta)` (:func:`esd_lambda`, :func:`esd_eta`, :func:`ESD`).
* **SISS** (Alberti, Hasanaliyev, Shah & Ermon, *Data Unlearning in Diffusion Models*,
  ICLR 2025, arXiv:2503.01034) — at the population level, the FU Lagrangian at a fixed
  :math:`\lambda`, whose minimiser is the signed mixture :math:`(p_0-\lambda q)/(1-\lambda)`
  (:func:`SISS`); its published importance-sampled estimator (defensive mixture
  :math:`\kappa`, ``scaling_norm``) is :func:`siss_loss` and the engine's ``primal="siss"``.
* **NegGrad** (gradient ascent on the forget loss; Golatkar, Achille & Soatto, *Eternal
  Sunshine of the Spotless Net*, CVPR 2020, and the standard "NegGrad+" with a retain term) —
  :func:`neggrad_loss`, built on
  :func:`~dualdiff.diffusion.losses.denoising_score_matching_loss`; with a retain term it is the FU
  Lagrangian at :func:`neggrad_lambda`.

Training with a hand-set weight uses the engine's own primal step:
:class:`FixedWeightTrainer` is a :class:`~dualdiff.engine.PrimalDualTrainer` with the
``"frozen"`` dual-update rule (no estimate drives a dual step), and :func:`train_fixed_weight`
runs it. A baseline and a constrained run with the same options and seed therefore differ
*only* in how :math:`\lambda` is chosen.

See the documentation page *Baselines as fixed multipliers* for the derivations and for why a
fixed weight needs a sweep to reach a requested level.
"""

from .siss import siss_loss
from .training import FixedWeightTrainer, neggrad_loss, train_fixed_weight
from .weights import ESD, SISS, esd_eta, esd_lambda, neggrad_lambda

__all__ = [
    "ESD",
    "SISS",
    "Anchor",
    "FixedWeightTrainer",
    "esd_eta",
    "esd_lambda",
    "neggrad_lambda",
    "neggrad_loss",
    "siss_loss",
    "train_fixed_weight",
]
