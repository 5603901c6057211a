r"""The Cooper constrained minimisation problem assembled from (unlearning problem, model).

Design (see :ref:`the primal–dual algorithm <primal-dual>`):

* One Cooper :class:`~cooper.Constraint` named ``"unlearning"`` of type ``INEQUALITY`` holds
  all ``m`` constraints; its :class:`~dualdiff.engine.ProjectedMultiplier` keeps
  :math:`\lambda` in the problem's dual domain after every dual step.
* Cooper's violation convention is :math:`g(\theta)\le0`. The engine reports
  :math:`g_i = b_i - C_i(\theta)` for the KL problems (RU: :math:`C_i=\mathrm{KL}(p_\theta\|q_i)`,
  FU: :math:`C_i=\mathrm{KL}(q_i\|p_\theta)`) and :math:`g_i = C_i(\theta)-\tau_i` for LU
  (:math:`C_i = E_{p_\theta}[\ell_i]`). With the multiplier detached in the primal Lagrangian and
  the violation detached in the dual Lagrangian, a Cooper dual step with a ``maximize=True``
  optimiser is :math:`\lambda\leftarrow\Pi(\lambda+\eta\,\hat g)`, i.e. projected ascent on
  the dual function along its (Danskin) gradient :math:`b - C(p_\theta)`.
* The *dual* violation is always the model-based :class:`~dualdiff.engine.ConstraintEstimate`
  (exact or ODE based), passed as the constraint state's ``strict_violation`` (or
  ``violation`` when nothing else is needed). It is refreshed only on estimation steps
  (every ``estimate_every`` steps); on the other steps the constraint state has
  ``contributes_to_dual_update=False`` (Cooper's mechanism for less frequent dual updates),
  so the multipliers stay fixed while the primal takes several steps. A
  :class:`~dualdiff.engine.DualUpdateRule` (``dual_rule``) decides whether an estimate drives
  a dual step (``"every"``; ``"settled"``: only once the model has settled at the current
  multipliers, :mod:`dualdiff.engine.dual_update`); an estimate it declines is recorded but
  also has ``contributes_to_dual_update=False``.
* The *primal* gradient: for the reweighted and composed forms the multiplier enters the loss
  through the training target (weights / composed score), so the constraint state has
  ``contributes_to_primal_update=False`` and Cooper's primal Lagrangian is exactly the form's
  loss. For the sampler form the loss is the path KL and the form returns a violation
  differentiable in :math:`\theta`; the constraint contributes to the primal update and Cooper
  builds :math:`\mathrm{KL}_{\text{path}} + \lambda^\top g(\theta)` (or the augmented
  Lagrangian term).
* Augmented Lagrangian. Cooper's primal term
  :math:`\frac1{2\rho}(\max(0,\lambda+\rho g)^2-\lambda^2)` has gradient
  :math:`\max(0,\lambda+\rho g)\nabla g`: a Lagrangian step at the look-ahead multiplier
  :math:`\tilde\lambda=\Pi(\lambda+\rho g)`. Forms whose multiplier enters the target use that
  look-ahead multiplier (with the latest estimate of :math:`g`) to build the target;
  the sampler form gets Cooper's term directly.
* Alternating dual-primal: Cooper assembles the primal Lagrangian after the dual step. The
  CMP state therefore carries a closure that recomputes the form's loss at the updated
  multipliers when they changed (same batch and noise, so the primal step sees
  :math:`\lambda_{t+1}` as Cooper intends).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from cooper import CMPState, ConstrainedMinimizationProblem, Constraint, ConstraintState
from cooper.formulations import AugmentedLagrangian, Lagrangian
from cooper.penalty_coefficients import DensePenaltyCoefficient
from cooper.utils import ConstraintType

from .._constants import FLOAT64 as _DTYPE
from .._errors import NonFiniteError
from .._validation import check_positive
from ..problems.dual_domain import DualDomainProjection
from .constraints import ConstraintEstimate, as_estimate
from .dual_update import DualUpdateRule, EveryEstimate
from .options import FORMULATIONS, resolve
from .primal import PrimalBatch, PrimalForm
from .projected_multiplier import ProjectedMultiplier

__all__ = ["NonFiniteStep", "UnlearningCMP", "UnlearningCMPState"]



class NonFiniteStep(NonFiniteError):
    """A batch, loss, gradient or estimate is not finite (raised inside a Cooper roll).

    The trainer catches it, skips the step and restores the multipliers.
    """


@dataclass
class UnlearningCMPState(CMPState):
    """:class:`cooper.CMPState` that can recompute its loss at updated multipliers.

    Attributes
    ----------
    recompute_loss
        ``None``, or a closure returning the loss at the current primal multipliers (or
        ``None`` when they did not change since the loss was computed).
    """

    recompute_loss: Callable[[], torch.Tensor | None] | None = None

    def compute_primal_lagrangian(self) -> Any:
        """Recompute the loss first if the multipliers changed, then Cooper's primal Lagrangian."""
        if self.recompute_loss is not None:
            new = self.recompute_loss()
            if new is not None:
                self.loss = new
        return super().compute_primal_lagrangian()


class UnlearningCMP(ConstrainedMinimizationProblem):
    r"""Cooper CMP of an unlearning problem trained with one primal form.

    Parameters
    ----------
    problem
        :class:`~dualdiff.UnlearningProblem` (RU, FU or LU).
    model
        The trainable score model (``parameters()``).
    primal_form
        A :class:`~dualdiff.engine.PrimalForm`.
    estimator
        ``estimator(model, generator)`` returning a
        :class:`~dualdiff.engine.ConstraintEstimate` (or constraint values ``(m,)``).
    projection
        :class:`~dualdiff.engine.DualDomainProjection` of the problem.
    formulation
        ``"lagrangian"`` or ``"augmented_lagrangian"``.
    penalty
        Penalty coefficient :math:`\rho > 0` of the augmented Lagrangian.
    init_multipliers
        Initial :math:`\lambda` ``(m,)`` (default 0).
    device
        Device of the multipliers.
    dual_rule
        :class:`~dualdiff.engine.DualUpdateRule` deciding which estimates drive a dual step
        (default :class:`~dualdiff.engine.EveryEstimate`).
    """

    def __init__(
        self,
        problem: Any,
        model: Any,
        primal_form: PrimalForm,
        estimator: Callable[..., Any],
        projection: DualDomainProjection,
        *,
        formulation: str = "lagrangian",
        penalty: float = 1.0,
        init_multipliers: Any = None,
        device: torch.device | str | None = None,
        dual_rule: DualUpdateRule | None = None,
    ) -> None:
        super().__init__()
        formulation = resolve(formulation, "formulation", "UnlearningCMP", FORMULATIONS)
        self.problem = problem
        self.model = model
        #: The model the estimator is run on (``model``; the trainer's weight average with
        #: ``estimate_on="average"``).
        self.estimate_model: Any = model
        self.primal_form = primal_form
        self.estimator = estimator
        self.projection = projection
        self.formulation_name = formulation
        self.generator: torch.Generator | None = None
        #: Latest finite constraint estimate (drives the dual step and the AL look-ahead).
        self.last_estimate: ConstraintEstimate | None = None
        #: Decides which estimates drive a dual step.
        self.dual_rule: DualUpdateRule = EveryEstimate() if dual_rule is None else dual_rule
        self.begin_step()
        multiplier = ProjectedMultiplier(projection, init=init_multipliers, device=device)
        if formulation == "lagrangian":
            self.unlearning = Constraint(
                ConstraintType.INEQUALITY, formulation_type=Lagrangian, multiplier=multiplier
            )
            self.penalty = None
        else:
            rho = check_positive(penalty, "penalty", "UnlearningCMP")
            self.penalty = rho
            coefficient = DensePenaltyCoefficient(
                torch.full((problem.m,), rho, dtype=_DTYPE, device=multiplier.device)
            )
            self.unlearning = Constraint(
                ConstraintType.INEQUALITY,
                formulation_type=AugmentedLagrangian,
                multiplier=multiplier,
                penalty_coefficient=coefficient,
            )

    unlearning: Constraint

    def begin_step(self) -> None:
        """Clear the per-step records; call before each Cooper ``roll`` (the trainer does).

        The dual-update rule decides once per step: extragradient's two estimates in one
        ``roll`` share the first one's decision, until the next ``begin_step``.
        """
        #: Estimate made during the current step, if any (read by the trainer).
        self.step_estimate: ConstraintEstimate | None = None
        #: Diagnostics of the current step's primal loss.
        self.step_stats: dict[str, float] = {}
        #: Multipliers the current step's primal loss was computed with.
        self.step_primal_multipliers: torch.Tensor | None = None
        #: The rule's decision for the current step (``None`` until an estimate is made).
        self.step_dual: bool | None = None

    # ------------------------------------------------------------------ multipliers
    @property
    def multiplier(self) -> ProjectedMultiplier:
        """The constraint's :class:`~dualdiff.engine.ProjectedMultiplier`."""
        mult = self.unlearning.multiplier
        assert isinstance(mult, ProjectedMultiplier)
        return mult

    def multiplier_values(self) -> torch.Tensor:
        r"""Current :math:`\lambda` ``(m,)`` (float64, detached copy)."""
        return self.multiplier.weight.detach().clone()

    def primal_multipliers(self) -> torch.Tensor:
        r"""Multipliers the reweighted/composed targets are built with.

        :math:`\lambda` for the Lagrangian; the look-ahead :math:`\Pi(\lambda+\rho\hat g)` for
        the augmented Lagrangian (with the latest estimated violations :math:`\hat g`).
        """
        lam = self.multiplier_values()
        if self.penalty is None or self.last_estimate is None:
            return lam
        g = self.last_estimate.violations.to(lam.device)
        return self.projection(lam + self.penalty * g).to(lam.device)

    # ------------------------------------------------------------------ estimates
    def estimate(self) -> ConstraintEstimate:
        """Run the estimator on the model; raise :class:`NonFiniteStep` if not finite."""
        try:
            est = as_estimate(self.problem, self.estimator(self.estimate_model, self.generator))
        except NonFiniteError as exc:
            raise NonFiniteStep(f"non-finite constraint estimate ({exc})") from exc
        if not est.is_finite():
            raise NonFiniteStep(
                f"non-finite constraint estimate: constraints {est.constraints.tolist()}, "
                f"objective {est.objective}"
            )
        self.last_estimate = est
        self.step_estimate = est
        if self.step_dual is None:
            self.step_dual = self.dual_rule.accept(est)
        return est

    # ------------------------------------------------------------------ Cooper interface
    def _loss(self, batch: PrimalBatch, lam: torch.Tensor) -> Any:
        out = self.primal_form.primal_loss(self.model, batch, lam)
        if not bool(torch.isfinite(out.loss.detach()).all()):
            raise NonFiniteStep("non-finite primal loss")
        if out.violation is not None and not bool(torch.isfinite(out.violation.detach()).all()):
            raise NonFiniteStep("non-finite differentiable constraint estimate")
        return out

    def _constraint_state(
        self, violation: torch.Tensor | None, est: ConstraintEstimate | None
    ) -> ConstraintState | None:
        device = self.multiplier.device
        dual = None
        if est is not None and self.step_dual:
            dual = est.violations.to(device=device, dtype=_DTYPE)
        if violation is not None:
            return ConstraintState(
                violation=violation.to(device=device, dtype=_DTYPE),
                strict_violation=dual,
                contributes_to_primal_update=True,
                contributes_to_dual_update=dual is not None,
            )
        if dual is None:
            return None
        return ConstraintState(
            violation=dual, contributes_to_primal_update=False, contributes_to_dual_update=True
        )

    def _observed(self, cs: ConstraintState | None) -> dict[Constraint, ConstraintState]:
        return {} if cs is None else {self.unlearning: cs}

    def compute_cmp_state(self, batch: PrimalBatch, estimate: bool = False) -> UnlearningCMPState:
        """Primal loss on ``batch`` and (when ``estimate``) fresh constraint violations.

        Parameters
        ----------
        batch
            The step's :class:`~dualdiff.engine.PrimalBatch`.
        estimate
            Whether to run the estimator (an estimation step: the dual is updated).

        Returns
        -------
        UnlearningCMPState
            ``loss`` the primal loss; ``observed_constraints`` the unlearning constraint's
            state; ``misc`` with ``"stats"``, ``"estimate"`` and ``"primal_multipliers"``.
        """
        est = self.estimate() if estimate else None
        # Differentiable forms (sampler) get lambda through Cooper's Lagrangian term instead.
        differentiable = self.primal_form.differentiable_constraints
        lam = self.multiplier_values() if differentiable else self.primal_multipliers()
        out = self._loss(batch, lam)
        self.step_stats = dict(out.stats)
        self.step_primal_multipliers = lam

        def recompute() -> torch.Tensor | None:
            new_lam = self.primal_multipliers()
            if torch.equal(new_lam, lam):
                return None
            new = self._loss(batch, new_lam)
            self.step_stats = dict(new.stats)
            self.step_primal_multipliers = new_lam
            return new.loss

        return UnlearningCMPState(
            loss=out.loss,
            observed_constraints=self._observed(self._constraint_state(out.violation, est)),
            misc={"stats": out.stats, "estimate": est, "primal_multipliers": lam},
            recompute_loss=None if differentiable else recompute,
        )

    def compute_violations(self, estimate: bool = True) -> CMPState:
        """Constraint violations only; ``loss`` is ``None``.

        Used by Cooper's alternating primal-dual optimiser at the updated primal point.
        """
        est = self.estimate() if estimate else None
        cs = self._constraint_state(None, est)
        return CMPState(loss=None, observed_constraints=self._observed(cs), misc={"estimate": est})
