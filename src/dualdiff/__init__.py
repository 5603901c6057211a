"""dualdiff: constrained unlearning in diffusion models with duality certificates.

Implements *Unlearning in Diffusion Models: A Unified Framework with KL Divergence and
Likelihood Constraints* (Khalafi, Ribeiro & Ding, ICML 2026, arXiv:2605.30825).
"""

from importlib.metadata import PackageNotFoundError, version

from ._errors import (
    CheckpointError,
    ClosedFormUnavailableError,
    DataScaleWarning,
    DualdiffError,
    DualDomainError,
    DualEstimateUnavailableError,
    IllPosedProblemError,
    NonFiniteError,
)
from .baselines import (
    ESD,
    SISS,
    FixedWeightTrainer,
    esd_eta,
    esd_lambda,
    neggrad_lambda,
    neggrad_loss,
    siss_loss,
    train_fixed_weight,
)
from .diffusion.likelihood import Estimate, elbo, kl_estimate, ode_log_likelihood, path_kl
from .diffusion.losses import denoising_score_matching_loss
from .diffusion.sampling import SamplerOutput, sample_ode, sample_sde
from .duality import Certificate, DualSolution
from .engine import (
    ConstraintEstimate,
    ConstraintEstimator,
    EngineConfigurationError,
    LowEffectiveSampleSizeWarning,
    PrimalDualTrainer,
    TrainableGaussianMixture,
    TrainingHistory,
    UnknownOptionError,
)
from .integration import GridQuadrature, MonteCarlo
from .models import (
    Conditioned,
    Density,
    GaussianMixture,
    MLPScoreNet,
    ModuleScoreModel,
    NoiseSchedule,
    ScoreModel,
    VPSchedule,
)
from .problems import (
    DensityEstimator,
    DualDomain,
    EstimatedDualSolution,
    ForwardKLProblem,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
    ReverseKLProblem,
    UnlearningProblem,
)
from .targets import GeometricTarget, SignedMixtureTarget, Target
from .targets.noised import ExactNoisedTarget, ScoreErrorProfile, composed_score_error
from .targets.potentials import CallableLikelihood, DensityLikelihood, LogLikelihood

#: Distribution name on the package index (``pip install dualdiff-unlearning``); the import
#: name is ``dualdiff``. ("dualdiff" on PyPI is an unrelated project.)
DISTRIBUTION = "dualdiff-unlearning"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # pragma: no cover - an install made before the rename
    try:
        __version__ = version("dualdiff")
    except PackageNotFoundError:  # source tree without installation
        __version__ = "0.0.0+unknown"

__all__ = [
    "ESD",
    "SISS",
    "CallableLikelihood",
    "Certificate",
    "CheckpointError",
    "ClosedFormUnavailableError",
    "Conditioned",
    "ConstraintEstimate",
    "ConstraintEstimator",
    "DataScaleWarning",
    "Density",
    "DensityEstimator",
    "DensityLikelihood",
    "DualDomain",
    "DualDomainError",
    "DualEstimateUnavailableError",
    "DualSolution",
    "DualdiffError",
    "EngineConfigurationError",
    "Estimate",
    "EstimatedDualSolution",
    "ExactNoisedTarget",
    "FixedWeightTrainer",
    "ForwardKLProblem",
    "GaussianMixture",
    "GeometricTarget",
    "GridQuadrature",
    "IllPosedProblemError",
    "KLConstrainedProblem",
    "LikelihoodConstrainedProblem",
    "LogLikelihood",
    "LowEffectiveSampleSizeWarning",
    "MLPScoreNet",
    "ModuleScoreModel",
    "MonteCarlo",
    "NoiseSchedule",
    "NonFiniteError",
    "PrimalDualTrainer",
    "ReverseKLProblem",
    "SamplerOutput",
    "ScoreErrorProfile",
    "ScoreModel",
    "SignedMixtureTarget",
    "Target",
    "TrainableGaussianMixture",
    "TrainingHistory",
    "UnknownOptionError",
    "UnlearningProblem",
    "VPSchedule",
    "__version__",
    "composed_score_error",
    "denoising_score_matching_loss",
    "elbo",
    "esd_eta",
    "esd_lambda",
    "kl_estimate",
    "neggrad_lambda",
    "neggrad_loss",
    "ode_log_likelihood",
    "path_kl",
    "sample_ode",
    "sample_sde",
    "siss_loss",
    "train_fixed_weight",
]
