r"""Closed-form targets :math:`p_\lambda`, their exact noised versions, and potentials.

* :mod:`.operators` — the three reweightings of :math:`p_0` (geometric, signed mixture,
  exponential tilt) as score models with exact clean-data log-densities;
* :mod:`.noised` — exact noised targets by numerical convolution (d <= 2) and the error of the
  composed score;
* :mod:`.potentials` — the likelihood functionals :math:`\ell_i` of LU (log-density, density,
  user callables).
"""

from .noised import ExactNoisedTarget, ScoreErrorProfile, composed_score_error
from .operators import GeometricTarget, SignedMixtureTarget, Target
from .potentials import CallableLikelihood, DensityLikelihood, LogLikelihood, Potential

__all__ = [
    "CallableLikelihood",
    "DensityLikelihood",
    "ExactNoisedTarget",
    "GeometricTarget",
    "LogLikelihood",
    "Potential",
    "ScoreErrorProfile",
    "SignedMixtureTarget",
    "Target",
    "composed_score_error",
]
