"""Names accepted by the primal-dual engine and the typed errors for everything else.

Every string option of :class:`~dualdiff.engine.PrimalDualTrainer` is a ``Literal`` listed
here; :func:`resolve` rejects any other value with :class:`UnknownOptionError` (a
``ValueError``) naming the parameter, the value received and the allowed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

from .._errors import DualdiffError, LowEffectiveSampleSizeWarning
from .._validation import check_choice

__all__ = [
    "DUAL_OPTIMIZERS",
    "FORMULATIONS",
    "OPTIMIZERS",
    "PRIMALS",
    "PRIMAL_OPTIMIZERS",
    "DualOptimizerName",
    "EngineConfigurationError",
    "FormulationName",
    "LowEffectiveSampleSizeWarning",
    "NonFiniteStepWarning",
    "OptimizerName",
    "PrimalName",
    "PrimalOptimizerName",
    "UnknownOptionError",
    "resolve",
]

PrimalName = Literal["reweighted_dsm", "composed", "sampler", "siss"]
"""Primal step forms (a), (b), (c) of :ref:`the primal–dual algorithm <primal-dual>`, and
``"siss"``: FU's signed loss estimated by SISS's importance sampling (one network evaluation
per data/forget pair)."""
FormulationName = Literal["lagrangian", "augmented_lagrangian"]
"""The Cooper formulations :class:`cooper.formulations.Lagrangian` and
:class:`cooper.formulations.AugmentedLagrangian`."""
OptimizerName = Literal["simultaneous", "alternating", "alternating_dual_primal", "extragradient"]
"""The Cooper constrained optimisers ``SimultaneousOptimizer``, ``AlternatingPrimalDualOptimizer``
(``"alternating"``), ``AlternatingDualPrimalOptimizer`` and
``ExtrapolationConstrainedOptimizer``."""
DualOptimizerName = Literal["sgd", "nupi"]
"""The dual optimisers, projected gradient ascent or Cooper's :class:`~cooper.optim.nuPI`."""
PrimalOptimizerName = Literal["adam", "sgd"]
"""Primal optimisers (``ExtraAdam`` / ``ExtraSGD`` for the extragradient optimiser)."""

PRIMALS: tuple[str, ...] = get_args(PrimalName)
FORMULATIONS: tuple[str, ...] = get_args(FormulationName)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
DUAL_OPTIMIZERS: tuple[str, ...] = get_args(DualOptimizerName)
PRIMAL_OPTIMIZERS: tuple[str, ...] = get_args(PrimalOptimizerName)


class UnknownOptionError(DualdiffError, ValueError):
    """A string option of the engine is not one of the allowed names."""


class EngineConfigurationError(DualdiffError, ValueError):
    """Engine options that cannot work together, or a checkpoint of another configuration.

    E.g. a primal form for the wrong problem kind, or nuPI with the extragradient optimiser.
    """


class NonFiniteStepWarning(RuntimeWarning):
    """A primal-dual step was skipped because a batch, loss, gradient or estimate was not finite.

    Issued at the first skip of a run of consecutive skips; the trainer raises
    :class:`~dualdiff.NonFiniteError` once ``max_skipped_steps`` steps in a row were skipped.
    """


def resolve(value: Any, name: str, owner: str, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; raise :class:`UnknownOptionError` else."""
    return check_choice(value, name, owner, allowed, error=UnknownOptionError)
