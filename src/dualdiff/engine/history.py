"""Training history of the primal-dual engine (JSON-serialisable)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any

from .._io import atomic_write_text

__all__ = ["StepRecord", "TrainingHistory"]


@dataclass
class StepRecord:
    r"""What happened in one step.

    Attributes
    ----------
    step
        Step index (0-based).
    loss
        Primal loss (``None`` if the step was skipped).
    multipliers
        :math:`\lambda` after the step, length ``m``.
    primal_multipliers
        Multipliers the primal target was built with (differs from ``multipliers`` for the
        augmented Lagrangian's look-ahead and after a dual step).
    ess
        Batch effective sample size of the weights (reweighted DSM), else ``None``.
    grad_norm
        Global gradient norm before clipping (``None`` if not computed).
    estimate
        :meth:`~dualdiff.engine.ConstraintEstimate.to_dict` of the step's estimate, if any.
    skipped
        Reason the step was skipped, or ``None``.
    dual_step
        Whether the step's estimate drove a dual step (``None``: no estimate this step).
    dual_reason
        The dual-update rule's reason (:mod:`dualdiff.engine.dual_update`: ``"every"``,
        ``"first"``, ``"settled"``, ``"noise"``, ``"max_wait"``; ``"moving"`` when it declined).
    stats
        Other diagnostics of the primal form.
    """

    step: int
    loss: float | None = None
    multipliers: list[float] = field(default_factory=list)
    primal_multipliers: list[float] | None = None
    ess: float | None = None
    grad_norm: float | None = None
    estimate: dict[str, Any] | None = None
    skipped: str | None = None
    dual_step: bool | None = None
    dual_reason: str | None = None
    stats: dict[str, float] = field(default_factory=dict)


def _clean(value: Any) -> Any:
    """Replace non-finite floats by ``None`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


@dataclass
class TrainingHistory:
    r"""Everything the trainer records.

    Attributes
    ----------
    records
        One :class:`StepRecord` per step taken (skipped steps included).
    population_ess
        ``{"step", "multipliers", "value"}`` each time a new reweighting target was built
        (reweighted DSM): the population effective sample size :math:`1/E_{p_0}[w_\lambda^2]`.
    warnings
        Messages of the warnings issued.
    """

    records: list[StepRecord] = field(default_factory=list)
    population_ess: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ views
    @property
    def steps(self) -> list[int]:
        """Step indices."""
        return [r.step for r in self.records]

    @property
    def losses(self) -> list[float | None]:
        """Primal loss per step (``None`` for skipped steps)."""
        return [r.loss for r in self.records]

    @property
    def multipliers(self) -> list[list[float]]:
        """Multipliers after each step, ``(steps, m)`` as nested lists."""
        return [r.multipliers for r in self.records]

    @property
    def ess(self) -> list[float | None]:
        """Batch effective sample size per step."""
        return [r.ess for r in self.records]

    @property
    def estimates(self) -> list[dict[str, Any]]:
        """Every estimate with its step and multipliers, ``{"step", "multipliers", **estimate}``."""
        return [
            {"step": r.step, "multipliers": r.multipliers, **r.estimate}
            for r in self.records
            if r.estimate is not None
        ]

    @property
    def dual_steps(self) -> list[int]:
        """Steps whose estimate drove a dual step."""
        return [r.step for r in self.records if r.dual_step]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """``{"step", "reason"}`` of every skipped step."""
        return [{"step": r.step, "reason": r.skipped} for r in self.records if r.skipped]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (non-finite floats become ``None``)."""
        return _clean(
            {
                "records": [asdict(r) for r in self.records],
                "population_ess": self.population_ess,
                "warnings": self.warnings,
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingHistory:
        """Inverse of :meth:`to_dict`."""
        return cls(
            records=[StepRecord(**r) for r in data.get("records", [])],
            population_ess=list(data.get("population_ess", [])),
            warnings=list(data.get("warnings", [])),
        )

    def to_json(self, path: str | PathLike[str] | None = None, **kwargs: Any) -> str:
        """Strict JSON text of :meth:`to_dict`; also written to ``path`` when given.

        The file is written atomically (temporary file in the same folder, ``fsync``, rename:
        :func:`dualdiff._io.atomic_write_text`), so an interrupted write keeps the previous
        file. Non-finite floats are written as ``null``.
        """
        text = json.dumps(self.to_dict(), allow_nan=False, **kwargs)
        if path is not None:
            atomic_write_text(path, text)
        return text
