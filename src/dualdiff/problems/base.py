"""Shared machinery of the closed-form problems stated with Gaussian mixtures.

Validation, log-density tables on an integration rule, certificates, and the
:class:`~dualdiff.problems.UnlearningProblem` hooks the engine uses (implemented from the
exact densities).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

from .._errors import DualDomainError, NonFiniteError
from .._validation import as_tensor
from ..duality import Certificate, DualEval, DualSolution, maximize_dual
from ..integration import GridQuadrature, IntegrationRule, MonteCarlo, resolve_integration
from ..models.gaussian_mixture import GaussianMixture
from ..targets import Target
from .contract import ConstraintEstimate, DataSampler, UnlearningProblem
from .dual_domain import DualDomain

__all__ = ["AnalyticProblem", "UnlearningProblem"]

_DTYPE = torch.float64


def _as_mixture(obj: Any, name: str, owner: str) -> GaussianMixture:
    if not isinstance(obj, GaussianMixture):
        raise TypeError(
            f"{owner}: parameter '{name}' must be a dualdiff.GaussianMixture (closed-form duality "
            f"needs exact densities), got {type(obj).__name__}"
        )
    return obj.to(_DTYPE)


class AnalyticProblem(UnlearningProblem):
    """Base class of the closed-form problems (RU, FU, LU stated with Gaussian mixtures).

    Subclasses provide the dual oracle on the integration rule, the closed-form target, the
    objective and constraint functionals, and the dual domain. Everything is computed in
    float64 from tables of log-densities evaluated once on the rule's points.
    """

    def __init__(
        self,
        pretrained: Any,
        unlearn: Any,
        bounds: Any,
        integration: str | GridQuadrature | MonteCarlo,
        owner: str,
    ) -> None:
        self._owner = owner
        self.pretrained = _as_mixture(pretrained, "pretrained", owner)
        if isinstance(unlearn, GaussianMixture):
            unlearn = [unlearn]
        if not isinstance(unlearn, Sequence) or len(unlearn) == 0:
            raise ValueError(
                f"{owner}: parameter 'unlearn' must be a non-empty list of distributions "
                f"(one per constraint), got {unlearn!r}"
            )
        self.unlearn = [_as_mixture(q, f"unlearn[{i}]", owner) for i, q in enumerate(unlearn)]
        d = self.pretrained.dim
        for i, q in enumerate(self.unlearn):
            if q.dim != d:
                raise ValueError(
                    f"{owner}: dimension mismatch: pretrained has d={d} but unlearn[{i}] has "
                    f"d={q.dim}; every unlearning distribution must live in the same space"
                )
        b = as_tensor(bounds, "bounds", owner, dtype=_DTYPE).reshape(-1)
        if b.numel() != self.m:
            raise ValueError(
                f"{owner}: parameter 'bounds' must have one level per unlearning distribution "
                f"(m={self.m}), got {b.numel()} value(s) {b.tolist()}"
            )
        self.bounds = b
        self.integration = resolve_integration(integration, d, owner)
        self._rule: IntegrationRule | None = None
        self._tables: dict[str, torch.Tensor] | None = None
        self._validate_bounds()

    # ----------------------------------------------------------------- basic facts
    @property
    def m(self) -> int:
        """Number of constraints."""
        return len(self.unlearn)

    @property
    def dim(self) -> int:
        """Event dimension ``d``."""
        return self.pretrained.dim

    @property
    def event_shape(self) -> tuple[int, ...]:
        """``(d,)``."""
        return (self.pretrained.dim,)

    @property
    def has_closed_form(self) -> bool:
        """``True``: the dual, the target and certificates are computed in closed form."""
        return True

    def violations(self, constraints: torch.Tensor) -> torch.Tensor:  # noqa: D102
        c = constraints.to(_DTYPE)
        return -self._slack(c.to(self.bounds.device)).to(c.device)

    def _projection_upper(self) -> tuple[torch.Tensor, float, bool]:
        """``(upper (m,), cap, upper_closed)`` of :attr:`domain` (box part of the domain)."""
        return torch.full((self.m,), math.inf, dtype=_DTYPE), math.inf, False

    @property
    def domain(self) -> DualDomain:  # noqa: D102
        upper, cap, closed = self._projection_upper()
        return DualDomain(
            upper=upper,
            cap=cap,
            description=self.domain_description,
            membership=lambda t: self._in_domain(t)[0],
            upper_closed=closed,
        )

    # ----------------------------------------------------------------- engine hooks
    def pretrained_sampler(self) -> DataSampler:  # noqa: D102
        p0 = self.pretrained

        def sampler(n: int, generator: torch.Generator | None) -> torch.Tensor:
            return p0.sample(n, generator=generator)

        return sampler

    def unlearn_samplers(self) -> list[DataSampler] | None:  # noqa: D102
        out: list[DataSampler] = []
        for q in self.unlearn:

            def sampler(
                n: int, generator: torch.Generator | None, q: GaussianMixture = q
            ) -> torch.Tensor:
                return q.sample(n, generator=generator)

            out.append(sampler)
        return out

    def reference_model(self) -> Any:  # noqa: D102
        return self.pretrained

    def _cached_target(self, lam: torch.Tensor) -> Target:
        """:meth:`target` at ``lam``, rebuilt only when ``lam`` changes."""
        lam64 = lam.detach().to(device="cpu", dtype=_DTYPE).reshape(-1)
        key = tuple(lam64.tolist())
        cache = self.__dict__.get("_target_cache")
        if cache is None or cache[0] != key:
            cache = (key, self.target(lam64))
            self.__dict__["_target_cache"] = cache
        return cache[1]  # type: ignore[no-any-return]

    def log_weight(self, lam: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:  # noqa: D102
        target = self._cached_target(lam)
        return target.log_weight(x0.to(device="cpu", dtype=_DTYPE))

    def composed_score(self, lam: torch.Tensor) -> Any:  # noqa: D102
        return self._cached_target(lam)

    def population_ess(self, lam: torch.Tensor) -> float | None:  # noqa: D102
        return float(self._cached_target(lam).population_ess(self.rule))

    def exact_constraints(self, model: Any) -> ConstraintEstimate:
        """Objective and constraints of ``model`` (normalised ``log_prob``) on the rule."""
        from .contract import model_device, model_dtype

        x = self.rule.points
        with torch.no_grad():
            lp = model.log_prob(x.to(dtype=model_dtype(model), device=model_device(model))).to(
                device=x.device, dtype=_DTYPE
            )
        if lp.shape != (x.shape[0],) or bool(torch.isnan(lp).any()):
            raise NonFiniteError(
                f"{self._owner}.exact_constraints: model.log_prob returned NaN or a wrong shape "
                "on the integration points"
            )
        f, fe, c, ce = self._objective_and_constraints(lp)
        return self.make_estimate(c, ce, (float(f), float(fe)), "exact", 0)

    def _validate_bounds(self) -> None:
        """Hook for subclasses (e.g. KL levels must be non-negative)."""

    @property
    def rule(self) -> IntegrationRule:
        """The prepared integration rule (built on first use and cached)."""
        if self._rule is None:
            self._rule = self.integration.prepare([self.pretrained, *self.unlearn])
        return self._rule

    @property
    def tables(self) -> dict[str, torch.Tensor]:
        """The log-density tables on the rule's points.

        ``log_p0`` ``(N,)``, ``log_q`` ``(m, N)`` and the problem's extra tables.
        """
        if self._tables is None:
            with torch.no_grad():
                x = self.rule.points
                t = {"log_p0": self.pretrained.log_prob(x)}
                t["log_q"] = torch.stack([q.log_prob(x) for q in self.unlearn])
                t.update(self._extra_tables(x))
            for k, v in t.items():
                if bool(torch.isnan(v).any()):
                    raise NonFiniteError(f"{self._owner}: NaN in the log-density table '{k}'")
            self._tables = t
        return self._tables

    def _extra_tables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    # ----------------------------------------------------------------- multipliers
    def _check_multipliers(self, lam: Any, method: str) -> torch.Tensor:
        owner = f"{self._owner}.{method}"
        t = as_tensor(lam, "lam", owner, dtype=_DTYPE).reshape(-1)
        if t.numel() != self.m:
            raise ValueError(
                f"{owner}: parameter 'lam' must have one multiplier per constraint (m={self.m}), "
                f"got {t.numel()} value(s) {t.tolist()}"
            )
        if bool((t < 0).any()):
            raise DualDomainError(
                f"{owner}: parameter 'lam'={t.tolist()} is outside the dual domain: multipliers "
                f"must be >= 0 ({self.domain_description})"
            )
        ok, why = self._in_domain(t)
        if not ok:
            raise DualDomainError(
                f"{owner}: parameter 'lam'={t.tolist()} is outside the dual domain "
                f"({self.domain_description}): {why}"
            )
        return t

    @property
    def domain_description(self) -> str:
        """Human-readable description of the dual domain."""
        raise NotImplementedError

    def _in_domain(self, lam: torch.Tensor) -> tuple[bool, str]:
        """Membership of ``lam >= 0`` in the rest of the domain, with a reason if not."""
        raise NotImplementedError

    def in_domain(self, lam: Any) -> bool:
        """Whether ``lam`` (shape ``(m,)``) lies in the dual domain."""
        t = torch.as_tensor(lam, dtype=_DTYPE).reshape(-1)
        if t.numel() != self.m or bool((t < 0).any()) or not bool(torch.isfinite(t).all()):
            return False
        return self._in_domain(t)[0]

    def _domain_upper(self) -> tuple[torch.Tensor, bool]:
        """Per-constraint bounds ``(upper (m,), closed)`` on the multipliers.

        ``lam_i`` lies in ``[0, upper_i]`` (closed) or ``[0, upper_i)``; coupled conditions
        are left to :meth:`_in_domain`.
        """
        return torch.full((self.m,), math.inf, dtype=_DTYPE), False

    def domain_info(self) -> dict[str, Any]:
        """Facts about the dual domain (for reports)."""
        return {"description": self.domain_description}

    # ----------------------------------------------------------------- dual
    def _oracle(self, lam: torch.Tensor) -> DualEval:
        """Dual value, Danskin gradient, Hessian and error bars at a validated ``lam``."""
        raise NotImplementedError

    def dual(self, lam: Any) -> float:
        r"""Dual function :math:`g(\lambda)` (float64); ``lam`` has shape ``(m,)``."""
        return self._oracle(self._check_multipliers(lam, "dual")).value

    def dual_gradient(self, lam: Any) -> torch.Tensor:
        """Danskin gradient of the dual: the target's constraint violations, ``(m,)``."""
        return self._oracle(self._check_multipliers(lam, "dual_gradient")).grad

    def dual_hessian(self, lam: Any) -> torch.Tensor:
        """Hessian of the dual (minus a covariance under the target), ``(m, m)``."""
        return self._oracle(self._check_multipliers(lam, "dual_hessian")).hess

    def _target(self, lam: torch.Tensor) -> Target:
        """Closed-form target at a validated ``lam``."""
        raise NotImplementedError

    def target(self, lam: Any) -> Target:
        r"""Closed-form optimal distribution :math:`p_\lambda` for multipliers ``lam`` ``(m,)``.

        On an automatic grid, if the normaliser's error bar at ``lam`` exceeds 1e-9 relative
        (tails beyond the box, or sharper than the spacing), the target is built on a wider,
        finer grid; the problem itself is left unchanged (only :meth:`solve_dual` refines the
        problem's own grid), so repeated calls are deterministic.
        """
        lam_t = self._check_multipliers(lam, "target")
        return self._accurate_at(lam_t)._target(lam_t)

    def _grid_accurate(self, lam: torch.Tensor, rtol: float) -> bool:
        ev = self._oracle(lam)
        return max(ev.value_err, float(ev.grad_err.max())) <= rtol * (1 + abs(ev.value))

    def _accurate_at(self, lam: torch.Tensor, rtol: float = 1e-9) -> AnalyticProblem:
        """Return ``self``, or a copy on a refined automatic grid accurate at ``lam``."""
        prob = self
        for _ in range(3):
            grid = prob.integration
            finer = grid.refined() if isinstance(grid, GridQuadrature) else None
            if finer is None or prob._grid_accurate(lam, rtol):
                break
            prob = copy.copy(prob)
            prob._set_integration(finer)
        return prob

    # ----------------------------------------------------------------- primal side
    def _objective_and_constraints(
        self, log_p: torch.Tensor
    ) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        """From a candidate's log-density on the rule: ``(f, f_err, C (m,), C_err (m,))``."""
        raise NotImplementedError

    def _slack(self, c: torch.Tensor) -> torch.Tensor:
        """Slack (non-negative when satisfied) from constraint values ``(m,)``."""
        raise NotImplementedError

    def _candidate_log_prob(self, candidate: Any) -> torch.Tensor:
        if not hasattr(candidate, "log_prob"):
            raise TypeError(
                f"{self._owner}.certificate: parameter 'candidate' must have a normalised "
                f"log_prob(x), got {type(candidate).__name__}"
            )
        x = self.rule.points
        with torch.no_grad():
            lp = candidate.log_prob(x.to(getattr(candidate, "dtype", x.dtype))).to(_DTYPE)
        if lp.shape != (x.shape[0],):
            raise ValueError(
                f"{self._owner}.certificate: candidate.log_prob must map (N, {self.dim}) to "
                f"(N,), got shape {tuple(lp.shape)}"
            )
        if bool(torch.isnan(lp).any()) or bool((lp == math.inf).any()):
            raise NonFiniteError(
                f"{self._owner}.certificate: candidate.log_prob returned NaN or +inf"
            )
        return lp

    def objective(self, candidate: Any) -> tuple[float, float]:
        """Objective :math:`f(p)` of a candidate with ``log_prob`` and its error bar."""
        f, fe, _, _ = self._objective_and_constraints(self._candidate_log_prob(candidate))
        return f, fe

    def constraint_values(self, candidate: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Constraint functionals :math:`C_i(p)` ``(m,)`` of a candidate and their error bars."""
        _, _, c, ce = self._objective_and_constraints(self._candidate_log_prob(candidate))
        return c, ce

    def certificate(self, candidate: Any, lam: Any, *, status: str | None = None) -> Certificate:
        r"""Certificate of ``candidate`` (anything with a normalised ``log_prob``) at ``lam``.

        The gap :math:`f(p) - g(\lambda)` bounds :math:`f(p) - P^\star` whenever the candidate
        is feasible (weak duality).
        """
        lam_t = self._check_multipliers(lam, "certificate")
        lp = self._candidate_log_prob(candidate)
        f, fe, c, ce = self._objective_and_constraints(lp)
        mass, _ = self.rule.integral(torch.exp(lp))
        return self._certify(lam_t, f, fe, c, ce, self.rule.method, status, float(mass))

    def certificate_from_estimates(
        self,
        lam: Any,
        objective: float,
        constraint_values: Any,
        *,
        objective_error: float = 0.0,
        constraint_errors: Any = None,
        method: str = "estimate",
        status: str | None = None,
    ) -> Certificate:
        r"""Certificate of a model known only through estimates of :math:`f(p)` and :math:`C(p)`.

        For black-box models (e.g. a diffusion network whose values come from probability-flow
        ODE likelihoods) this pairs the estimates with the exact dual value :math:`g(\lambda)`;
        error bars are the estimates' standard errors combined with the dual's.

        Parameters
        ----------
        lam
            Multipliers ``(m,)`` in the dual domain.
        objective
            Estimated :math:`f(p)`.
        objective_error
            Standard error of ``objective``.
        constraint_values
            Estimated :math:`C_i(p)`, ``(m,)``.
        constraint_errors
            Standard errors of ``constraint_values``, ``(m,)``.
        method
            Label of the estimation method (reported in the certificate).
        """
        lam_t = self._check_multipliers(lam, "certificate_from_estimates")
        c = torch.as_tensor(constraint_values, dtype=_DTYPE).reshape(-1)
        if c.numel() != self.m:
            raise ValueError(
                f"{self._owner}.certificate_from_estimates: parameter 'constraint_values' must "
                f"have m={self.m} entries, got {c.tolist()}"
            )
        ce = (
            torch.zeros_like(c)
            if constraint_errors is None
            else torch.as_tensor(constraint_errors, dtype=_DTYPE).reshape(-1)
        )
        return self._certify(
            lam_t, float(objective), float(objective_error), c, ce, method, status, math.nan
        )

    def _certify(
        self,
        lam_t: torch.Tensor,
        f: float,
        fe: float,
        c: torch.Tensor,
        ce: torch.Tensor,
        method: str,
        status: str | None,
        mass: float,
    ) -> Certificate:
        ev = self._oracle(lam_t)
        slack = self._slack(c)
        tol = 3 * ce + 1e-9
        feasible = bool((slack >= -tol).all())
        return Certificate(
            primal_value=f,
            dual_value=ev.value,
            gap=f - ev.value,
            constraint_values=c,
            slack=slack,
            feasible=feasible,
            status=status or ("feasible" if feasible else "infeasible"),
            multipliers=lam_t,
            method=method,
            primal_error=fe,
            dual_error=ev.value_err,
            gap_error=math.hypot(fe, ev.value_err),
            constraint_errors=ce,
            complementary_slackness=lam_t * slack,
            normalisation=mass,
        )

    # ----------------------------------------------------------------- solve
    #: Attributes cached per integration rule (cleared when the grid is refined).
    _RULE_CACHES: tuple[str, ...] = ()

    def _set_integration(self, integration: GridQuadrature | MonteCarlo) -> None:
        self.integration = integration
        self._rule = None
        self._tables = None
        self.__dict__.pop("_target_cache", None)
        for name in self._RULE_CACHES:
            self.__dict__.pop(name, None)

    def solve_dual(
        self,
        *,
        gtol: float = 1e-10,
        max_iter: int = 100,
        refine: bool = True,
        rtol_integration: float = 1e-9,
    ) -> DualSolution:
        """Maximise the concave dual over its domain and certify the closed-form target.

        Parameters
        ----------
        gtol
            Tolerance on the projected Danskin gradient (nats).
        max_iter
            Iteration cap.
        refine
            Automatic grids only: when the dual's or the gradient's quadrature error bar at the
            solution exceeds ``rtol_integration * (1 + |g|)`` (a target whose tails leave the box,
            or sharper than the spacing), rebuild a wider, finer grid and solve again (at most
            three times).
        rtol_integration
            See ``refine``.

        Returns
        -------
        DualSolution
        """
        for _ in range(3):
            sol = self._solve_once(gtol, max_iter)
            grid = self.integration
            finer = grid.refined() if isinstance(grid, GridQuadrature) else None
            if not refine or finer is None:
                return sol
            if self._grid_accurate(sol.multipliers, rtol_integration):
                return sol
            self._set_integration(finer)
        return self._solve_once(gtol, max_iter)

    def _solve_once(self, gtol: float, max_iter: int) -> DualSolution:
        upper, closed = self._domain_upper()

        def oracle(lam: torch.Tensor) -> DualEval:
            return self._oracle(lam)

        lam, status, its, n_eval, hist, msg = maximize_dual(
            oracle,
            self.m,
            upper=upper,
            upper_closed=closed,
            in_domain=lambda v: self._in_domain(v)[0],
            gtol=gtol,
            max_iter=max_iter,
        )
        ev = self._oracle(lam)
        target = self._target(lam)
        cert = self.certificate(target, lam, status=status)
        if status == "boundary":
            msg += (
                "; the closed-form target at the boundary does not meet every constraint level "
                "(no optimal distribution attains the primal value)"
            )
        return DualSolution(
            multipliers=lam,
            target=target,
            certificate=cert,
            status=status,
            dual_value=ev.value,
            gradient=ev.grad,
            iterations=its,
            n_evaluations=n_eval,
            message=msg,
            history=hist,
            domain=self.domain_info(),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind}, d={self.dim}, m={self.m}, "
            f"bounds={self.bounds.tolist()}, integration={self.integration!r})"
        )
