r"""KL-constrained unlearning: reverse (concept, RU) and forward (data, FU) directions.

The problems and their duals are those of :doc:`/mathematics`. RU:

.. math::
    \min_p \mathrm{KL}(p\|p_0)\ \text{s.t.}\ \mathrm{KL}(p\|q_i)\ge b_i,\qquad
    p_\lambda\propto p_0^{1/(1-\Lambda)}\prod_i q_i^{-\lambda_i/(1-\Lambda)},\qquad
    g(\lambda) = -(1-\Lambda)\log Z(\lambda) + \lambda^\top b .

FU:

.. math::
    \min_p \mathrm{KL}(p_0\|p)\ \text{s.t.}\ \mathrm{KL}(q_i\|p)\ge b_i,\qquad
    p_\lambda = \frac{p_0-\sum_i\lambda_i q_i}{1-\Lambda},

.. math::
    g(\lambda) = -H(p_0) + \sum_i\lambda_i\big(H(q_i)+b_i\big) - \int w\log w
    + (1-\Lambda)\log(1-\Lambda),\quad w = p_0-\sum_i\lambda_i q_i .
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from .._validation import check_choice
from ..domain import (
    RatioInfimum,
    directions,
    log_tilt_in_domain,
    log_tilt_upper_bounds,
    ratio_infimum,
    tilt_bound,
)
from ..duality import DualEval
from ..integration import GridQuadrature, MonteCarlo
from ..models.gaussian_mixture import GaussianMixture
from ..targets import GeometricTarget, SignedMixtureTarget
from ..targets._atoms import Atoms, signed_log_sum
from ..targets.potentials import LogLikelihood
from ._estimates import estimate_forward, estimate_on_model_samples
from .base import AnalyticProblem
from .contract import ConstraintEstimate, DensityEstimator

__all__ = ["ForwardKLProblem", "KLConstrainedProblem", "ReverseKLProblem"]


def _xlogy_terms(p_log: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    r""":math:`p\,(\log p - o)` elementwise with the convention ``0 log 0 = 0``."""
    p = torch.exp(p_log)
    return torch.where(p > 0, p * (p_log - other), torch.zeros_like(p))


def _centred_cov(rule: Any, log_u: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Covariance ``(m, m)`` of the rows of ``f`` ``(m, N)`` under ``p ∝ exp(log_u)``."""
    mean, _ = rule.expectation(log_u, f)
    c = f - mean[:, None]
    prods = c[:, None, :] * c[None, :, :]
    cov, _ = rule.expectation(log_u, prods.reshape(-1, c.shape[-1]))
    return cov.reshape(f.shape[0], f.shape[0])


class KLConstrainedProblem(AnalyticProblem):
    r"""Unlearning with KL-divergence constraints, in the reverse (RU) or forward (FU) direction.

    Parameters
    ----------
    pretrained
        The pretrained model :math:`p_0` (a :class:`~dualdiff.GaussianMixture`).
    unlearn
        List of ``m >= 1`` unlearning distributions :math:`q_i` (concepts or forget sets).
    bounds
        Levels :math:`b_i \ge 0`, shape ``(m,)`` (a float when ``m = 1``).
    direction
        ``"reverse"``: :math:`\min \mathrm{KL}(p\|p_0)` s.t. :math:`\mathrm{KL}(p\|q_i)\ge b_i`
        (concept unlearning); ``"forward"``: :math:`\min\mathrm{KL}(p_0\|p)` s.t.
        :math:`\mathrm{KL}(q_i\|p)\ge b_i` (data unlearning).
    integration
        ``"auto"`` (grid for d <= 2, Monte Carlo otherwise), ``"grid"``, ``"monte_carlo"`` or a
        :class:`~dualdiff.GridQuadrature` / :class:`~dualdiff.MonteCarlo` instance.

    Notes
    -----
    Strong duality holds for both directions despite the nonconvex constraints (Khalafi,
    Ribeiro & Ding, ICML 2026), so the optimum is the closed-form :meth:`target` at the dual
    maximiser returned by :meth:`solve_dual`.
    """

    #: Direction fixed by a subclass (``None`` on the dispatching base class).
    _direction: str | None = None

    def __new__(cls, *args: Any, direction: str | None = None, **kwargs: Any) -> Any:
        """Dispatch by ``direction`` and by what ``pretrained`` is.

        A :class:`~dualdiff.GaussianMixture` gives the closed-form :class:`ReverseKLProblem`
        or :class:`ForwardKLProblem`; any other score model gives the model-level
        :class:`~dualdiff.problems.model_level.ModelReverseKLProblem` or
        :class:`~dualdiff.problems.model_level.ModelForwardKLProblem`.
        """
        if cls is KLConstrainedProblem:
            direction = "reverse" if direction is None else direction
            check_choice(direction, "direction", "KLConstrainedProblem", ["reverse", "forward"])
            pretrained = args[0] if args else kwargs.get("pretrained")
            if pretrained is not None and not isinstance(pretrained, GaussianMixture):
                from .model_level import ModelForwardKLProblem, ModelReverseKLProblem

                # registered virtual subclasses, which type.__call__ does not initialise
                if direction == "reverse":
                    ru = object.__new__(ModelReverseKLProblem)
                    ModelReverseKLProblem.__init__(ru, *args, direction=direction, **kwargs)
                    return ru
                fu = object.__new__(ModelForwardKLProblem)
                ModelForwardKLProblem.__init__(fu, *args, direction=direction, **kwargs)
                return fu
            sub = ReverseKLProblem if direction == "reverse" else ForwardKLProblem
            return super().__new__(sub)
        return super().__new__(cls)

    def __init__(
        self,
        pretrained: GaussianMixture,
        unlearn: Any,
        bounds: Any,
        *,
        direction: Literal["reverse", "forward"] | None = None,
        integration: str | GridQuadrature | MonteCarlo = "auto",
    ) -> None:
        own = self._direction
        if direction is None:
            direction = "reverse" if own is None else own  # type: ignore[assignment]
        check_choice(direction, "direction", "KLConstrainedProblem", ["reverse", "forward"])
        if own is not None and direction != own:
            raise ValueError(
                f"{type(self).__name__}: parameter 'direction'={direction!r} contradicts the "
                f"class, which solves direction={own!r}; use KLConstrainedProblem(...)"
            )
        self.direction = direction
        super().__init__(pretrained, unlearn, bounds, integration, "KLConstrainedProblem")

    def _validate_bounds(self) -> None:
        if bool((self.bounds < 0).any()):
            raise ValueError(
                f"KLConstrainedProblem: parameter 'bounds' must be >= 0 (KL levels), got "
                f"{self.bounds.tolist()}"
            )

    def estimate_constraints(  # noqa: D102
        self,
        model: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None,
        density: DensityEstimator,
        estimate_objective: bool = True,
    ) -> ConstraintEstimate:
        raise NotImplementedError  # ReverseKLProblem and ForwardKLProblem implement it

    def _slack(self, c: torch.Tensor) -> torch.Tensor:
        return c - self.bounds


class ReverseKLProblem(KLConstrainedProblem):
    """RU: ``KLConstrainedProblem(..., direction="reverse")``; see the parent class."""

    kind = "RU"
    _direction = "reverse"

    @property
    def domain_description(self) -> str:  # noqa: D102
        return (
            "lam >= 0, sum(lam) < 1, and p0^(1/(1-sum lam)) prod q_i^(-lam_i/(1-sum lam)) "
            "normalisable"
        )

    def _in_domain(self, lam: torch.Tensor) -> tuple[bool, str]:
        total = float(lam.sum())
        if not total < 1.0:
            return False, f"sum(lam) = {total} must be < 1 (for sum >= 1 the dual is -inf)"
        return log_tilt_in_domain(self.pretrained, self.unlearn, lam)

    def _domain_upper(self) -> tuple[torch.Tensor, bool]:
        return log_tilt_upper_bounds(self.pretrained, self.unlearn, cap=1.0), False

    def _projection_upper(self) -> tuple[torch.Tensor, float, bool]:
        upper = torch.full((self.m,), math.inf, dtype=torch.float64)
        if self.m == 1:
            bound = tilt_bound(self.pretrained, self.unlearn[0])
            if bound < 1.0:
                upper[0] = bound
        return upper, 1.0, False

    def sampler_constraint_models(self) -> list[Any]:  # noqa: D102
        return list(self.unlearn)

    def sampler_constraint_terms(  # noqa: D102
        self, x_final: torch.Tensor, path_kls: list[torch.Tensor]
    ) -> torch.Tensor:
        return torch.stack(path_kls)

    def estimate_constraints(  # noqa: D102
        self,
        model: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None,
        density: DensityEstimator,
        estimate_objective: bool = True,
    ) -> ConstraintEstimate:
        def terms(x: torch.Tensor, lp: torch.Tensor | None) -> torch.Tensor:
            assert lp is not None
            return lp - torch.stack([q.log_prob(x) for q in self.unlearn])

        return estimate_on_model_samples(
            self, model, n_samples=n_samples, generator=generator, density=density,
            terms=terms, needs_model_log_prob=True, log_p0=self.pretrained.log_prob,
            estimate_objective=estimate_objective,
        )

    def domain_info(self) -> dict[str, Any]:  # noqa: D102
        info = super().domain_info()
        info["tilt_bounds"] = [tilt_bound(self.pretrained, q) for q in self.unlearn]
        return info

    def _log_u(self, lam: torch.Tensor) -> tuple[torch.Tensor, float]:
        beta = 1.0 / (1.0 - float(lam.sum()))
        t = self.tables
        return beta * (t["log_p0"] - lam @ t["log_q"]), beta

    def _oracle(self, lam: torch.Tensor) -> DualEval:
        rule, t = self.rule, self.tables
        log_u, beta = self._log_u(lam)
        log_z, log_z_err = rule.log_integral(log_u)
        f = log_u - t["log_q"]  # (m, N): log p_lam - log q_i + log Z
        ef, ef_err = rule.expectation(log_u, f)
        kl = ef - log_z
        value = float(-(1 - lam.sum()) * log_z + lam @ self.bounds)
        cov = _centred_cov(rule, log_u, f)
        return DualEval(
            value=value,
            grad=self.bounds - kl,
            hess=-beta * cov,
            value_err=float((1 - lam.sum()) * log_z_err),
            grad_err=ef_err + log_z_err,
        )

    def _target(self, lam: torch.Tensor) -> GeometricTarget:
        log_u, beta = self._log_u(lam)
        log_z, _ = self.rule.log_integral(log_u)
        return GeometricTarget(
            self.pretrained,
            [LogLikelihood(q) for q in self.unlearn],
            coefficients=lam * beta,
            power=beta,
            log_normalizer=float(log_z),
            multipliers=lam,
        )

    def _objective_and_constraints(
        self, log_p: torch.Tensor
    ) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        t = self.tables
        f, fe = reverse_kl_to_pretrained(self.rule, t, log_p)
        c, ce = self.rule.integral(_xlogy_terms(log_p.expand_as(t["log_q"]), t["log_q"]))
        return f, fe, c, ce


def reverse_kl_to_pretrained(
    rule: Any, tables: dict[str, torch.Tensor], log_p: torch.Tensor
) -> tuple[float, float]:
    r"""RU/LU objective :math:`\mathrm{KL}(p\|p_0)=\int p\,(\log p-\log p_0)` and its error bar."""
    f, fe = rule.integral(_xlogy_terms(log_p, tables["log_p0"]))
    return float(f), float(fe)


class ForwardKLProblem(KLConstrainedProblem):
    """FU: ``KLConstrainedProblem(..., direction="forward")``; see the parent class."""

    kind = "FU"
    _direction = "forward"
    signed_loss = True
    sampler_form = False

    _lam_max: list[RatioInfimum] | None = None
    _domain_log_ratio: torch.Tensor | None = None
    _RULE_CACHES = ("_lam_max", "_domain_log_ratio", "_neg_ent", "_mass_q")

    @property
    def domain_description(self) -> str:  # noqa: D102
        return "lam >= 0 and p0 - sum_i lam_i q_i >= 0 everywhere (lam_i <= lam_max_i = inf p0/q_i)"

    @property
    def lam_max(self) -> list[RatioInfimum]:
        r"""Per-constraint :math:`\lambda_{\max,i} = \operatorname{ess\,inf} p_0/q_i` (+ how)."""
        if self._lam_max is None:
            pts = self.rule.points
            self._lam_max = [ratio_infimum(self.pretrained, q, pts) for q in self.unlearn]
        return self._lam_max

    def _domain_points_log_ratio(self) -> torch.Tensor:
        """``log q_i - log p0`` ``(m, M)`` on the rule, local minimisers and far rays."""
        if self._domain_log_ratio is None:
            extra = [r.argmin[None] for r in self.lam_max]
            scale = float(self.rule.points.abs().max())
            u = directions(self.dim, n_random=512)
            extra += [s * scale * u for s in (1.0, 2.0, 4.0)]
            pts = torch.cat([self.rule.points, *extra])
            with torch.no_grad():
                lp0 = self.pretrained.log_prob(pts)
                lq = torch.stack([q.log_prob(pts) for q in self.unlearn])
            self._domain_log_ratio = lq - lp0
        return self._domain_log_ratio

    def _in_domain(self, lam: torch.Tensor) -> tuple[bool, str]:
        if not float(lam.sum()) < 1.0:
            return False, f"sum(lam) = {float(lam.sum())} must be < 1"
        if self.m == 1:
            lm = self.lam_max[0].value
            if float(lam[0]) > lm * (1 + 1e-12):
                return False, f"lam = {float(lam[0])} exceeds lam_max = inf p0/q = {lm:.10g}"
            return True, ""
        pos = lam > 0
        if not bool(pos.any()):
            return True, ""
        lr = self._domain_points_log_ratio()[pos] + torch.log(lam[pos])[:, None]
        worst = float(torch.logsumexp(lr, 0).max())
        if worst > 1e-12:
            return False, (
                "p0 - sum lam_i q_i < 0 somewhere (max of log(sum lam_i q_i/p0) = "
                f"{worst:.6g} > 0)"
            )
        return True, ""

    def _projection_upper(self) -> tuple[torch.Tensor, float, bool]:
        upper = torch.tensor([r.value for r in self.lam_max], dtype=torch.float64)
        return upper, 1.0, True

    def signed_loss_coefficients(self, lam: torch.Tensor) -> tuple[float, list[float]]:  # noqa: D102
        one_m = 1.0 - float(lam.sum())
        return 1.0 / one_m, [float(v) / one_m for v in lam.tolist()]

    def estimate_constraints(  # noqa: D102
        self,
        model: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None,
        density: DensityEstimator,
        estimate_objective: bool = True,
    ) -> ConstraintEstimate:
        samplers = self.unlearn_samplers()
        assert samplers is not None
        return estimate_forward(
            self, model, n_samples=n_samples, generator=generator, density=density,
            forget=samplers, log_forget_reference=[q.log_prob for q in self.unlearn],
            retain=self.pretrained_sampler(), log_p0=self.pretrained.log_prob,
            estimate_objective=estimate_objective,
        )

    def _domain_upper(self) -> tuple[torch.Tensor, bool]:
        # lam_max is attained (closed bound) except at 1 (q_i = p0), where 1 - Lam > 0 is needed
        bounds = [min(r.value, 1.0 - 1e-9) for r in self.lam_max]
        return torch.tensor(bounds, dtype=torch.float64), True

    def domain_info(self) -> dict[str, Any]:  # noqa: D102
        info = super().domain_info()
        info["lam_max"] = [
            {
                "value": r.value,
                "certified_lower_bound": r.lower_bound,
                "certified": r.certified,
                "infimum_at_infinity": r.at_infinity,
                "method": r.method,
            }
            for r in self.lam_max
        ]
        return info

    def _entropy_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        r""":math:`\int p_0\log p_0` and :math:`\int q_i\log q_i` with error bars (cached)."""
        if not hasattr(self, "_neg_ent"):
            t = self.tables
            a, ae = self.rule.integral(_xlogy_terms(t["log_p0"], torch.zeros_like(t["log_p0"])))
            b, be = self.rule.integral(_xlogy_terms(t["log_q"], torch.zeros_like(t["log_q"])))
            self._neg_ent = (a, ae, b, be)
        return self._neg_ent

    def _extra_tables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"log_atoms": self.atoms.log_atoms(x)}

    @property
    def atoms(self) -> Atoms:
        """Distinct Gaussian components of ``p0`` and the ``q_i`` (for a stable ``p0 - lam q``)."""
        if not hasattr(self, "_atoms"):
            self._atoms = Atoms.from_mixtures([self.pretrained, *self.unlearn])
        return self._atoms

    def _q_mass(self) -> torch.Tensor:
        r""":math:`\int q_i` on the rule, ``(m,)`` (1 up to quadrature / sampling error)."""
        if not hasattr(self, "_mass_q"):
            self._mass_q = self.rule.integral(torch.exp(self.tables["log_q"]))[0]
        return self._mass_q

    def _log_w(self, lam: torch.Tensor) -> torch.Tensor:
        r""":math:`\log(p_0 - \sum_i \lambda_i q_i)` on the rule (raises outside the domain)."""
        log_w = signed_log_sum(self.tables["log_atoms"], self.atoms.signed_coeffs(lam))
        if bool(torch.isnan(log_w).any()):
            raise ValueError("ForwardKLProblem: p0 - sum lam q < 0 on the integration points")
        return log_w

    def _oracle(self, lam: torch.Tensor) -> DualEval:
        rule, t = self.rule, self.tables
        lam_sum = float(lam.sum())
        log_w = self._log_w(lam)
        neg_h0, neg_h0_e, neg_hq, neg_hq_e = self._entropy_terms()
        wlogw, wlogw_e = rule.integral(_xlogy_terms(log_w, torch.zeros_like(log_w)))
        one_m = 1.0 - lam_sum
        value = float(
            neg_h0 - lam @ neg_hq - wlogw + one_m * math.log(one_m) + lam @ self.bounds
        )
        log_p = log_w - math.log(one_m)
        kl, kl_e = rule.integral(_xlogy_terms(t["log_q"], log_p.expand_as(t["log_q"])))
        # Exact derivative of the value as computed on the rule: on a Monte Carlo rule the
        # q_i integrate to 1 only up to sampling error, adding (mass_i - 1)(1 + log(1 - Lam)).
        mass_q = self._q_mass()
        qq = torch.exp(t["log_q"][:, None, :] + t["log_q"][None, :, :] - log_w)
        qq = torch.where(torch.isfinite(qq), qq, torch.zeros_like(qq))
        m = self.m
        iq, _ = rule.integral(qq.reshape(m * m, -1))
        hess = -(iq.reshape(m, m) - 1.0 / one_m)
        return DualEval(
            value=value,
            grad=self.bounds - kl + (mass_q - 1.0) * (1.0 + math.log(one_m)),
            hess=hess,
            value_err=float(neg_h0_e + lam @ neg_hq_e + wlogw_e),
            grad_err=kl_e,
        )

    def _target(self, lam: torch.Tensor) -> SignedMixtureTarget:
        return SignedMixtureTarget(self.pretrained, self.unlearn, lam, atoms=self.atoms)

    def _objective_and_constraints(
        self, log_p: torch.Tensor
    ) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        t = self.tables
        f, fe = self.rule.integral(_xlogy_terms(t["log_p0"], log_p))
        c, ce = self.rule.integral(_xlogy_terms(t["log_q"], log_p.expand_as(t["log_q"])))
        return float(f), float(fe), c, ce
