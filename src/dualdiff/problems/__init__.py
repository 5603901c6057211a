"""The three unlearning problems: RU and FU (:class:`KLConstrainedProblem`) and LU."""

from .base import UnlearningProblem
from .kl import ForwardKLProblem, KLConstrainedProblem, ReverseKLProblem
from .likelihood import LikelihoodConstrainedProblem

__all__ = [
    "ForwardKLProblem",
    "KLConstrainedProblem",
    "LikelihoodConstrainedProblem",
    "ReverseKLProblem",
    "UnlearningProblem",
]
