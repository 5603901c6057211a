"""dualdiff: constrained unlearning in diffusion models with duality certificates."""

from importlib.metadata import PackageNotFoundError, version

from .models import GaussianMixture, NoiseSchedule, ScoreModel, VPSchedule

try:
    __version__ = version("dualdiff")
except PackageNotFoundError:  # pragma: no cover - source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = [
    "GaussianMixture",
    "NoiseSchedule",
    "ScoreModel",
    "VPSchedule",
    "__version__",
]
