r"""Primal-dual engine on Cooper (see :ref:`the primal–dual algorithm <primal-dual>`).

A Cooper :class:`~cooper.ConstrainedMinimizationProblem` is assembled from an unlearning
problem and a trainable score model (:class:`UnlearningCMP`); its multipliers are projected
into the problem's dual domain after every dual step (:class:`ProjectedMultiplier`); the
primal step is one of four forms (:class:`ReweightedDSM`, :class:`ComposedScoreMatching`,
:class:`SamplerLagrangian`, and SISS's :class:`ImportanceSampledSignedLoss` for FU);
constraint values come from model-based estimators (:class:`ConstraintEstimator`);
:class:`PrimalDualTrainer` runs Cooper's constrained optimisers with histories, callbacks, a
NaN guard and bit-exact checkpoints.
"""

from ..problems.dual_domain import DualDomainProjection, project_capped_box
from .averaging import WeightAverage
from .checkpoint import load_checkpoint, save_checkpoint
from .cmp import NonFiniteStep, UnlearningCMP, UnlearningCMPState
from .constraints import ConstraintEstimate, ConstraintEstimator, violations_from
from .dual_update import (
    DUAL_UPDATES,
    DualUpdateRule,
    EveryEstimate,
    FrozenMultipliers,
    SettledPrimal,
)
from .history import StepRecord, TrainingHistory
from .optim import build_constrained_optimizer
from .options import (
    DUAL_OPTIMIZERS,
    FORMULATIONS,
    OPTIMIZERS,
    PRIMAL_OPTIMIZERS,
    PRIMALS,
    EngineConfigurationError,
    LowEffectiveSampleSizeWarning,
    NonFiniteStepWarning,
    UnknownOptionError,
)
from .primal import (
    ComposedScoreMatching,
    ImportanceSampledSignedLoss,
    PrimalBatch,
    PrimalForm,
    PrimalLoss,
    ReweightedDSM,
    SamplerLagrangian,
    TargetCache,
)
from .projected_multiplier import ProjectedMultiplier
from .reference import TrainableGaussianMixture
from .trainer import Callback, PrimalDualTrainer

__all__ = [
    "DUAL_OPTIMIZERS",
    "DUAL_UPDATES",
    "FORMULATIONS",
    "OPTIMIZERS",
    "PRIMALS",
    "PRIMAL_OPTIMIZERS",
    "Callback",
    "ComposedScoreMatching",
    "ConstraintEstimate",
    "ConstraintEstimator",
    "DualDomainProjection",
    "DualUpdateRule",
    "EngineConfigurationError",
    "EveryEstimate",
    "FrozenMultipliers",
    "ImportanceSampledSignedLoss",
    "LowEffectiveSampleSizeWarning",
    "NonFiniteStep",
    "NonFiniteStepWarning",
    "PrimalBatch",
    "PrimalDualTrainer",
    "PrimalForm",
    "PrimalLoss",
    "ProjectedMultiplier",
    "ReweightedDSM",
    "SamplerLagrangian",
    "SettledPrimal",
    "StepRecord",
    "TargetCache",
    "TrainableGaussianMixture",
    "TrainingHistory",
    "UnknownOptionError",
    "UnlearningCMP",
    "UnlearningCMPState",
    "WeightAverage",
    "build_constrained_optimizer",
    "load_checkpoint",
    "project_capped_box",
    "save_checkpoint",
    "violations_from",
]
