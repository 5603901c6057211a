r"""The problem contract the engine talks to: :class:`UnlearningProblem`.

One typed seam between problems and the primal-dual engine. A problem states

* what it is: :attr:`~UnlearningProblem.kind` (``"RU"``, ``"FU"``, ``"LU"``; for reports
  only), :attr:`~UnlearningProblem.m`, :attr:`~UnlearningProblem.bounds`,
  :attr:`~UnlearningProblem.event_shape`;
* the sign of its constraints: :meth:`~UnlearningProblem.violations` (Cooper's convention,
  :math:`\le 0` feasible: :math:`b - C` for the KL problems, :math:`C - \tau` for LU);
* its dual domain: :attr:`~UnlearningProblem.domain`, a
  :class:`~dualdiff.problems.DualDomain`;
* its capabilities: :attr:`~UnlearningProblem.has_closed_form` (problems stated with analytic
  densities also have ``solve_dual``, ``target``, ``certificate``; problems stated with models
  raise :class:`~dualdiff.ClosedFormUnavailableError` there and offer ``estimate_dual``);
* the hooks of the primal forms and the estimator: clean pretrained samples, forget samples,
  the frozen reference score, the reweighting :math:`\log w_\lambda`, the composed target
  score, the signed-loss coefficients, the sampler-Lagrangian constraint terms, the population
  effective sample size and :meth:`~UnlearningProblem.estimate_constraints`.

The engine never branches on ``kind`` and never reaches into a problem's densities.

Dtype policy
------------
Certificates, references, dual variables, dual estimates and constraint estimates are
float64 (``torch.float64``) on the CPU. Networks may train in float32 (later bf16): batches
are drawn in float64 and cast to the model's dtype and device at the call; model outputs are
cast back to float64 before they enter an estimate, a weight or a multiplier.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .._constants import FLOAT64 as _DTYPE
from .._errors import ClosedFormUnavailableError

if TYPE_CHECKING:
    from ..duality import Certificate, DualSolution
    from .dual_domain import DualDomain

__all__ = [
    "ConstraintEstimate",
    "DataSampler",
    "DensityEstimator",
    "UnlearningProblem",
    "mean_se",
]


DataSampler = Callable[[int, "torch.Generator | None"], torch.Tensor]
"""``sampler(n, generator) -> (n, *event)`` tensor of data points."""


def mean_se(terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error along the last axis (``inf`` error for one sample)."""
    n = terms.shape[-1]
    mean = terms.mean(-1)
    se = terms.std(-1, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(mean, math.inf)
    return mean, se


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
        Cooper violations (``problem.violations(constraints)``), shape ``(m,)``.
    objective
        Objective estimate, or ``None`` if not computed.
    objective_stderr
        Its standard error, or ``None``.
    method
        ``"exact"``, ``"ode"``, ``"elbo"`` or ``"custom"``.
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

    @classmethod
    def from_values(cls, problem: Any, values: Any) -> ConstraintEstimate:
        r"""The estimate whose constraints are sample means of per-sample values.

        The building block of a custom ``estimator`` for
        :class:`~dualdiff.PrimalDualTrainer` on models where the built-in ODE estimator is
        too slow (images on a CPU): draw samples, compute each constraint's per-sample term
        and pass it here, e.g. :math:`\ell_i(x_j)` on samples :math:`x_j` of the model for
        LU, a classifier's :math:`\log p(c) - \log p(c\mid x_j)` for RU (a lower bound of
        :math:`\mathrm{KL}(p_\theta\|q)`), or per-image NLL changes for FU.

        Parameters
        ----------
        problem
            The problem (its number of constraints ``m`` and its ``violations``).
        values
            Per-sample values, shape ``(n,)`` (one constraint) or ``(m, n)``, ``n >= 1``.
            Not checked for finiteness: a non-finite estimate reaches the trainer, which
            skips that dual step with a warning.

        Returns
        -------
        ConstraintEstimate
            ``constraints`` = the row means, ``constraint_stderr`` = the unbiased sample
            standard deviation over :math:`\sqrt n` (zero when ``n == 1``), ``violations``
            from the problem, ``method="custom"``, ``n``.
        """
        m = int(problem.m)
        v = torch.as_tensor(values).detach().to(device="cpu", dtype=_DTYPE)
        given = tuple(v.shape)
        if v.ndim == 1 and m == 1:
            v = v.reshape(1, -1)
        if v.ndim != 2 or v.shape[0] != m or v.shape[1] < 1:
            raise ValueError(
                f"ConstraintEstimate.from_values: parameter 'values' must have shape (n,) "
                f"(one constraint) or ({m}, n) with n >= 1 for this problem's {m} "
                f"constraint(s), got shape {given}"
            )
        n = int(v.shape[1])
        mean = v.mean(dim=1)
        se = (v.std(dim=1, unbiased=True) / math.sqrt(n) if n > 1
              else torch.zeros(m, dtype=_DTYPE))
        return cls(constraints=mean, constraint_stderr=se,
                   violations=problem.violations(mean), method="custom", n=n)

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


def _first_param(model: Any) -> torch.Tensor | None:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p  # type: ignore[no-any-return]
    return None


def model_dtype(model: Any) -> torch.dtype:
    """Dtype of a model's first parameter, its ``dtype`` attribute, or float64."""
    p = _first_param(model)
    if p is not None:
        return p.dtype
    dt = getattr(model, "dtype", None)
    return dt if isinstance(dt, torch.dtype) else _DTYPE


def model_device(model: Any) -> torch.device:
    """Device of a model's first parameter (CPU when it has none)."""
    p = _first_param(model)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class DensityEstimator:
    r"""How log-densities and samples of score models are obtained for Monte Carlo estimates.

    Models with an analytic normalised ``log_prob`` (and ``sample``) use it; any other score
    model is sampled with the probability-flow ODE
    (:func:`~dualdiff.diffusion.sampling.sample_ode`) and evaluated with
    :func:`~dualdiff.diffusion.likelihood.ode_log_likelihood` (exact divergence up to 8 event
    entries, Hutchinson beyond) or with the :func:`~dualdiff.diffusion.likelihood.elbo`.

    Attributes
    ----------
    likelihood
        ``"ode"`` (default) or ``"elbo"`` (a lower bound; cheaper, noisier).
    ode_kwargs
        Extra keyword arguments of :func:`~dualdiff.diffusion.likelihood.ode_log_likelihood`.
    sampler_kwargs
        Extra keyword arguments of :func:`~dualdiff.diffusion.sampling.sample_ode`.
    elbo_draws
        Time/noise draws per sample of the ELBO.
    use_log_prob
        Use a model's analytic ``log_prob``/``sample`` when it has them (default ``True``).
    """

    likelihood: str = "ode"
    ode_kwargs: dict[str, Any] = field(default_factory=dict)
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    elbo_draws: int = 4
    use_log_prob: bool = True

    def sample(
        self,
        model: Any,
        n: int,
        event_shape: Sequence[int],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """``n`` samples of ``model`` ``(n, *event_shape)``, float64 on the CPU."""
        from ..diffusion.sampling import prior_sample, sample_ode

        if self.use_log_prob and callable(getattr(model, "sample", None)) and callable(
            getattr(model, "log_prob", None)
        ):
            with torch.no_grad():
                out = model.sample(n, generator=generator)
            return out.detach().to(device="cpu", dtype=_DTYPE)  # type: ignore[no-any-return]
        dtype, device = model_dtype(model), model_device(model)
        sched = getattr(model, "schedule", None)
        from ..models.interface import resolve_schedule

        sched = resolve_schedule(model, sched, "DensityEstimator.sample")
        x_init = prior_sample((n, *event_shape), sched, generator=generator, dtype=dtype)
        x = sample_ode(
            model, None, schedule=sched, x_init=x_init.to(device), dtype=dtype, device=device,
            **self.sampler_kwargs,
        )
        assert isinstance(x, torch.Tensor)
        return x.detach().to(device="cpu", dtype=_DTYPE)

    def log_prob(
        self, model: Any, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Log-density of ``model`` at ``x`` ``(n, *event)``; float64 ``(n,)`` on the CPU."""
        from ..diffusion.likelihood import elbo, ode_log_likelihood

        fn = getattr(model, "log_prob", None)
        if self.use_log_prob and callable(fn):
            with torch.no_grad():
                out = fn(x.to(dtype=model_dtype(model), device=model_device(model)))
            return torch.as_tensor(out).to(device="cpu", dtype=_DTYPE).reshape(x.shape[0])
        xd = x.to(dtype=model_dtype(model), device=model_device(model))
        if self.likelihood == "elbo":
            with torch.no_grad():
                lp = elbo(model, xd, n_t=self.elbo_draws, generator=generator)
        else:
            lp = ode_log_likelihood(model, xd, generator=generator, **self.ode_kwargs)
        return lp.detach().to(device="cpu", dtype=_DTYPE)


class UnlearningProblem(ABC):
    r"""The contract of an unlearning problem, as the engine sees it.

    Subclasses: the closed-form problems stated with Gaussian mixtures
    (:class:`~dualdiff.ReverseKLProblem`, :class:`~dualdiff.ForwardKLProblem`,
    :class:`~dualdiff.LikelihoodConstrainedProblem`) and the problems stated with models
    (:mod:`dualdiff.problems.model_level`). Construct them with
    :class:`~dualdiff.KLConstrainedProblem` and :class:`~dualdiff.LikelihoodConstrainedProblem`,
    which dispatch on what they are given.

    Attributes
    ----------
    kind
        ``"RU"``, ``"FU"`` or ``"LU"`` (reports and reprs; the engine never branches on it).
    bounds
        Constraint levels ``(m,)``, float64.
    """

    kind: ClassVar[str] = ""
    bounds: torch.Tensor
    _owner: str = "UnlearningProblem"

    #: Whether the constraint is an expectation of a function of the model's own samples
    #: (LU): the sampler form may then use the policy gradient.
    sample_functional: ClassVar[bool] = False
    #: Whether the composed primal form is the signed denoising loss (FU) rather than a
    #: regression on a composed target score (RU, LU).
    signed_loss: ClassVar[bool] = False
    #: Whether the sampler Lagrangian applies (its constraint is an expectation under the
    #: model's own samples, or a path KL from them: RU, LU; not FU).
    sampler_form: ClassVar[bool] = True

    # ----------------------------------------------------------------- facts
    @property
    @abstractmethod
    def m(self) -> int:
        """Number of constraints."""

    @property
    @abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample (``(d,)`` for vectors, ``(C, H, W)`` for images)."""

    @property
    def dim(self) -> int:
        """Number of event entries ``D`` (``d`` for vectors)."""
        return int(math.prod(self.event_shape))

    @property
    @abstractmethod
    def has_closed_form(self) -> bool:
        """Whether ``solve_dual``, ``target`` and ``certificate`` are available."""

    @abstractmethod
    def violations(self, constraints: torch.Tensor) -> torch.Tensor:
        r"""Cooper violations from constraint values ``(m,)`` (feasible when ``<= 0``).

        :math:`b - C` for RU and FU, :math:`C - \tau` for LU; float64 ``(m,)``.
        """

    def slack(self, constraints: torch.Tensor) -> torch.Tensor:
        """Slack (non-negative when satisfied): minus :meth:`violations`."""
        return -self.violations(constraints)

    # ----------------------------------------------------------------- dual domain
    @property
    @abstractmethod
    def domain(self) -> DualDomain:
        """The dual domain (box bounds, sum cap, membership), owned by the problem."""

    @property
    def domain_description(self) -> str:
        """Human-readable description of the dual domain."""
        return self.domain.description

    def in_domain(self, lam: Any) -> bool:
        """Whether ``lam`` (shape ``(m,)``) lies in the dual domain."""
        return self.domain.contains(lam)

    # ----------------------------------------------------------------- data and models
    @abstractmethod
    def pretrained_sampler(self) -> DataSampler:
        """``sampler(n, generator) -> (n, *event)`` of clean samples of :math:`p_0`."""

    def unlearn_samplers(self) -> list[DataSampler] | None:
        """One sampler of each :math:`q_i` (the signed loss), or ``None`` if unavailable."""
        return None

    @abstractmethod
    def reference_model(self) -> Any:
        """The frozen score model of :math:`p_0` (the sampler form's path-KL reference)."""

    # ----------------------------------------------------------------- primal hooks
    @abstractmethod
    def log_weight(self, lam: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        r""":math:`\log w_\lambda(x_0) = \log p_\lambda(x_0) - \log p_0(x_0)` up to a constant.

        ``x0`` ``(n, *event)`` clean pretrained samples; returns float64 ``(n,)`` (reweighted
        denoising score matching self-normalises per batch).
        """

    @abstractmethod
    def composed_score(self, lam: torch.Tensor) -> Any:
        r"""A score model ``score(x_t, t)`` of the composed target at ``lam`` (RU, LU).

        Exact at :math:`t = 0`, the ESD-style composition of noised scores at :math:`t > 0`.
        Problems with :attr:`signed_loss` raise.
        """

    def signed_loss_coefficients(self, lam: torch.Tensor) -> tuple[float, list[float]]:
        r"""Coefficients ``(a, [c_i])`` of the signed denoising loss.

        :math:`a\,E_{p_0}[\ell]-\sum_i c_i E_{q_i}[\ell]` (FU: :math:`a = 1/(1-\Lambda)`,
        :math:`c_i=\lambda_i/(1-\Lambda)`).
        """
        raise TypeError(
            f"{type(self).__name__}: the signed denoising loss is the forward-KL (FU) primal "
            "form; this problem trains on a composed target score"
        )

    def sampler_constraint_models(self) -> list[Any]:
        """Score models whose path KL to the trained model's sampler are constraint terms."""
        return []

    def sampler_constraint_terms(
        self, x_final: torch.Tensor, path_kls: list[torch.Tensor]
    ) -> torch.Tensor:
        r"""Per-sample constraint terms ``(m, n)`` of the sampler Lagrangian.

        ``x_final`` the sampler's output ``(n, *event)`` (differentiable), ``path_kls`` one
        ``(n,)`` path-KL accumulator per :meth:`sampler_constraint_models`. Their batch means
        are the constraint estimates :math:`\hat C_i`, differentiable in :math:`\theta`.
        Only for problems with :attr:`sampler_form`.
        """
        raise TypeError(f"{type(self).__name__}: the sampler Lagrangian does not apply")

    def population_ess(self, lam: torch.Tensor) -> float | None:
        r"""Population effective sample size :math:`1/E_{p_0}[w_\lambda^2]`, or ``None``."""
        return None

    # ----------------------------------------------------------------- estimates
    @abstractmethod
    def estimate_constraints(
        self,
        model: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None,
        density: DensityEstimator,
        estimate_objective: bool = True,
    ) -> ConstraintEstimate:
        """Monte Carlo estimates of the objective and constraints of ``model``, with errors."""

    def exact_constraints(self, model: Any) -> ConstraintEstimate:
        """Exact (quadrature) objective and constraints of a model with ``log_prob``."""
        raise ClosedFormUnavailableError(self._closed_form_message("exact_constraints"))

    def make_estimate(
        self,
        constraints: torch.Tensor,
        stderr: torch.Tensor,
        objective: tuple[float, float] | None,
        method: str,
        n: int,
    ) -> ConstraintEstimate:
        """Assemble a :class:`ConstraintEstimate` with this problem's violation sign."""
        c = constraints.detach().to(device="cpu", dtype=_DTYPE).reshape(-1)
        return ConstraintEstimate(
            constraints=c,
            constraint_stderr=stderr.detach().to(device="cpu", dtype=_DTYPE).reshape(-1),
            violations=self.violations(c),
            objective=None if objective is None else float(objective[0]),
            objective_stderr=None if objective is None else float(objective[1]),
            method=method,
            n=n,
        )

    # ----------------------------------------------------------------- closed form / dual
    def _closed_form_message(self, method: str) -> str:
        return (
            f"{type(self).__name__}.{method}: this problem is stated with models (no analytic "
            "density to integrate), so it has no closed-form dual, target or certificate. "
            "Estimate the dual by Monte Carlo over pretrained samples with "
            "problem.estimate_dual(samples=...), and fine-tune with "
            "PrimalDualTrainer(problem, model, ...)"
        )

    def solve_dual(self, *args: Any, **kwargs: Any) -> DualSolution:
        """Closed-form dual solve (problems stated with analytic densities only)."""
        raise ClosedFormUnavailableError(self._closed_form_message("solve_dual"))

    def target(self, lam: Any) -> Any:
        """Closed-form optimal distribution (problems stated with analytic densities only)."""
        raise ClosedFormUnavailableError(self._closed_form_message("target"))

    def certificate(self, candidate: Any, lam: Any, *, status: str | None = None) -> Certificate:
        """Certificate of a candidate density (problems stated with analytic densities only)."""
        raise ClosedFormUnavailableError(self._closed_form_message("certificate"))

    def estimate_dual(
        self,
        samples: torch.Tensor | None = None,
        *,
        n_samples: int = 1024,
        generator: torch.Generator | None = None,
    ) -> DualSolution:
        """Monte Carlo estimate of the dual over pretrained samples (see subclasses)."""
        from .._errors import DualEstimateUnavailableError

        raise DualEstimateUnavailableError(
            f"{type(self).__name__}.estimate_dual is not available for this problem"
        )
