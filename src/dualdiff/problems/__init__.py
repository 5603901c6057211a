"""The three unlearning problems on one contract (:class:`UnlearningProblem`).

Closed-form problems stated with Gaussian mixtures (:class:`ReverseKLProblem`,
:class:`ForwardKLProblem`, :class:`LikelihoodConstrainedProblem`) and problems stated with
models (:mod:`dualdiff.problems.model_level`); :class:`KLConstrainedProblem` and
:class:`LikelihoodConstrainedProblem` dispatch on what they are given.
"""

from .base import AnalyticProblem
from .contract import ConstraintEstimate, DensityEstimator, UnlearningProblem
from .dual_domain import DualDomain, DualDomainProjection, project_capped_box
from .estimated_dual import EstimatedDualSolution, MonteCarloDual, TradeoffPoint
from .kl import ForwardKLProblem, KLConstrainedProblem, ReverseKLProblem
from .likelihood import LikelihoodConstrainedProblem
from .memorised import MemorisedForwardDual, memorised_forward_dual
from .model_level import (
    ComposedScore,
    ModelForwardKLProblem,
    ModelLikelihoodProblem,
    ModelReverseKLProblem,
    classifier_log_ratio,
)

__all__ = [
    "AnalyticProblem",
    "ComposedScore",
    "ConstraintEstimate",
    "DensityEstimator",
    "DualDomain",
    "DualDomainProjection",
    "EstimatedDualSolution",
    "ForwardKLProblem",
    "KLConstrainedProblem",
    "LikelihoodConstrainedProblem",
    "MemorisedForwardDual",
    "ModelForwardKLProblem",
    "ModelLikelihoodProblem",
    "ModelReverseKLProblem",
    "MonteCarloDual",
    "ReverseKLProblem",
    "TradeoffPoint",
    "UnlearningProblem",
    "classifier_log_ratio",
    "memorised_forward_dual",
    "project_capped_box",
]
