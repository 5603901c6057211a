r"""Reference problems with exact answers and an independent brute-force primal solver.

This module is what the test-suite and ``dualdiff verify`` check the library against. Nothing
here calls the code under test to *produce* a reference: densities are evaluated with
:mod:`scipy.stats`, integrals with numpy sums or :func:`scipy.integrate.quad`, and optima with
:mod:`scipy.optimize`. The library's problems are only used as containers of the data
(mixture parameters, levels, kind).

Three kinds of references (for the problems, targets and duals of :doc:`/mathematics` and
:ref:`strong duality <strong-duality>`):

* **Closed forms.** :func:`retrain_reference` — FU with :math:`p_0=(1-a)q_r+a\,q` at
  :math:`\lambda=a` gives exactly the retrained model :math:`q_r`.
  :func:`gaussian_reference` — RU and LU with one Gaussian :math:`p_0=\mathcal N(0,s_0^2)` and
  one Gaussian :math:`q=\mathcal N(\mu,s^2)`: the tilt is Gaussian, so
  :math:`\log Z(\lambda)`, :math:`g(\lambda)`, the constraint value of the target and the
  optimal multiplier (a scalar root) are written down by hand.
* **Brute force.** :func:`brute_force_primal` discretises a 1-D problem on a uniform grid and
  solves the *nonconvex* primal over the probability simplex with SLSQP from several starts;
  :func:`discrete_dual` / :func:`discrete_dual_max` compute the dual of the *same* discrete
  problem in numpy. Strong duality says the two agree.
* **A standard suite.** :func:`standard_suite` — named RU/FU/LU problems (``m = 1, 2``; 1-D and
  2-D) with levels chosen relative to the pretrained model so that every constraint is active.

Reference: Khalafi, Ribeiro & Ding, *Unlearning in Diffusion Models: A Unified Framework with
KL Divergence and Likelihood Constraints*, ICML 2026 (arXiv:2605.30825).


Modules: :mod:`.densities` (scipy densities and scores), :mod:`.closed_forms`
(exact references), :mod:`.brute_force` (discretised primal and dual), :mod:`.suite`
(the standard suite of ``dualdiff verify``).
"""

from .brute_force import (
    BruteForceResult,
    DiscreteDualResult,
    DiscreteProblem,
    brute_force_primal,
    discrete_dual,
    discrete_dual_max,
    discretise,
)
from .closed_forms import (
    GaussianReference,
    RetrainReference,
    gaussian_reference,
    retrain_reference,
)
from .densities import gaussian_kl, mixture_log_pdf, mixture_score
from .suite import SuiteCase, pretrained_value, standard_suite

__all__ = [
    "BruteForceResult",
    "DiscreteDualResult",
    "DiscreteProblem",
    "GaussianReference",
    "RetrainReference",
    "SuiteCase",
    "brute_force_primal",
    "discrete_dual",
    "discrete_dual_max",
    "discretise",
    "gaussian_kl",
    "gaussian_reference",
    "mixture_log_pdf",
    "mixture_score",
    "pretrained_value",
    "retrain_reference",
    "standard_suite",
]
