"""Checkpoints of the primal-dual trainer that resume bit-for-bit.

A checkpoint holds the model's ``state_dict``, Cooper's constrained-optimiser state
(``ConstrainedOptimizer.state_dict()``: primal and dual optimiser states), the CMP state
(``ConstrainedMinimizationProblem.state_dict()``: multipliers and penalty coefficients), the
step counter, the latest constraint estimate, the dual-update rule's state, the history, the
population-ESS bookkeeping and every random state the run touches (torch CPU and CUDA, numpy,
Python ``random`` and the trainer's own generator). On CPU a run interrupted and resumed from a
checkpoint ends with exactly the same parameters, multipliers and history as an uninterrupted
one.

Files are written with :func:`torch.save` and read with ``weights_only=True`` (only tensors
and plain Python containers are stored; Cooper's ``nuPIInitType`` enum is allow-listed).
"""

from __future__ import annotations

import random
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .constraints import ConstraintEstimate
from .history import TrainingHistory
from .options import EngineConfigurationError

if TYPE_CHECKING:
    from .trainer import PrimalDualTrainer

__all__ = ["load_checkpoint", "save_checkpoint"]

FORMAT = "dualdiff.engine.checkpoint/1"


def _estimate_state(est: ConstraintEstimate | None) -> dict[str, Any] | None:
    if est is None:
        return None
    return {
        "constraints": est.constraints.detach().cpu(),
        "constraint_stderr": est.constraint_stderr.detach().cpu(),
        "violations": est.violations.detach().cpu(),
        "objective": est.objective,
        "objective_stderr": est.objective_stderr,
        "method": est.method,
        "n": est.n,
    }


def _estimate_from(state: dict[str, Any] | None) -> ConstraintEstimate | None:
    if state is None:
        return None
    return ConstraintEstimate(**state)


def _rng_state(trainer: PrimalDualTrainer) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
        "generator": trainer.generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(trainer: PrimalDualTrainer, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    trainer.generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(trainer: PrimalDualTrainer, path: str | PathLike[str]) -> None:
    """Write ``trainer``'s complete state to ``path`` (see the module docstring)."""
    state = {
        "format": FORMAT,
        "config": trainer.config(),
        "step": trainer._step,
        "model": trainer.module.state_dict(),
        "optimizer": trainer.constrained_optimizer.state_dict(),
        "cmp": trainer.cmp.state_dict(),
        "last_estimate": _estimate_state(trainer.cmp.last_estimate),
        "dual_rule": trainer.dual_rule.state_dict(),
        "history": trainer.history.to_dict(),
        "ess": {
            "key": None if trainer._ess_key is None else list(trainer._ess_key),
            "low": trainer._ess_low,
        },
        "rng": _rng_state(trainer),
    }
    torch.save(state, path)


def _load(path: str | PathLike[str]) -> dict[str, Any]:
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # torch < 2.5: no allow-list context, load trusted file
        return torch.load(path, map_location="cpu", weights_only=False)
    from cooper.optim.torch_optimizers.nupi_optimizer import nuPIInitType

    with safe([nuPIInitType]):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(trainer: PrimalDualTrainer, path: str | PathLike[str]) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``trainer``.

    Raises
    ------
    EngineConfigurationError
        If the file is not an engine checkpoint or was written by a trainer with another
        problem kind, number of constraints, primal form, formulation or optimisers.
    """
    state = _load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise EngineConfigurationError(
            f"PrimalDualTrainer.load_checkpoint: {str(path)!r} is not a dualdiff engine "
            f"checkpoint (expected format {FORMAT!r})"
        )
    mine, theirs = trainer.config(), state["config"]
    if mine != theirs:
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        raise EngineConfigurationError(
            "PrimalDualTrainer.load_checkpoint: the checkpoint was written by a differently "
            f"configured trainer; (checkpoint, this trainer) differ in {diff}"
        )
    trainer.module.load_state_dict(state["model"])
    trainer.constrained_optimizer.load_state_dict(state["optimizer"])
    trainer.cmp.load_state_dict(state["cmp"])
    trainer.cmp.last_estimate = _estimate_from(state["last_estimate"])
    trainer.dual_rule.load_state_dict(state["dual_rule"])
    trainer._step = int(state["step"])
    trainer.history = TrainingHistory.from_dict(state["history"])
    key = state["ess"]["key"]
    trainer._ess_key = None if key is None else tuple(key)
    trainer._ess_low = bool(state["ess"]["low"])
    _set_rng_state(trainer, state["rng"])
