r"""When an estimate becomes a dual step: the engine's dual-update rules.

The trainer estimates the constraint values every ``estimate_every`` primal steps. A dual
step ascends the dual function along :math:`b - C(\theta)`, which is its (Danskin) gradient
only when :math:`\theta` is the Lagrangian minimiser for the current :math:`\lambda`. Right
after a change of :math:`\lambda` the model is still moving, and a dual step on the transient
value :math:`C(\theta_k)` overshoots: the multiplier keeps growing while the model catches up.

Two rules decide which estimates drive a dual step:

* :class:`EveryEstimate` (``"every"``) — every estimate (plain simultaneous / alternating
  gradient descent-ascent with ``estimate_every`` primal steps per dual step).
* :class:`SettledPrimal` (``"settled"``) — an *inexact dual ascent* rule. The dual gradient
  :math:`\hat g_k = b - C(\theta_k)` has error :math:`e_k = C(\theta^\star(\lambda)) -
  C(\theta_k)`; gradient ascent with a relative error :math:`\|e_k\| \le \kappa\|\hat g_k\|`,
  :math:`\kappa<1`, still ascends (and converges linearly with a step below :math:`1/L`). The
  rule estimates the remaining drift :math:`\|e_k\|` from the estimates made since the last
  dual step: with changes :math:`\Delta_k = C_k - C_{k-1}` and ratio
  :math:`r_k = \|\Delta_k\|/\|\Delta_{k-1}\|`, a linearly converging sequence has
  :math:`\|e_k\| \approx \frac{r_k}{1-r_k}\|\Delta_k\|` (Aitken's extrapolation). It takes the
  dual step when

  .. math::
      r_k < 1 \ \text{and}\ \frac{r_k}{1-r_k}\,\|\Delta_k\|_2 \;\le\; \kappa\,\|b - C_k\|_2
      \qquad\text{or}\qquad \|\Delta_k\|_2 \;\le\; z\,\|s_k\|_2,\quad
      s_{k,i} = \sqrt{\mathrm{se}_{k,i}^2 + \mathrm{se}_{k-1,i}^2},

  i.e. when the model is decelerating and its projected remaining drift is small relative to
  the distance to the level, or when the last change is within ``z`` standard errors of the
  estimator's noise (a noisy estimator cannot resolve further settling). A model moving at
  constant speed (Adam's normalised steps: :math:`r_k \approx 1`) is not settled however small
  each change is relative to the gap. The ratio needs two changes at the current
  multipliers, so at least two estimates follow each dual step. The first estimate of a run
  always steps (the starting model is taken as the response to the initial multipliers: true
  for the pretrained model at :math:`\lambda = 0`), and a dual step is forced after
  ``max_wait`` estimates without one.

Both rules are small stateful objects with ``state_dict`` / ``load_state_dict`` so that
checkpoints resume bit-for-bit, and ``snapshot`` / ``restore`` for the NaN guard.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch

from .constraints import ConstraintEstimate
from .options import resolve

__all__ = [
    "DUAL_UPDATES",
    "DualUpdateName",
    "DualUpdateRule",
    "EveryEstimate",
    "FrozenMultipliers",
    "RuleSnapshot",
    "SettledPrimal",
    "make_dual_update_rule",
]

DualUpdateName = Literal["every", "settled", "frozen"]
"""Dual-update rules: :class:`EveryEstimate`, :class:`SettledPrimal` and
:class:`FrozenMultipliers`."""
DUAL_UPDATES: tuple[str, ...] = get_args(DualUpdateName)
RuleSnapshot = tuple[ConstraintEstimate | None, float | None, int, str | None]
"""In-memory state of a rule: (previous estimate, last change, estimates waited, last reason)."""


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.detach().to(torch.float64).cpu()))


class DualUpdateRule:
    r"""Base class: decides, for each new constraint estimate, whether the dual steps on it.

    Subclasses implement :meth:`_decide`; :meth:`accept` records the estimate and returns the
    decision.

    Attributes
    ----------
    previous
        The previous estimate (``None`` before the first).
    last_change
        :math:`\|C_{k-1} - C_{k-2}\|_2` when both estimates were made at the current
        multipliers, else ``None`` (right after a dual step).
    waited
        Consecutive estimates without a dual step.
    last_reason
        The reason of the latest decision.
    """

    name = "base"

    def __init__(self) -> None:
        self.previous: ConstraintEstimate | None = None
        self.last_change: float | None = None
        self.waited = 0
        self.last_reason: str | None = None

    def decide(self, estimate: ConstraintEstimate) -> tuple[bool, str]:
        """``(step?, reason)`` for ``estimate`` given the recorded state (not updated)."""
        return self._decide(estimate, self.change(estimate))

    def _decide(self, estimate: ConstraintEstimate, change: float | None) -> tuple[bool, str]:
        """:meth:`decide` given ``change`` = :meth:`change` of ``estimate``."""
        raise NotImplementedError

    def change(self, estimate: ConstraintEstimate) -> float | None:
        r""":math:`\|C_k - C_{k-1}\|_2` from the previous estimate (``None`` for the first)."""
        if self.previous is None:
            return None
        prev = self.previous.constraints.to(torch.float64).cpu()
        return _norm(estimate.constraints.detach().to(torch.float64).cpu() - prev)

    def accept(self, estimate: ConstraintEstimate) -> bool:
        """Whether the dual steps on ``estimate``; records it as the previous estimate."""
        change = self.change(estimate)
        step, reason = self._decide(estimate, change)
        self.last_change = None if step else change
        self.previous = estimate
        self.waited = 0 if step else self.waited + 1
        self.last_reason = reason
        return step

    # ------------------------------------------------------------------ state
    def snapshot(self) -> RuleSnapshot:
        """In-memory state (restored by :meth:`restore` when a step is skipped)."""
        return (self.previous, self.last_change, self.waited, self.last_reason)

    def restore(self, state: RuleSnapshot) -> None:
        """Undo the :meth:`accept` calls made since :meth:`snapshot`."""
        self.previous, self.last_change, self.waited, self.last_reason = state

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (for ``torch.load(weights_only=True)``)."""
        prev = self.previous
        return {
            "name": self.name,
            "waited": self.waited,
            "last_change": self.last_change,
            "last_reason": self.last_reason,
            "previous": None
            if prev is None
            else {
                "constraints": prev.constraints.detach().cpu(),
                "constraint_stderr": prev.constraint_stderr.detach().cpu(),
                "violations": prev.violations.detach().cpu(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.waited = int(state["waited"])
        self.last_change = state["last_change"]
        self.last_reason = state["last_reason"]
        prev = state["previous"]
        self.previous = None if prev is None else ConstraintEstimate(**prev)

    def config(self) -> dict[str, Any]:
        """The rule's settings (part of the trainer's checkpoint configuration)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class EveryEstimate(DualUpdateRule):
    """Every estimate drives a dual step (``dual_update="every"``)."""

    name = "every"

    def _decide(self, estimate: ConstraintEstimate, change: float | None) -> tuple[bool, str]:
        """Always ``(True, "every")``."""
        return True, "every"


class FrozenMultipliers(DualUpdateRule):
    r"""No estimate drives a dual step (``dual_update="frozen"``): :math:`\lambda` stays fixed.

    A fixed-weight baseline (ESD, SISS, NegGrad with a hand-set weight) is the primal-dual
    trainer with this rule: the same primal step, the same batches and the same recorded
    estimates, with the multipliers held at ``init_multipliers``
    (:class:`~dualdiff.FixedWeightTrainer`).
    """

    name = "frozen"

    def _decide(self, estimate: ConstraintEstimate, change: float | None) -> tuple[bool, str]:
        """Always ``(False, "frozen")``."""
        return False, "frozen"


class SettledPrimal(DualUpdateRule):
    r"""Dual step only once the model has settled at the current multipliers.

    See the module docstring for the criterion.

    Parameters
    ----------
    kappa
        Relative-error tolerance :math:`\kappa \in (0, 1)`: step when the projected remaining
        drift of the constraint values is at most ``kappa`` times the distance to the level.
    noise_z
        Step when the last change is within ``noise_z`` combined standard errors (``>= 0``;
        0 turns the noise test off).
    max_wait
        Force a dual step after this many consecutive estimates without one (``>= 1``).
    """

    name = "settled"

    def __init__(self, kappa: float = 0.25, noise_z: float = 2.0, max_wait: int = 8) -> None:
        super().__init__()
        owner = "SettledPrimal"
        if not isinstance(kappa, int | float) or not 0.0 < float(kappa) < 1.0:
            raise ValueError(f"{owner}: parameter 'kappa' must be in (0, 1), got {kappa!r}")
        if not isinstance(noise_z, int | float) or not (
            math.isfinite(float(noise_z)) and float(noise_z) >= 0.0
        ):
            raise ValueError(
                f"{owner}: parameter 'noise_z' must be a finite number >= 0, got {noise_z!r}"
            )
        if not isinstance(max_wait, int) or isinstance(max_wait, bool) or max_wait < 1:
            raise ValueError(f"{owner}: parameter 'max_wait' must be an int >= 1, got {max_wait!r}")
        self.kappa = float(kappa)
        self.noise_z = float(noise_z)
        self.max_wait = max_wait

    def remaining_drift(self, estimate: ConstraintEstimate) -> float:
        r"""Aitken projection :math:`\frac{r}{1-r}\|\Delta_k\|` (``inf`` if not decelerating)."""
        return self._projected_drift(self.change(estimate))

    def _projected_drift(self, change: float | None) -> float:
        if change is None or self.last_change is None:
            return math.inf
        if change == 0.0:
            return 0.0
        if self.last_change == 0.0:
            return math.inf
        r = change / self.last_change
        return math.inf if r >= 1.0 else change * r / (1.0 - r)

    def _decide(self, estimate: ConstraintEstimate, change: float | None) -> tuple[bool, str]:
        """``(step?, reason)``.

        Reasons: ``"first"``, ``"settled"``, ``"noise"``, ``"max_wait"`` (step) or ``"moving"``.
        """
        prev = self.previous
        if prev is None or change is None:
            return True, "first"
        gap = _norm(estimate.violations)
        if self._projected_drift(change) <= self.kappa * gap:
            return True, "settled"
        se = estimate.constraint_stderr.detach().to(torch.float64).cpu()
        noise = _norm(torch.sqrt(se**2 + prev.constraint_stderr.to(torch.float64).cpu() ** 2))
        if self.noise_z > 0 and change <= self.noise_z * noise:
            return True, "noise"
        if self.waited + 1 >= self.max_wait:
            return True, "max_wait"
        return False, "moving"

    def config(self) -> dict[str, Any]:
        """Name and settings."""
        return {
            "name": self.name,
            "kappa": self.kappa,
            "noise_z": self.noise_z,
            "max_wait": self.max_wait,
        }


def make_dual_update_rule(value: Any, owner: str = "PrimalDualTrainer") -> DualUpdateRule:
    """A :class:`DualUpdateRule` from a name (``"every"``, ``"settled"``) or an instance.

    A fresh instance is returned for names; an instance is used as given.
    """
    if isinstance(value, DualUpdateRule):
        return value
    name = resolve(value, "dual_update", owner, DUAL_UPDATES)
    rules: dict[str, type[DualUpdateRule]] = {
        "every": EveryEstimate, "settled": SettledPrimal, "frozen": FrozenMultipliers,
    }
    return rules[name]()
