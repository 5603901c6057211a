"""Shared machinery of the closed-form problems stated with Gaussian mixtures.

Validation, log-density tables on an integration rule, certificates, and the
:class:`~dualdiff.problems.UnlearningProblem` hooks the engine uses (implemented from the
exact densities).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from .._constants import FLOAT64 as _DTYPE
from .._errors import DualDomainError, NonFiniteError
from .._validation import as_tensor
from ..duality import Certificate, DualEval, DualSolution, maximize_dual
from ..integration import GridQuadrature, IntegrationRule, MonteCarlo, resolve_integration
from ..models.gaussian_mixture import GaussianMixture
from ..targets import Target
from ._certify import (
    check_solver_options,
    feasibility,
    independent_grid,
    integration_issue,
)
from ._gaussian_tilt import TiltedMixture
from .contract import ConstraintEstimate, DataSampler, UnlearningProblem
from .dual_domain import DualDomain

__all__ = ["AnalyticProblem", "UnlearningProblem"]

#: Covariance inflation of the envelopes in a Monte Carlo proposal: a target at multipliers
#: near (not at) the envelope's keeps importance weights of finite variance (heavier tails).
_ENVELOPE_INFLATION = 1.25
#: Relative move of the solution from the proposal's multipliers that triggers a redraw.
_PROPOSAL_RTOL = 0.01
#: A refinement that turned a uniform grid into per-component grids is undone when its
#: solution's largest error bar is this many times the previous solution's.
_WORSE_FACTOR = 10.0


def _eval_error(ev: DualEval) -> float:
    """Largest integration error bar of a dual evaluation (value and gradient)."""
    return max(ev.value_err, float(ev.grad_err.max()))


def _eval_accurate(ev: DualEval, rtol: float) -> bool:
    """Whether a dual evaluation's error bars are below ``rtol * (1 + |g|)``."""
    return _eval_error(ev) <= rtol * (1 + abs(ev.value))


def _carrying_mass(env: TiltedMixture) -> torch.Tensor:
    """Components of an envelope within 46 nats (1e-20) of its total mass, a boolean mask.

    ``>=``: at log masses ~1e17 (RU with ``1 - sum(lam) ~ 1e-16``) the gap rounds to 0, and
    the heaviest component must still be kept.
    """
    return env.log_masses >= env.log_mass - 46.0


def _error_bar(sol: DualSolution) -> float:
    """Largest integration error bar of a solution's certificate (dual value, constraints)."""
    cert = sol.certificate
    errs = [abs(cert.dual_error), *cert.constraint_errors.abs().tolist()]
    return max(errs) if all(math.isfinite(e) for e in errs) else math.inf



def _as_mixture(obj: Any, name: str, owner: str) -> GaussianMixture:
    if not isinstance(obj, GaussianMixture):
        raise TypeError(
            f"{owner}: parameter '{name}' must be a dualdiff.GaussianMixture (closed-form duality "
            f"needs exact densities), got {type(obj).__name__}"
        )
    return obj.to(_DTYPE)


def _finite_scalar(value: Any, name: str, owner: str) -> float:
    """A finite real scalar (strings and NaN refused) or a typed error naming ``name``."""
    t = as_tensor(value, name, owner, dtype=_DTYPE)
    if t.numel() != 1:
        raise ValueError(f"{owner}: parameter '{name}' must be a scalar, got shape "
                         f"{tuple(t.shape)}")
    return float(t)


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
        #: Extra mixtures the automatic grid must cover (where tilted targets put mass).
        self._cover: list[GaussianMixture] = []
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
            self._rule = self.integration.prepare(
                [self.pretrained, *self.unlearn], cover=self._cover
            )
        return self._rule

    # ----------------------------------------------------------------- rules that follow
    def _envelope(self, lam: torch.Tensor) -> TiltedMixture | None:
        """Gaussian upper bound of the unnormalised target at ``lam`` (``None`` if unknown)."""
        return None

    #: Whether oracle calls may rebuild the rule to follow the target: only inside
    #: :meth:`solve_dual` and on the private copies of :meth:`_accurate_at`, so that every other
    #: evaluation (engine, certificates) is a deterministic function of the problem's state.
    _following: bool = False

    def _follows(self) -> bool:
        grid = self.integration
        return (
            isinstance(grid, GridQuadrature)
            and grid.points_per_dim is None
            and grid.bounds is None
        )

    def _box(self) -> tuple[torch.Tensor, torch.Tensor]:
        pts = self.rule.points
        return pts.min(0).values, pts.max(0).values

    def _follow(self, lam: torch.Tensor) -> None:
        r"""Make an automatic grid cover and resolve the target's mass at ``lam``.

        The envelope's components carrying mass (above :math:`10^{-20}` of the total) must lie
        inside the box with ``extent`` standard deviations to spare and be resolved by the
        spacing; otherwise they are added to the covered mixtures and the rule is rebuilt
        (the box only grows, so a solve rebuilds a few times at most).
        """
        if not (self._following and self._follows()):
            return
        env = self._envelope(lam)
        if env is None:
            return
        keep = _carrying_mass(env)
        means, covs = env.means[keep], env.covariances[keep]
        grid = self.integration
        assert isinstance(grid, GridQuadrature)
        std = torch.sqrt(torch.diagonal(covs, dim1=-2, dim2=-1))
        need_lo = (means - grid.extent * std).min(0).values
        need_hi = (means + grid.extent * std).max(0).values
        lo, hi = self._box()
        covered = bool((need_lo >= lo).all()) and bool((need_hi <= hi).all())
        n = self.rule.points_per_dim
        spacing = float(((hi - lo) / max(n - 1, 1)).max())
        min_std = float(torch.linalg.eigvalsh(covs).min().clamp_min(0).sqrt())
        cap = int(grid.max_points ** (1.0 / self.dim))
        # a per-component rule resolves each component on its own grid (the spacing across
        # the whole box says nothing); only the box's coverage is checked
        resolved = (
            self.rule.per_component or spacing <= min_std / grid.resolution * 1.05 or n >= cap - 1
        )
        if covered and resolved:
            return
        w = torch.softmax(env.log_masses[keep], 0)
        # a new list: copies made by _accurate_at must not share it
        self._cover = [*self._cover, GaussianMixture(w, means, covs)]
        if len(self._cover) > 8:  # merge, keep the union
            merged = self._cover
            self._cover = [
                GaussianMixture(
                    torch.cat([c.weights for c in merged]),
                    torch.cat([c.means for c in merged]),
                    torch.cat([c.covariances for c in merged]),
                )
            ]
        self._reset_rule()

    def _tail_fraction(self, lam: torch.Tensor, log_z_box: float) -> float:
        r"""Bound on the fraction of the target's mass outside the grid's box at ``lam``.

        :math:`\varepsilon = T/Z_{\text{box}}`, ``T`` the envelope's mass outside the box
        (0 for Monte Carlo or when there is no envelope).
        """
        if self.rule.method != "grid":
            return 0.0
        env = self._envelope(lam)
        if env is None:
            return 0.0
        lo, hi = self._box()
        log_t = env.log_outside_mass(lo, hi)
        return math.exp(min(log_t - log_z_box, 700.0))

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
        r"""Dual function :math:`g(\lambda)` (float64); ``lam`` has shape ``(m,)``.

        Evaluated in closed form where one exists, else on a rule refined until accurate at
        ``lam`` (as :meth:`target`); its error bar is :meth:`dual_with_error`'s second value.
        """
        return self.dual_with_error(lam)[0]

    def dual_with_error(self, lam: Any) -> tuple[float, float]:
        r""":math:`g(\lambda)` and its error bar (integration error, truncation included).

        :math:`g(\lambda) - \text{err}` is a lower bound on the optimum :math:`P^\star`
        (weak duality) up to the integration error's own reliability (exact for closed forms
        and grids; a standard error for Monte Carlo).
        """
        lam_t = self._check_multipliers(lam, "dual")
        ev = self._accurate_at(lam_t)._oracle(lam_t)
        return ev.value, ev.value_err

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
        return _eval_accurate(self._oracle(lam), rtol)

    def _accurate_at(self, lam: torch.Tensor, rtol: float = 1e-9) -> AnalyticProblem:
        """Return ``self``, or a copy on a refined automatic grid accurate at ``lam``.

        A refinement whose error bars at ``lam`` are more than ``_WORSE_FACTOR`` times larger
        is not taken (a refined box past the point cap becomes per-component grids, or wider
        ones, of lower accuracy): otherwise neighbouring evaluations (finite differences of
        :meth:`dual`) could land on rules of very different accuracy.
        """
        prob, ev = self, None
        for _ in range(3):
            grid = prob.integration
            finer = grid.refined() if isinstance(grid, GridQuadrature) else None
            if finer is None:
                break
            ev = prob._oracle(lam) if ev is None else ev  # one evaluation per candidate rule
            if _eval_accurate(ev, rtol):
                break
            nxt = copy.copy(prob)
            nxt._following = True
            nxt._set_integration(finer)
            nxt_ev = nxt._oracle(lam)
            if _eval_error(nxt_ev) > _WORSE_FACTOR * _eval_error(ev):
                break
            prob, ev = nxt, nxt_ev
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
        owner = f"{self._owner}.certificate_from_estimates"
        objective = _finite_scalar(objective, "objective", owner)
        objective_error = _finite_scalar(objective_error, "objective_error", owner)
        if objective_error < 0:
            raise ValueError(f"{owner}: parameter 'objective_error' must be >= 0, got "
                             f"{objective_error}")
        c = as_tensor(constraint_values, "constraint_values", owner, dtype=_DTYPE).reshape(-1)
        if c.numel() != self.m:
            raise ValueError(
                f"{self._owner}.certificate_from_estimates: parameter 'constraint_values' must "
                f"have m={self.m} entries, got {c.tolist()}"
            )
        ce = (
            torch.zeros_like(c)
            if constraint_errors is None
            else as_tensor(constraint_errors, "constraint_errors", owner, dtype=_DTYPE).reshape(-1)
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
        ev: DualEval | None = None,
    ) -> Certificate:
        ev = self._oracle(lam_t) if ev is None else ev
        slack = self._slack(c)
        feasible = feasibility(slack, ce, self.bounds)
        if status is None:
            status = {True: "feasible", False: "infeasible", None: "unknown"}[feasible]
        return Certificate(
            primal_value=f,
            dual_value=ev.value,
            gap=f - ev.value,
            constraint_values=c,
            slack=slack,
            feasible=feasible,
            status=status,
            multipliers=lam_t,
            method=method,
            primal_error=fe,
            dual_error=ev.value_err,
            gap_error=math.hypot(fe, ev.value_err),
            constraint_errors=ce,
            complementary_slackness=lam_t * slack,
            normalisation=mass,
        )

    def _independent_mass(self, candidate: Any) -> float:
        r""":math:`\int p` of a candidate on a grid independent of the problem's rule (grids)."""
        grid = independent_grid(self.integration, self.rule)
        if grid is None:
            return math.nan
        rule = grid.prepare([self.pretrained, *self.unlearn], cover=self._cover)
        x = rule.points
        with torch.no_grad():
            lp = candidate.log_prob(x.to(getattr(candidate, "dtype", x.dtype))).to(_DTYPE)
        return float(rule.integral(torch.exp(lp))[0])

    def _exact_certificate(self, lam: torch.Tensor, status: str) -> Certificate | None:
        """Certificate of the closed-form target from closed forms (``None`` if none)."""
        return None

    # ----------------------------------------------------------------- solve
    #: Attributes cached per integration rule (cleared when the grid is refined).
    _RULE_CACHES: tuple[str, ...] = ()

    def _set_integration(self, integration: GridQuadrature | MonteCarlo) -> None:
        self.integration = integration
        self._reset_rule()

    def _reset_rule(self) -> None:
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
        atol_integration: float | None = None,
    ) -> DualSolution:
        """Maximise the concave dual over its domain and certify the closed-form target.

        Parameters
        ----------
        gtol
            Tolerance on the projected Danskin gradient (nats), finite and ``>= 0``.
        max_iter
            Iteration cap, an int ``>= 1``.
        refine
            Automatic grids only: when the dual's or the gradient's quadrature error bar at the
            solution exceeds ``rtol_integration * (1 + |g|)`` (a target whose tails leave the box,
            or sharper than the spacing), rebuild a wider, finer grid that also covers the
            target's mass and solve again (at most three times; every solve is checked).
            Monte Carlo (problems with a Gaussian envelope of the target that moves with the
            multipliers: LU-log, RU): redraw the points from a proposal that follows the
            target at the solution and solve again, warm-started, until the solution stays
            within 1% of where the proposal was built (at most eight redraws).
            ``refine=False`` keeps the first rule.
        rtol_integration
            See ``refine``.
        atol_integration
            Largest integration error bar, relative to ``1 + |value|``, of the dual value and of
            each constraint value for which the status may be ``"optimal"``; above it the status
            is ``"inaccurate"`` and the message says what to change. Default ``1e-6`` for
            closed forms and grids, ``1e-2`` for Monte Carlo (a standard error).

        Returns
        -------
        DualSolution
        """
        check_solver_options(gtol, max_iter, rtol_integration, atol_integration, self._owner)
        if atol_integration is None:
            atol_integration = 1e-2 if self.integration.method == "monte_carlo" else 1e-6
        self._following = True
        try:
            return self._solve_dual(gtol, max_iter, refine, rtol_integration, atol_integration)
        finally:
            self._following = False

    def _solve_dual(
        self, gtol: float, max_iter: int, refine: bool, rtol_integration: float, atol: float
    ) -> DualSolution:
        sol = self._solve_once(gtol, max_iter)
        for _ in range(8):
            if not (refine and self._follow_sampler(sol)):
                break
            sol = self._solve_once(gtol, max_iter, start=sol.multipliers)
        for _ in range(3):
            if not refine or self._grid_accurate(sol.multipliers, rtol_integration):
                break
            grid = self.integration
            finer = grid.refined() if isinstance(grid, GridQuadrature) else None
            if finer is None:
                break
            before = self.rule.points_per_dim, self.rule.n_points
            kept = (self.integration, self._cover, sol)
            was_uniform = not self.rule.per_component
            self._set_integration(finer)
            self._follow_target(sol)
            if self.rule.points_per_dim <= before[0] and self.rule.n_points <= before[1]:
                break  # the point cap binds: a rebuild would not be finer
            # warm start: the finer rule moves the maximiser little (from 0, each refinement
            # re-walked the whole path, which on a near-flat ridge took hundreds of calls)
            sol = self._solve_once(gtol, max_iter, start=sol.multipliers)
            degraded = was_uniform and self.rule.per_component
            if degraded and _error_bar(sol) > _WORSE_FACTOR * _error_bar(kept[2]):
                # a refined box past the point cap became per-component grids (accurate to
                # ~1e-3) and the error bars grew: keep the uniform grid's solve. Only this
                # switch is undone: between per-component rules the coarser one's small bars
                # can be the unreliable ones (a far-level RU instance certified a wrong
                # "boundary" on them)
                self.integration, self._cover, sol = kept
                self._reset_rule()
                break
        return self._finalise(sol, atol)

    #: Multipliers at which the Monte Carlo proposal's envelopes were built (newest last).
    _proposal_path: tuple[torch.Tensor, ...] = ()

    def _follow_sampler(self, sol: DualSolution) -> bool:
        r"""Monte Carlo: redraw the points from a proposal that follows the target.

        The proposal gets Gaussian envelopes of the tilted target (upper bounds of it, so the
        importance weights of the target there are bounded and the standard errors are those
        of a finite-variance estimator) at the last three points of a continuation path
        :math:`\lambda_p`: the solution's multipliers, or, when the solve ended at the edge of
        the domain or without converging (a proposal that misses the target's tails biases the
        dual upwards there), half-way from the previous :math:`\lambda_p` (0 at first); their
        covariances are inflated 1.25-fold (tails heavier than those of targets near
        :math:`\lambda_p`). Not rebuilt when the solution lies within 1% (relative, per
        multiplier) of the newest
        :math:`\lambda_p` and the solve converged. Returns whether the rule was rebuilt.
        """
        lam = sol.multipliers
        if self.integration.method != "monte_carlo" or self._exact(lam) is not None:
            return False
        if not self._envelope_moves:
            return False
        path = self._proposal_path
        prev = path[-1] if path else torch.zeros_like(lam)
        converged = sol.status in ("optimal", "inaccurate")
        close = bool(((lam - prev).abs() <= _PROPOSAL_RTOL * prev.abs() + 1e-12).all())
        if path and converged and close:
            return False
        at = lam if converged else 0.5 * (prev + lam)
        env = self._envelope(at)
        if env is None:
            return False
        path = (*path, at.detach().clone())[-3:]
        cover = []
        for point in path:
            e = self._envelope(point)
            if e is None:
                continue
            keep = _carrying_mass(e)
            w = torch.softmax(e.log_masses[keep], 0)
            covs = _ENVELOPE_INFLATION * e.covariances[keep]
            cover.append(GaussianMixture(w, e.means[keep], covs))
        self._cover = cover
        self._proposal_path = path
        self._reset_rule()
        return True

    @property
    def _envelope_moves(self) -> bool:
        """Whether :meth:`_envelope` depends on the multipliers.

        If not, the default proposal, which contains ``p0``, already bounds the weights.
        """
        return True

    def _exact(self, lam: torch.Tensor) -> Any:
        """The exact target's Gaussian mixture at ``lam`` (``None``: no closed form)."""
        return None

    def _follow_target(self, sol: DualSolution) -> None:
        """Cover a Gaussian moment-matched to the target's mass (generic targets)."""
        if not self._follows() or sol.status == "infeasible":
            return
        try:
            lp = self.rule_log_prob(sol.target)
        except (ValueError, RuntimeError):
            return
        x = self.rule.points
        p = torch.softmax(lp + self.rule.log_weights, 0)
        mean = p @ x
        cov = torch.einsum("n,ni,nj->ij", p, x - mean, x - mean)
        cov = 0.5 * (cov + cov.T) + 1e-12 * torch.eye(self.dim, dtype=_DTYPE)
        if bool(torch.isfinite(cov).all()) and float(torch.linalg.eigvalsh(cov).min()) > 0:
            g = GaussianMixture(torch.ones(1, dtype=_DTYPE), mean[None], cov[None])
            self._cover = [*self._cover, g]
            self._reset_rule()

    def rule_log_prob(self, candidate: Any) -> torch.Tensor:
        """A candidate's ``log_prob`` on the rule's points ``(N,)`` (float64, checked)."""
        return self._candidate_log_prob(candidate)

    def _finalise(self, sol: DualSolution, atol: float) -> DualSolution:
        """Honest status: ``inaccurate`` when the integration error is large, domain checked."""
        lam = sol.multipliers
        if not self.in_domain(lam):
            back, lo = self._pull_back(lam)
            new = self._solve_at(back, "boundary", sol)
            new.message = (
                f"{sol.message}; the solver's multipliers {lam.tolist()} failed the full "
                f"dual-domain check and were pulled back to the boundary (factor {lo:.12g})"
            )
            sol = new
            lam = sol.multipliers
        feasible = sol.certificate.feasible
        # Monte Carlo: a slack within its standard errors leaves feasibility unknown (None);
        # that is what "optimal" means at a statistical tolerance
        undecided = feasible is None and self.integration.method != "monte_carlo"
        if sol.status == "optimal" and (feasible is False or undecided):
            sol.message += (
                "; status 'optimal' demoted: the solver stopped (rounding-level progress) with "
                f"the target's slack {sol.certificate.slack.tolist()} not certified feasible"
            )
            sol.status = "inaccurate"
            sol.certificate = dataclasses.replace(sol.certificate, status="inaccurate")
            return sol
        if sol.status in ("optimal", "boundary", "max_iter"):
            ev = self._oracle(lam)
            why = integration_issue(ev, self.bounds, atol, self.integration, sol.status)
            if why is not None:
                sol.message = f"{sol.message}; status {sol.status!r} demoted: {why}"
                sol.status = "inaccurate"
                sol.certificate = dataclasses.replace(sol.certificate, status="inaccurate")
        return sol

    def _pull_back(self, lam: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Largest ``s lam`` (``s`` in [0, 1]) passing the full domain check, by bisection."""
        lo, hi = 0.0, 1.0
        for k in range(9, 0, -1):  # bracket geometrically: the failure is usually marginal
            s = 1.0 - 10.0 ** (-k)
            if self._in_domain(s * lam)[0]:
                lo = s
                break
            hi = s
        while hi - lo > 1e-10 * hi:
            mid = 0.5 * (lo + hi)
            if self._in_domain(mid * lam)[0]:
                lo = mid
            else:
                hi = mid
        back = lo * lam
        for _ in range(40):  # a point the full check accepts (rounding at the margin)
            if self._in_domain(back)[0]:
                break
            back = back * (1.0 - 1e-6)
        return back, lo

    def _solve_at(self, lam: torch.Tensor, status: str, like: DualSolution) -> DualSolution:
        """A solution at given multipliers (target and certificate rebuilt), else as ``like``."""
        ev = self._oracle(lam)
        target = self._target(lam)
        cert = self._exact_certificate(lam, status)
        if cert is None:
            cert = self.certificate(target, lam, status=status)
        return dataclasses.replace(
            like,
            multipliers=lam,
            target=target,
            certificate=cert,
            status=status,
            dual_value=ev.value,
            gradient=ev.grad,
        )

    def _solve_once(
        self, gtol: float, max_iter: int, start: torch.Tensor | None = None
    ) -> DualSolution:
        upper, closed = self._domain_upper()

        def oracle(lam: torch.Tensor) -> DualEval:
            return self._oracle(lam)

        lam, status, its, n_eval, hist, msg = maximize_dual(
            oracle,
            self.m,
            upper=upper,
            upper_closed=closed,
            in_domain=self._in_domain_search,
            gtol=gtol,
            max_iter=max_iter,
            infeasible_at=self._infeasible_at(),
            start=start,
        )
        if bool((lam > 0).any()) and not self._in_domain(lam)[0]:
            lam, factor = self._pull_back(lam)
            status = "boundary"
            msg += (
                "; the solver's point failed the full dual-domain check (its line search "
                f"screens on the rule's points) and was pulled back by the factor {factor:.12g}"
            )
        if status == "infeasible" and not self._certified_infeasible():
            status = "max_iter"
            msg = (
                "the dual kept increasing up to very large multipliers, but infeasibility of the "
                "levels is not certified; " + msg
            )
        ev = self._oracle(lam)
        self._follow(lam)  # the rule covers the returned target (for its certificates)
        target = self._target(lam)
        cert = self._exact_certificate(lam, status)
        if cert is None:
            cert = self.certificate(target, lam, status=status)
            mass = self._independent_mass(target)
            if math.isfinite(mass):
                cert = dataclasses.replace(cert, normalisation=mass)
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

    def _in_domain_search(self, lam: torch.Tensor) -> bool:
        """Domain test used inside the solver's line searches (may be a cheaper screen)."""
        return self._in_domain(lam)[0]

    def _infeasible_at(self) -> float:
        """Multiplier size beyond which an increasing dual is called unbounded."""
        return 1e8

    def _certified_infeasible(self) -> bool:
        """Whether an ``infeasible`` verdict of the solver is certified (subclass hook)."""
        return True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind}, d={self.dim}, m={self.m}, "
            f"bounds={self.bounds.tolist()}, integration={self.integration!r})"
        )
