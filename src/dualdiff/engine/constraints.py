r"""Model-based estimates of the objective and constraint values that drive the dual step.

For the current model :math:`p_\theta` (the dual step of
:ref:`the primal–dual algorithm <primal-dual>`):

* RU: :math:`C_i = \mathrm{KL}(p_\theta\|q_i) = E_{p_\theta}[\log p_\theta - \log q_i]`,
  objective :math:`\mathrm{KL}(p_\theta\|p_0)`;
* FU: :math:`C_i = \mathrm{KL}(q_i\|p_\theta) = E_{q_i}[\log q_i - \log p_\theta]`,
  objective :math:`\mathrm{KL}(p_0\|p_\theta)`;
* LU: :math:`C_i = E_{p_\theta}[\ell_i]`, objective :math:`\mathrm{KL}(p_\theta\|p_0)`.

Violations in Cooper's convention (:math:`g \le 0` is feasible) are :math:`b_i - C_i` (KL
problems) and :math:`C_i - \tau_i` (LU), i.e. exactly the Danskin gradient of the dual.

Two methods:

* ``"exact"`` — the model has an analytic normalised ``log_prob`` (a
  :class:`~dualdiff.GaussianMixture`, :class:`TrainableGaussianMixture`, a closed-form
  target): the functionals are integrated with the problem's own rule
  (grid quadrature or fixed Monte Carlo points), error bars from the rule.
* ``"ode"`` — any score model: samples from the model's probability-flow ODE sampler
  (:func:`~dualdiff.sampling.sample_ode`), model log-densities from
  :func:`~dualdiff.estimators.ode_log_likelihood`, Monte Carlo standard errors. The ODE model
  is the density at ``t_min`` (see that function's notes); ``q_i``, ``p0`` and ``l_i`` are
  evaluated at the clean level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from .._errors import NonFiniteError
from ..estimators import ode_log_likelihood
from ..sampling import prior_sample, sample_ode
from .options import resolve

__all__ = ["ConstraintEstimate", "ConstraintEstimator", "EstimatorMethod", "violations_from"]

EstimatorMethod = Literal["auto", "exact", "ode"]
_METHODS: tuple[str, ...] = get_args(EstimatorMethod)
_DTYPE = torch.float64


def violations_from(problem: Any, constraints: torch.Tensor) -> torch.Tensor:
    r"""Cooper violations from constraint values ``(m,)``.

    :math:`b - C` for RU and FU, :math:`C-\tau` for LU (feasible when ``<= 0``).
    """
    c = constraints.to(_DTYPE)
    if problem.kind == "LU":
        return c - problem.bounds.to(c.device)
    return problem.bounds.to(c.device) - c


@dataclass
class ConstraintEstimate:
    r"""Objective and constraint estimates of one model, with standard errors.

    Attributes
    ----------
    constraints
        :math:`C_i(p_\theta)`, shape ``(m,)`` (float64).
    constraint_stderr
        Their standard errors (quadrature error bars for ``"exact"``), shape ``(m,)``.
    violations
        Cooper violations (:func:`violations_from`), shape ``(m,)``.
    objective
        Objective estimate, or ``None`` if not computed.
    objective_stderr
        Its standard error, or ``None``.
    method
        ``"exact"``, ``"ode"`` or ``"custom"``.
    n
        Number of Monte Carlo samples per quantity (0 for ``"exact"``).
    extras
        Free-form diagnostics (e.g. ODE function evaluations).
    """

    constraints: torch.Tensor
    constraint_stderr: torch.Tensor
    violations: torch.Tensor
    objective: float | None = None
    objective_stderr: float | None = None
    method: str = "custom"
    n: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    def is_finite(self) -> bool:
        """Whether the constraint values (and the objective, if any) are finite."""
        ok = bool(torch.isfinite(self.constraints).all())
        if self.objective is not None:
            ok = ok and math.isfinite(self.objective)
        return ok

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "constraints": self.constraints.tolist(),
            "constraint_stderr": self.constraint_stderr.tolist(),
            "violations": self.violations.tolist(),
            "objective": self.objective,
            "objective_stderr": self.objective_stderr,
            "method": self.method,
            "n": self.n,
        }


def _mean_se(terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error along the last axis."""
    n = terms.shape[-1]
    mean = terms.mean(-1)
    se = terms.std(-1, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(mean, math.inf)
    return mean, se


class ConstraintEstimator:
    r"""Estimate objective and constraint values of a model for an unlearning problem.

    Parameters
    ----------
    problem
        The :class:`~dualdiff.UnlearningProblem`.
    method
        ``"auto"`` (``"exact"`` when the model has ``log_prob``, else ``"ode"``), ``"exact"``
        or ``"ode"``.
    n_samples
        Monte Carlo sample size of the ``"ode"`` method.
    estimate_objective
        Also estimate the objective (costs one more ODE likelihood pass for FU and LU).
    ode_kwargs
        Extra keyword arguments of :func:`~dualdiff.estimators.ode_log_likelihood` (e.g.
        ``rtol``, ``atol``, ``divergence``).
    sampler_kwargs
        Extra keyword arguments of :func:`~dualdiff.sampling.sample_ode` (e.g. ``method``,
        ``steps``).

    Notes
    -----
    ``__call__(model, generator)`` returns a :class:`ConstraintEstimate`. A user may pass any
    callable with that signature to the trainer instead (returning a
    :class:`ConstraintEstimate` or a tensor of constraint values ``(m,)``).
    """

    def __init__(
        self,
        problem: Any,
        *,
        method: EstimatorMethod = "auto",
        n_samples: int = 256,
        estimate_objective: bool = True,
        ode_kwargs: dict[str, Any] | None = None,
        sampler_kwargs: dict[str, Any] | None = None,
    ) -> None:
        owner = "ConstraintEstimator"
        self.method = resolve(method, "method", owner, _METHODS)
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 2:
            raise ValueError(
                f"{owner}: parameter 'n_samples' must be an int >= 2, got {n_samples!r}"
            )
        self.problem = problem
        self.n_samples = n_samples
        self.estimate_objective = bool(estimate_objective)
        self.ode_kwargs = dict(ode_kwargs or {})
        self.sampler_kwargs = dict(sampler_kwargs or {})

    def __repr__(self) -> str:
        return (
            f"ConstraintEstimator(kind={self.problem.kind}, method={self.method!r}, "
            f"n_samples={self.n_samples})"
        )

    def resolved_method(self, model: Any) -> str:
        """The method used for ``model`` (``"auto"`` resolved)."""
        if self.method != "auto":
            return self.method
        return "exact" if callable(getattr(model, "log_prob", None)) else "ode"

    def __call__(self, model: Any, generator: torch.Generator | None = None) -> ConstraintEstimate:
        """Estimate for ``model``; see the module docstring for the formulas."""
        method = self.resolved_method(model)
        if method == "exact":
            if not callable(getattr(model, "log_prob", None)):
                raise TypeError(
                    "ConstraintEstimator: method='exact' needs a model with an analytic "
                    f"log_prob(x), got {type(model).__name__}; use method='ode'"
                )
            return self._exact(model)
        return self._ode(model, generator)

    # ------------------------------------------------------------------ exact
    def _exact(self, model: Any) -> ConstraintEstimate:
        prob = self.problem
        x = prob.rule.points
        dtype = _model_dtype(model) or _DTYPE
        with torch.no_grad():
            lp = model.log_prob(x.to(dtype=dtype, device=_model_device(model))).to(
                device=x.device, dtype=_DTYPE
            )
        if lp.shape != (x.shape[0],) or bool(torch.isnan(lp).any()):
            raise NonFiniteError(
                "ConstraintEstimator: model.log_prob returned NaN or a wrong shape on the "
                "integration points"
            )
        f, fe, c, ce = prob._objective_and_constraints(lp)
        return ConstraintEstimate(
            constraints=c.detach().clone(),
            constraint_stderr=ce.detach().clone(),
            violations=violations_from(prob, c),
            objective=float(f),
            objective_stderr=float(fe),
            method="exact",
            n=0,
        )

    # ------------------------------------------------------------------ ODE / Monte Carlo
    def _model_samples(self, model: Any, generator: torch.Generator | None) -> torch.Tensor:
        prob = self.problem
        dtype = _model_dtype(model) or _DTYPE
        device = _model_device(model)
        sched = getattr(model, "schedule", None) or prob.pretrained.schedule
        x_init = prior_sample((self.n_samples, prob.dim), sched, generator=generator, dtype=dtype)
        x = sample_ode(
            model, None, schedule=sched, x_init=x_init.to(device), dtype=dtype, device=device,
            **self.sampler_kwargs,
        )
        assert isinstance(x, torch.Tensor)
        return x

    def _log_model(self, model: Any, x: torch.Tensor) -> torch.Tensor:
        dtype = _model_dtype(model) or _DTYPE
        out = ode_log_likelihood(
            model, x.to(dtype=dtype, device=_model_device(model)), **self.ode_kwargs
        )
        assert isinstance(out, torch.Tensor)
        return out.to(device="cpu", dtype=_DTYPE)

    def _ode(self, model: Any, generator: torch.Generator | None) -> ConstraintEstimate:
        prob = self.problem
        n = self.n_samples
        objective: tuple[torch.Tensor, torch.Tensor] | None = None
        if prob.kind in ("RU", "LU"):
            x = self._model_samples(model, generator).to(device="cpu", dtype=_DTYPE)
            need_lp = prob.kind == "RU" or self.estimate_objective
            lp = self._log_model(model, x) if need_lp else None
            if prob.kind == "RU":
                assert lp is not None
                lq = torch.stack([q.log_prob(x) for q in prob.unlearn])  # (m, n)
                c, ce = _mean_se(lp - lq)
            else:
                ell = torch.stack([pot.value(x).to(_DTYPE) for pot in prob.potentials])
                c, ce = _mean_se(ell)
            if self.estimate_objective and lp is not None:
                objective = _mean_se(lp - prob.pretrained.log_prob(x))
        else:  # FU: expectations under q_i and p0, which are sampled directly
            terms = []
            with torch.no_grad():
                for q in prob.unlearn:
                    xq = q.sample(n, generator=generator)
                    terms.append(q.log_prob(xq) - self._log_model(model, xq))
            c, ce = _mean_se(torch.stack(terms))
            if self.estimate_objective:
                x0 = prob.pretrained.sample(n, generator=generator)
                objective = _mean_se(prob.pretrained.log_prob(x0) - self._log_model(model, x0))
        return ConstraintEstimate(
            constraints=c,
            constraint_stderr=ce,
            violations=violations_from(prob, c),
            objective=None if objective is None else float(objective[0]),
            objective_stderr=None if objective is None else float(objective[1]),
            method="ode",
            n=n,
        )


def _model_dtype(model: Any) -> torch.dtype | None:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.dtype
    return getattr(model, "dtype", None)


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def as_estimate(problem: Any, value: Any) -> ConstraintEstimate:
    """Normalise a user estimator's return value (estimate or constraint tensor ``(m,)``)."""
    if isinstance(value, ConstraintEstimate):
        return value
    c = torch.as_tensor(value, dtype=_DTYPE).reshape(-1)
    if c.numel() != problem.m:
        raise ValueError(
            f"PrimalDualTrainer: the custom estimator must return a ConstraintEstimate or "
            f"{problem.m} constraint value(s), got {c.tolist()}"
        )
    return ConstraintEstimate(
        constraints=c,
        constraint_stderr=torch.zeros_like(c),
        violations=violations_from(problem, c),
        method="custom",
    )


EstimatorFn = Callable[[Any, "torch.Generator | None"], Any]
