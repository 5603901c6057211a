r"""Monte Carlo estimates of the three problems' functionals for a model.

Shared by the closed-form and the model-level problems.

For the current model :math:`p_\theta`:

* RU: :math:`C_i = E_{p_\theta}[\log p_\theta - \log q_i]`, objective
  :math:`E_{p_\theta}[\log p_\theta - \log p_0]`;
* LU: :math:`C_i = E_{p_\theta}[\ell_i]`, objective as RU;
* FU: :math:`C_i = E_{q_i}[\log q_i - \log p_\theta]` (closed form), or at model level, where an
  empirical forget set has no density, :math:`E_{q_i}[\log p_0 - \log p_\theta] =
  \mathrm{KL}(q_i\|p_\theta) - \mathrm{KL}(q_i\|p_0)`; objective
  :math:`E_{p_0}[\log p_0 - \log p_\theta]`.

Samples and log-densities of the trained model come from a
:class:`~dualdiff.problems.contract.DensityEstimator`; ``log_ref`` evaluates the problem's own
distributions (exact for mixtures, ODE likelihoods of frozen networks at model level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .contract import ConstraintEstimate, DataSampler, DensityEstimator, UnlearningProblem, mean_se

__all__ = ["estimate_forward", "estimate_on_model_samples"]

LogRef = Callable[[Any, torch.Tensor], torch.Tensor]
"""``log_ref(dist, x) -> (n,)`` float64 log-density of one of the problem's distributions."""


def estimate_on_model_samples(
    problem: UnlearningProblem,
    model: Any,
    *,
    n_samples: int,
    generator: torch.Generator | None,
    density: DensityEstimator,
    terms: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    needs_model_log_prob: bool,
    log_p0: Callable[[torch.Tensor], torch.Tensor],
    estimate_objective: bool,
) -> ConstraintEstimate:
    r"""RU and LU: constraint terms ``terms(x, log p_theta(x))`` ``(m, n)`` at ``x ~ p_theta``.

    The objective is :math:`E_{p_\theta}[\log p_\theta - \log p_0]`.
    """
    x = density.sample(model, n_samples, problem.event_shape, generator)
    need_lp = needs_model_log_prob or estimate_objective
    lp = density.log_prob(model, x, generator) if need_lp else None
    c, ce = mean_se(terms(x, lp))
    objective = None
    if estimate_objective and lp is not None:
        o, oe = mean_se(lp - log_p0(x))
        objective = (float(o), float(oe))
    return problem.make_estimate(c, ce, objective, _label(density, model), n_samples)


def estimate_forward(
    problem: UnlearningProblem,
    model: Any,
    *,
    n_samples: int,
    generator: torch.Generator | None,
    density: DensityEstimator,
    forget: Sequence[DataSampler],
    log_forget_reference: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    retain: DataSampler,
    log_p0: Callable[[torch.Tensor], torch.Tensor],
    estimate_objective: bool,
) -> ConstraintEstimate:
    r"""FU: :math:`C_i = E_{q_i}[\log r_i - \log p_\theta]` on forget draws.

    ``log_forget_reference[i]`` is :math:`\log r_i` (:math:`q_i` itself, or :math:`p_0` at
    model level); objective
    :math:`E_{p_0}[\log p_0 - \log p_\theta]` on ``retain`` draws.
    """
    rows = []
    with torch.no_grad():
        for draw, log_r in zip(forget, log_forget_reference, strict=True):
            xq = draw(n_samples, generator).detach().to(device="cpu", dtype=torch.float64)
            rows.append(log_r(xq) - density.log_prob(model, xq, generator))
        c, ce = mean_se(torch.stack(rows))
        objective = None
        if estimate_objective:
            x0 = retain(n_samples, generator).detach().to(device="cpu", dtype=torch.float64)
            o, oe = mean_se(log_p0(x0) - density.log_prob(model, x0, generator))
            objective = (float(o), float(oe))
    return problem.make_estimate(c, ce, objective, _label(density, model), n_samples)


def _label(density: DensityEstimator, model: Any) -> str:
    if density.use_log_prob and callable(getattr(model, "log_prob", None)):
        return "monte_carlo"
    return density.likelihood
