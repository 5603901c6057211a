r"""Model-based estimates of the objective and constraint values that drive the dual step.

For the current model :math:`p_\theta` (the dual step of
:ref:`the primal–dual algorithm <primal-dual>`):

* RU: :math:`C_i = \mathrm{KL}(p_\theta\|q_i) = E_{p_\theta}[\log p_\theta - \log q_i]`,
  objective :math:`\mathrm{KL}(p_\theta\|p_0)`;
* FU: :math:`C_i = \mathrm{KL}(q_i\|p_\theta) = E_{q_i}[\log q_i - \log p_\theta]`,
  objective :math:`\mathrm{KL}(p_0\|p_\theta)`;
* LU: :math:`C_i = E_{p_\theta}[\ell_i]`, objective :math:`\mathrm{KL}(p_\theta\|p_0)`.

Violations in Cooper's convention (:math:`g \le 0` is feasible) are :math:`b_i - C_i` (KL
problems) and :math:`C_i - \tau_i` (LU), i.e. exactly the Danskin gradient of the dual; the
sign lives in the problem (:meth:`~dualdiff.problems.UnlearningProblem.violations`), and so
do the functionals (:meth:`~dualdiff.problems.UnlearningProblem.estimate_constraints`): this
module only chooses how the trained model is sampled and evaluated.

Two methods:

* ``"exact"`` — the model has an analytic normalised ``log_prob`` (a
  :class:`~dualdiff.GaussianMixture`, :class:`TrainableGaussianMixture`, a closed-form
  target): the functionals are integrated with the problem's own rule
  (grid quadrature or fixed Monte Carlo points), error bars from the rule.
* ``"ode"`` — any score model: samples from the model's probability-flow ODE sampler
  (:func:`~dualdiff.diffusion.sampling.sample_ode`), model log-densities from
  :func:`~dualdiff.diffusion.likelihood.ode_log_likelihood` (exact divergence up to 8 event entries,
  Hutchinson beyond), Monte Carlo standard errors. The ODE model is the density at ``t_min``
  (see that function's notes); ``q_i``, ``p0`` and ``l_i`` are evaluated by the problem
  (exactly for mixtures, by its own likelihood estimator for frozen networks).
* ``"elbo"`` — as ``"ode"`` but the model's log-density is its
  :func:`~dualdiff.diffusion.likelihood.elbo` (a lower bound; cheaper per sample).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch

from .._constants import FLOAT64 as _DTYPE
from ..problems.contract import ConstraintEstimate, DensityEstimator
from .options import resolve

__all__ = [
    "ESTIMATOR_METHODS",
    "ConstraintEstimate",
    "ConstraintEstimator",
    "EstimatorMethod",
    "violations_from",
]

EstimatorMethod = Literal["auto", "exact", "ode", "elbo"]
#: The estimator names ``ConstraintEstimator`` and ``PrimalDualTrainer(estimator=...)`` accept.
ESTIMATOR_METHODS: tuple[str, ...] = get_args(EstimatorMethod)


def violations_from(problem: Any, constraints: torch.Tensor) -> torch.Tensor:
    r"""Cooper violations from constraint values ``(m,)``: ``problem.violations(constraints)``.

    :math:`b - C` for RU and FU, :math:`C-\tau` for LU (feasible when ``<= 0``).
    """
    return problem.violations(constraints.to(_DTYPE))  # type: ignore[no-any-return]


class ConstraintEstimator:
    r"""Estimate objective and constraint values of a model for an unlearning problem.

    Parameters
    ----------
    problem
        The :class:`~dualdiff.UnlearningProblem`.
    method
        ``"auto"`` (``"exact"`` when the problem has a closed form and the model has
        ``log_prob``, else ``"ode"``), ``"exact"``, ``"ode"`` or ``"elbo"``.
    n_samples
        Monte Carlo sample size of the ``"ode"`` and ``"elbo"`` methods.
    estimate_objective
        Also estimate the objective (costs one more likelihood pass for FU and LU).
    ode_kwargs
        Extra keyword arguments of :func:`~dualdiff.diffusion.likelihood.ode_log_likelihood` (e.g.
        ``rtol``, ``atol``, ``divergence``).
    sampler_kwargs
        Extra keyword arguments of :func:`~dualdiff.diffusion.sampling.sample_ode` (e.g. ``method``,
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
        self.method = resolve(method, "method", owner, ESTIMATOR_METHODS)
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
            f"ConstraintEstimator(problem={type(self.problem).__name__}, "
            f"method={self.method!r}, n_samples={self.n_samples})"
        )

    def resolved_method(self, model: Any) -> str:
        """The method used for ``model`` (``"auto"`` resolved)."""
        if self.method != "auto":
            return self.method
        exact = self.problem.has_closed_form and callable(getattr(model, "log_prob", None))
        return "exact" if exact else "ode"

    def __call__(self, model: Any, generator: torch.Generator | None = None) -> ConstraintEstimate:
        """Estimate for ``model``; see the module docstring for the formulas."""
        method = self.resolved_method(model)
        if method == "exact":
            if not callable(getattr(model, "log_prob", None)):
                raise TypeError(
                    "ConstraintEstimator: method='exact' needs a model with an analytic "
                    f"log_prob(x), got {type(model).__name__}; use method='ode'"
                )
            return self.problem.exact_constraints(model)  # type: ignore[no-any-return]
        density = DensityEstimator(
            likelihood=method,
            ode_kwargs=self.ode_kwargs,
            sampler_kwargs=self.sampler_kwargs,
            use_log_prob=False,
        )
        return self.problem.estimate_constraints(  # type: ignore[no-any-return]
            model,
            n_samples=self.n_samples,
            generator=generator,
            density=density,
            estimate_objective=self.estimate_objective,
        )


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
