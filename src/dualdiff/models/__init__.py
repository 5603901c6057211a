"""Distributions and score models: protocols, schedules, Gaussian mixtures, torch adapters."""

from .conditional_mlp import NULL_CLASS, CondMLPScoreNet
from .conditioned import Conditioned
from .gaussian_mixture import GaussianMixture
from .module_adapter import MLPScoreNet, ModuleScoreModel
from .parametrization import Prediction, score_to, to_score
from .protocol import Density, SampleableDensity, ScoreModel
from .schedule import NoiseSchedule, VPSchedule

__all__ = [
    "NULL_CLASS",
    "CondMLPScoreNet",
    "Conditioned",
    "Density",
    "GaussianMixture",
    "MLPScoreNet",
    "ModuleScoreModel",
    "NoiseSchedule",
    "Prediction",
    "SampleableDensity",
    "ScoreModel",
    "VPSchedule",
    "score_to",
    "to_score",
]
