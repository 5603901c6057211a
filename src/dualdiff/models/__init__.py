"""Distributions and score models: protocols, noise schedules and Gaussian mixtures."""

from .gaussian_mixture import GaussianMixture
from .protocol import Density, SampleableDensity, ScoreModel
from .schedule import NoiseSchedule, VPSchedule

__all__ = [
    "Density",
    "GaussianMixture",
    "NoiseSchedule",
    "SampleableDensity",
    "ScoreModel",
    "VPSchedule",
]
