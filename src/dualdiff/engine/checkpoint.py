"""Checkpoints of the primal-dual trainer that resume bit-for-bit.

A checkpoint holds the model's ``state_dict``, Cooper's constrained-optimiser state
(``ConstrainedOptimizer.state_dict()``: primal and dual optimiser states), the CMP state
(``ConstrainedMinimizationProblem.state_dict()``: multipliers and penalty coefficients), the
step counter, the latest constraint estimate, the dual-update rule's state, the history, the
weight average (``ema_decay``), the population-ESS bookkeeping and every random state the run
touches (torch CPU and CUDA, numpy, Python ``random`` and the trainer's own generator). On CPU
a run interrupted and resumed from a checkpoint ends with exactly the same parameters,
multipliers and history as an uninterrupted one.

Files are written with :func:`torch.save` and read with ``weights_only=True`` (only tensors
and plain Python containers are stored; Cooper's ``nuPIInitType`` enum is allow-listed).

Safety:

* **Atomic writes.** The state goes to a temporary file in the same folder, is ``fsync``-ed and
  renamed over ``path`` (:func:`dualdiff._io.atomic_write`): an interrupted save leaves the
  previous checkpoint intact.
* **Readable errors.** A missing, empty, truncated or corrupt file raises
  :class:`~dualdiff.CheckpointError` naming the file.
* **Fingerprints.** A checkpoint records a fingerprint of the problem (kind, levels, the
  pretrained and unlearning distributions or models, options such as the KL direction or the
  likelihood) and of the trainer's settings (step sizes, optimiser classes and options, batch
  size, estimation cadence, penalty, domain margin and caps). Loading into a trainer whose
  problem differs is refused with :class:`~dualdiff.engine.EngineConfigurationError` listing
  every difference; differing *settings* are refused too unless ``override_settings=True``, in
  which case the trainer's own settings are applied to the restored optimisers (so
  ``trainer.primal_lr``/``trainer.dual_lr`` tell the truth). A different primal optimiser class
  is always refused (its state cannot be reused).
* **All or nothing.** Everything is validated (format, fingerprints, parameter names and
  shapes, finite weights and multipliers inside the dual domain) before anything is applied,
  and a failure while applying restores the trainer's previous state.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import random
import zipfile
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._errors import CheckpointError
from .._io import atomic_write
from .constraints import ConstraintEstimate
from .history import TrainingHistory
from .options import EngineConfigurationError

if TYPE_CHECKING:
    from .trainer import PrimalDualTrainer

__all__ = [
    "fingerprint",
    "load_checkpoint",
    "load_trainer_state",
    "save_checkpoint",
    "trainer_state",
]

FORMAT = "dualdiff.engine.checkpoint/2"


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


# ---------------------------------------------------------------------- fingerprints
def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _state_digest(state: Any) -> str:
    """SHA-256 of every tensor and plain value of a checkpoint (``"checksum"`` excluded).

    torch's zip reader does not verify the archive's CRCs, so a flipped byte in a tensor's
    storage would otherwise load silently.
    """
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            h.update(b"{")
            for k in v:
                if k == "checksum":
                    continue
                h.update(repr(k).encode())
                walk(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[")
            for x in v:
                walk(x)
            h.update(b"]")
        else:
            h.update(repr(v).encode())

    walk(state)
    return h.hexdigest()


def describe(obj: Any, trained: frozenset[int] = frozenset()) -> Any:
    """A JSON-ready description of a distribution, model or option for fingerprints.

    Distributions with ``to_dict`` are described by it; ``nn.Module`` (or objects wrapping
    one as ``.module``) by their class and a SHA-256 digest of their ``state_dict``; a
    :class:`~dualdiff.models.Conditioned` view by its model and condition; callables by their
    qualified name; plain values as they are. A module sharing parameters with the model
    being trained (ids in ``trained``) is described by its parameter shapes only, since its
    weights change during training.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, (list, tuple)):
        return [describe(v, trained) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v, trained) for k, v in obj.items()}
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        try:
            return {"type": type(obj).__name__, **to_dict()}
        except Exception:
            pass
    module = obj if isinstance(obj, nn.Module) else getattr(obj, "module", None)
    if isinstance(module, nn.Module):
        out: dict[str, Any] = {"type": type(obj).__name__, "module": type(module).__name__}
        if any(id(p) in trained for p in module.parameters()):
            out["shapes"] = {k: list(v.shape) for k, v in module.state_dict().items()}
            out["note"] = "shares parameters with the trained model: weights not compared"
        else:
            out["state_sha256"] = _tensor_digest(module.state_dict())
        if hasattr(obj, "cond"):
            out["cond"] = describe(obj.cond, trained)
        return out
    inner = getattr(obj, "model", None)
    if inner is not None and hasattr(obj, "cond"):
        return {"type": type(obj).__name__, "model": describe(inner, trained),
                "cond": describe(obj.cond, trained)}
    if callable(obj):
        return {"callable": getattr(obj, "__qualname__", type(obj).__qualname__)}
    return {"type": type(obj).__name__}


def _optimizer_settings(opt: torch.optim.Optimizer) -> dict[str, Any]:
    groups = []
    for g in opt.param_groups:
        groups.append(
            {k: describe(v) for k, v in sorted(g.items()) if k != "params" and k != "lr"}
        )
    return {"class": type(opt).__name__, "groups": groups}


def fingerprint(trainer: PrimalDualTrainer) -> dict[str, dict[str, Any]]:
    """What a checkpoint must agree on: ``{"problem": {...}, "settings": {...}}``.

    ``problem`` holds the problem's kind, number of constraints, levels, its distributions
    or models (:func:`describe`) and its string options (KL direction, likelihood);
    ``settings`` the trainer's step sizes, optimiser classes and options, batch size,
    estimation cadence, penalty and dual-domain projection. Learning rates are compared under
    ``settings`` and the optimisers' other hyperparameters under ``primal_optimizer`` /
    ``dual_optimizer``.
    """
    prob = trainer.problem
    trained = frozenset(id(p) for p in trainer.module.parameters())
    problem: dict[str, Any] = {
        "kind": prob.kind,
        "m": int(prob.m),
        "bounds": [float(v) for v in torch.as_tensor(prob.bounds).reshape(-1).tolist()],
        "pretrained": describe(getattr(prob, "pretrained", None), trained),
        "unlearn": [describe(q, trained) for q in getattr(prob, "unlearn", [])],
    }
    for opt_name in ("direction", "likelihood"):
        if hasattr(prob, opt_name):
            value = getattr(prob, opt_name)
            problem[opt_name] = value if isinstance(value, str) else describe(value, trained)
    copt = trainer.constrained_optimizer
    primals = list(copt.primal_optimizers or [])
    duals = list(copt.dual_optimizers or [])
    proj = trainer.projection
    settings: dict[str, Any] = {
        "primal_lr": trainer.primal_lr,
        "dual_lr": trainer.dual_lr,
        "batch_size": trainer.batch_size,
        "estimate_every": trainer.estimate_every,
        "penalty": trainer.penalty,
        "grad_clip": trainer.grad_clip,
        "domain": {"upper": proj.upper.tolist(), "cap": float(proj.cap),
                   "margin": float(proj.margin)},
        "primal_optimizer": [_optimizer_settings(o) for o in primals],
        "dual_optimizer": [_optimizer_settings(o) for o in duals],
    }
    return {"problem": describe(problem, trained), "settings": describe(settings)}


def _differences(theirs: Any, mine: Any, where: str = "") -> list[str]:
    if isinstance(theirs, dict) and isinstance(mine, dict):
        out: list[str] = []
        for k in sorted(set(theirs) | set(mine), key=str):
            out += _differences(theirs.get(k), mine.get(k), f"{where}.{k}" if where else k)
        return out
    if isinstance(theirs, list) and isinstance(mine, list) and len(theirs) == len(mine):
        out = []
        for i, (a, b) in enumerate(zip(theirs, mine, strict=True)):
            out += _differences(a, b, f"{where}[{i}]")
        return out
    if theirs != mine:
        def short(v: Any) -> str:
            text = json.dumps(v, default=str)
            return text if len(text) <= 80 else text[:77] + "..."

        return [f"{where}: checkpoint {short(theirs)}, this trainer {short(mine)}"]
    return []


# ---------------------------------------------------------------------- state
def trainer_state(trainer: PrimalDualTrainer) -> dict[str, Any]:
    """The trainer's complete state as a dictionary of tensors and plain containers.

    Everything :func:`load_trainer_state` needs; :func:`save_checkpoint` writes it with
    :func:`torch.save`. The tensors are copies: later steps do not change the dictionary.
    """
    state = {
        "format": FORMAT,
        "config": trainer.config(),
        "fingerprint": fingerprint(trainer),
        "step": trainer._step,
        "skips": {"consecutive": trainer._consecutive_skips,
                  "estimate_failing": trainer._estimate_failing},
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
    if trainer.average is not None:
        state["average"] = trainer.average.state_dict()
    state = copy.deepcopy(state)
    state["checksum"] = _state_digest(state)
    return state


def save_checkpoint(trainer: PrimalDualTrainer, path: str | PathLike[str]) -> None:
    """Write ``trainer``'s complete state to ``path`` atomically (see the module docstring)."""
    state = trainer_state(trainer)
    atomic_write(path, lambda fh: torch.save(state, fh))


def _load(path: str | PathLike[str]) -> dict[str, Any]:
    owner = "PrimalDualTrainer.load_checkpoint"
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise CheckpointError(f"{owner}: checkpoint file {str(p)!r} {what}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{owner}: checkpoint file {str(p)!r} is empty (0 bytes)")
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe is None:  # torch < 2.5: no allow-list context, load trusted file
            return torch.load(p, map_location="cpu", weights_only=False)
        from cooper.optim.torch_optimizers.nupi_optimizer import nuPIInitType

        with safe([nuPIInitType]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        OSError,
        EOFError,
        UnicodeDecodeError,
        ValueError,
        KeyError,
        IndexError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as exc:
        raise CheckpointError(
            f"{owner}: checkpoint file {str(p)!r} ({p.stat().st_size} bytes) is corrupt or "
            f"truncated and cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def _check_finite_tensors(tree: Any, what: str, owner: str) -> None:
    bad: list[str] = []

    def walk(v: Any, where: str) -> None:
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                bad.append(where)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{where}.{k}" if where else str(k))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]")

    walk(tree, "")
    if bad:
        raise CheckpointError(
            f"{owner}: the checkpoint's {what} hold NaN or inf values (in {', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); refusing to load them"
        )


def _validate(
    trainer: PrimalDualTrainer,
    state: Any,
    where: str,
    override_settings: bool,
    verify_checksum: bool,
) -> None:
    owner = "PrimalDualTrainer.load_checkpoint"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise EngineConfigurationError(
            f"{owner}: {where} is not a dualdiff engine checkpoint (expected format "
            f"{FORMAT!r}, got {got!r})"
        )
    missing = [k for k in ("config", "fingerprint", "model", "optimizer", "cmp", "step",
                           "history", "rng", "dual_rule", "ess") if k not in state]
    if verify_checksum and "checksum" not in state:
        missing.append("checksum")
    if missing:
        raise CheckpointError(f"{owner}: {where} lacks the entries {missing}; it is corrupt")
    if verify_checksum and state["checksum"] != _state_digest(state):
        raise CheckpointError(
            f"{owner}: {where} is corrupt or truncated: its content does not match the "
            "checksum written with it (the file was damaged after it was saved)"
        )
    mine, theirs = trainer.config(), state["config"]
    if mine != theirs:
        keys = list(mine) + [k for k in theirs if k not in mine]
        diff = {k: (theirs.get(k), mine.get(k)) for k in keys if theirs.get(k) != mine.get(k)}
        raise EngineConfigurationError(
            f"{owner}: the checkpoint {where} was written by a differently configured trainer; "
            f"(checkpoint, this trainer) differ in {diff}"
        )
    fp_mine, fp_theirs = fingerprint(trainer), state["fingerprint"]
    problem_diff = _differences(fp_theirs.get("problem"), fp_mine["problem"])
    if problem_diff:
        raise EngineConfigurationError(
            f"{owner}: the checkpoint {where} belongs to another problem; it differs in:\n  "
            + "\n  ".join(problem_diff)
        )
    s_theirs, s_mine = fp_theirs.get("settings", {}), fp_mine["settings"]
    class_diff = _differences(
        [o.get("class") for o in s_theirs.get("primal_optimizer", [])],
        [o.get("class") for o in s_mine["primal_optimizer"]],
        "primal_optimizer.class",
    )
    if class_diff:
        raise EngineConfigurationError(
            f"{owner}: the checkpoint {where} was written with another primal optimiser, whose "
            "state this trainer's optimiser cannot use: " + "; ".join(class_diff)
        )
    settings_diff = _differences(s_theirs, s_mine)
    if settings_diff and not override_settings:
        raise EngineConfigurationError(
            f"{owner}: the checkpoint {where} was written with other trainer settings:\n  "
            + "\n  ".join(settings_diff)
            + "\nBuild the trainer with the checkpoint's settings, or pass "
            "override_settings=True to resume with this trainer's settings"
        )
    own = trainer.module.state_dict()
    _check_module_state(state["model"], own, "model", where, owner)
    if trainer.average is not None:
        avg = state.get("average")
        if not isinstance(avg, dict) or "model" not in avg or "updates" not in avg:
            raise CheckpointError(
                f"{owner}: {where} lacks the weight average (entry 'average') of a trainer "
                "with ema_decay; it is corrupt"
            )
        _check_module_state(avg["model"], own, "weight-average", where, owner)
    _check_finite_tensors(state["optimizer"], "optimiser states", owner)
    mult = state["cmp"].get("multipliers", {}) if isinstance(state["cmp"], dict) else {}
    _check_finite_tensors(mult, "multipliers", owner)
    for sub in mult.values():
        lam = sub.get("weight") if isinstance(sub, dict) else None
        if lam is None:
            continue
        if tuple(lam.reshape(-1).shape) != (trainer.problem.m,):
            raise EngineConfigurationError(
                f"{owner}: the checkpoint {where} holds {lam.numel()} multipliers; this "
                f"problem has m={trainer.problem.m}"
            )
        if not trainer.projection.contains(lam):
            raise CheckpointError(
                f"{owner}: the checkpoint's multipliers {lam.tolist()} lie outside this "
                f"trainer's dual domain ({trainer.projection!r}); refusing to load them"
            )


def _check_module_state(
    theirs: Any, own: dict[str, torch.Tensor], what: str, where: str, owner: str
) -> None:
    """Refuse a module state of other parameter names or shapes, or with NaN/inf."""
    if not isinstance(theirs, dict) or set(theirs) != set(own):
        got_keys = sorted(theirs) if isinstance(theirs, dict) else theirs
        raise EngineConfigurationError(
            f"{owner}: the checkpoint {where} holds {what} parameters {got_keys} but this "
            f"trainer's model has {sorted(own)}"
        )
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in theirs.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if shapes:
        raise EngineConfigurationError(
            f"{owner}: the checkpoint {where} has {what} parameters of other shapes: "
            + "; ".join(shapes)
        )
    _check_finite_tensors(theirs, f"{what} weights", owner)


def _apply(trainer: PrimalDualTrainer, state: dict[str, Any]) -> None:
    trainer.module.load_state_dict(state["model"])
    if trainer.average is not None:
        trainer.average.load_state_dict(state["average"])
    trainer.constrained_optimizer.load_state_dict(state["optimizer"])
    trainer.cmp.load_state_dict(state["cmp"])
    trainer.cmp.last_estimate = _estimate_from(state["last_estimate"])
    trainer.dual_rule.load_state_dict(state["dual_rule"])
    trainer._step = int(state["step"])
    skips = state.get("skips", {})
    trainer._consecutive_skips = int(skips.get("consecutive", 0))
    trainer._estimate_failing = bool(skips.get("estimate_failing", False))
    trainer.history = TrainingHistory.from_dict(state["history"])
    key = state["ess"]["key"]
    trainer._ess_key = None if key is None else tuple(key)
    trainer._ess_low = bool(state["ess"]["low"])
    _set_rng_state(trainer, state["rng"])


def _apply_settings(trainer: PrimalDualTrainer) -> None:
    """Write the trainer's step sizes into the restored optimisers."""
    copt = trainer.constrained_optimizer
    for opts, lr in ((copt.primal_optimizers, trainer.primal_lr),
                     (copt.dual_optimizers, trainer.dual_lr)):
        for opt in opts or []:
            for g in opt.param_groups:
                g["lr"] = lr


def load_trainer_state(
    trainer: PrimalDualTrainer,
    state: dict[str, Any],
    *,
    override_settings: bool = False,
    where: str = "state",
    verify_checksum: bool = False,
) -> None:
    """Restore a :func:`trainer_state` dictionary into ``trainer``, all or nothing.

    Parameters
    ----------
    trainer
        The trainer to restore into.
    state
        A dictionary from :func:`trainer_state` (or read from a checkpoint file).
    override_settings
        Resume with this trainer's settings (step sizes, batch size, ...) where they differ
        from the checkpoint's; the trainer's step sizes are written into the restored
        optimisers. The problem and the primal optimiser class must still agree.
    where
        How the state is named in error messages.
    verify_checksum
        Check the SHA-256 content checksum written by :func:`trainer_state` (done for files
        by :func:`load_checkpoint`; off for in-memory states, which users may edit).

    Raises
    ------
    EngineConfigurationError
        The state is not an engine checkpoint, or belongs to another problem, configuration,
        settings (without ``override_settings``), primal optimiser or model.
    CheckpointError
        The state holds NaN/inf weights, optimiser states or multipliers, multipliers outside
        the dual domain, or lacks entries.
    """
    _validate(trainer, state, where, override_settings, verify_checksum)
    backup = trainer_state(trainer)
    try:
        _apply(trainer, state)
        if override_settings:
            _apply_settings(trainer)
    except Exception as exc:
        _apply(trainer, backup)
        raise CheckpointError(
            f"PrimalDualTrainer.load_checkpoint: restoring {where} failed "
            f"({type(exc).__name__}: {exc}); the trainer's previous state was kept"
        ) from exc


def load_checkpoint(
    trainer: PrimalDualTrainer, path: str | PathLike[str], *, override_settings: bool = False
) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``trainer``, all or nothing.

    Raises
    ------
    CheckpointError
        If the file is missing, empty, truncated or corrupt, or holds NaN/inf values or
        multipliers outside the dual domain.
    EngineConfigurationError
        If the file is not an engine checkpoint or was written by a trainer with another
        problem (kind, levels, distributions or models), configuration (primal form,
        formulation, optimisers) or settings (see ``override_settings`` in
        :func:`load_trainer_state`).
    """
    state = _load(path)
    load_trainer_state(trainer, state, override_settings=override_settings,
                       where=repr(str(path)), verify_checksum=True)
