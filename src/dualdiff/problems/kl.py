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
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch

from .._validation import check_choice
from ..domain import (
    RatioInfimum,
    combined_ratio_max,
    directions,
    log_tilt_in_domain,
    log_tilt_upper_bounds,
    ratio_infimum,
    tilt_bound,
)
from ..duality import Certificate, DualEval
from ..integration import GridQuadrature, MonteCarlo
from ..models.gaussian_mixture import GaussianMixture
from ..models.protocol import ScoreModel
from ..targets import GeometricTarget, SignedMixtureTarget
from ..targets._atoms import Atoms, signed_log_sum
from ..targets.potentials import LogLikelihood
from ._estimates import estimate_forward, estimate_on_model_samples
from ._gaussian_tilt import (
    TiltedMixture,
    gaussian_log_quadratic,
    is_single_gaussian,
    quadratic_moments,
    tilted_envelope,
    tilted_mixture,
)
from .base import AnalyticProblem
from .contract import ConstraintEstimate, DensityEstimator

__all__ = ["ForwardKLProblem", "KLConstrainedProblem", "ReverseKLProblem"]

#: FU with m >= 2: lam is in the domain when max log(sum lam_i q_i / p0) <= tol, the rounding
#: level of the log-ratio (points on the box bounds lam_i = lam_max_i give exactly 0).
_FU_DOMAIN_ROUNDING = 1e-12
#: Local search for the FU domain only when the table's maximum log-ratio is above -2 nats.
_FU_SEARCH_BELOW = 2.0


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
                if not callable(getattr(pretrained, "score", None)):
                    raise TypeError(
                        "KLConstrainedProblem: parameter 'pretrained' must be a "
                        "GaussianMixture (closed form) or a score model with score(x, t), got "
                        f"{type(pretrained).__name__} {pretrained!r:.60}"
                    )
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

    @overload
    def __init__(
        self,
        pretrained: GaussianMixture,
        unlearn: Any,
        bounds: Any,
        *,
        direction: Literal["reverse", "forward"] | None = None,
        integration: str | GridQuadrature | MonteCarlo = "auto",
    ) -> None: ...

    @overload
    def __init__(  # the model-level problems (model_level.py), typed for the caller
        self,
        pretrained: ScoreModel,
        unlearn: Any,
        bounds: Any,
        *,
        direction: Literal["reverse", "forward"] | None = None,
        log_ratio: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pretrained_data: Any = None,
        training_set_size: int | None = None,
        lam_max: Any = None,
        event_shape: Sequence[int] | None = None,
        density: DensityEstimator | None = None,
        pool_size: int = 2048,
    ) -> None: ...

    def __init__(
        self,
        pretrained: GaussianMixture | ScoreModel,
        unlearn: Any,
        bounds: Any,
        *,
        direction: Literal["reverse", "forward"] | None = None,
        integration: str | GridQuadrature | MonteCarlo = "auto",
        **model_options: Any,
    ) -> None:
        if model_options:
            raise TypeError(
                f"{type(self).__name__}: keyword(s) {sorted(model_options)} apply only when "
                "'pretrained' is a score model (the model-level problems); with a "
                "GaussianMixture the keywords are 'direction' and 'integration'"
            )
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

    @property
    def closed_form(self) -> bool:
        """Whether the dual and the target are exact (single-Gaussian ``p0`` and ``q_i``)."""
        return is_single_gaussian(self.pretrained) and all(
            is_single_gaussian(q) for q in self.unlearn
        )

    def _exact(self, lam: torch.Tensor) -> TiltedMixture | None:
        r"""The exact Gaussian target (precision :math:`\beta(P_0-\sum_i\lambda_iP_i)`)."""
        if not self.closed_form:
            return None
        beta = 1.0 / (1.0 - float(lam.sum()))
        return tilted_mixture(self.pretrained, self.unlearn, (beta * lam).tolist(), beta)

    def _envelope(self, lam: torch.Tensor) -> TiltedMixture | None:
        beta = 1.0 / (1.0 - float(lam.sum()))
        return tilted_envelope(self.pretrained, self.unlearn, (beta * lam).tolist(), beta)

    def _exact_moments(
        self, lam: torch.Tensor, mix: TiltedMixture
    ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
        r"""``(E[log p0, log q_1..m], Cov, E[log u], M)`` under the exact target.

        ``M`` ``(m, m+1)`` maps ``(log p0, log q)`` to :math:`f_i = \log u - \log q_i`.
        """
        k0 = int(torch.nonzero(self.pretrained.weights > 0)[0])
        quads = [
            gaussian_log_quadratic(self.pretrained.means[k0], self.pretrained.covariances[k0])
        ]
        quads += [gaussian_log_quadratic(q.means[0], q.covariances[0]) for q in self.unlearn]
        mean, cov = quadratic_moments(mix, quads)
        beta = 1.0 / (1.0 - float(lam.sum()))
        coef = torch.cat([torch.tensor([beta], dtype=torch.float64), -beta * lam])
        e_log_u = float(coef @ mean)
        M = coef.expand(self.m, -1).clone()
        M[:, 1:] -= torch.eye(self.m, dtype=torch.float64)
        return mean, cov, e_log_u, M

    def _oracle(self, lam: torch.Tensor) -> DualEval:
        mix = self._exact(lam)
        if mix is not None:
            beta = 1.0 / (1.0 - float(lam.sum()))
            lz = mix.log_mass
            mean, cov, e_log_u, M = self._exact_moments(lam, mix)
            kl = e_log_u - mean[1:] - lz
            value = float(-(1 - lam.sum()) * lz + lam @ self.bounds)
            eps = 1e-14
            return DualEval(
                value=value,
                grad=self.bounds - kl,
                hess=-beta * (M @ cov @ M.T),
                value_err=eps * (1.0 + abs(value)),
                grad_err=eps * (1.0 + kl.abs()),
            )
        self._follow(lam)
        rule, t = self.rule, self.tables
        log_u, beta = self._log_u(lam)
        log_z, log_z_err = rule.log_integral(log_u)
        f = log_u - t["log_q"]  # (m, N): log p_lam - log q_i + log Z
        ef, ef_err = rule.expectation(log_u, f)
        kl = ef - log_z
        value = float(-(1 - lam.sum()) * log_z + lam @ self.bounds)
        cov = _centred_cov(rule, log_u, f)
        tail = self._tail_fraction(lam, float(log_z))
        return DualEval(
            value=value,
            grad=self.bounds - kl,
            hess=-beta * cov,
            value_err=float((1 - lam.sum()) * (log_z_err + math.log1p(tail))),
            grad_err=ef_err + log_z_err + math.log1p(tail) + tail * (1.0 + ef.abs()),
        )

    def _target(self, lam: torch.Tensor) -> GeometricTarget:
        mix = self._exact(lam)
        beta = 1.0 / (1.0 - float(lam.sum()))
        if mix is not None:
            log_z = mix.log_mass
        else:
            log_z = float(self.rule.log_integral(self._log_u(lam)[0])[0])
        return GeometricTarget(
            self.pretrained,
            [LogLikelihood(q) for q in self.unlearn],
            coefficients=lam * beta,
            power=beta,
            log_normalizer=float(log_z),
            multipliers=lam,
        )

    def target_mixture(self, lam: Any) -> GaussianMixture:
        """The exact Gaussian target (closed-form case: single-Gaussian ``p0`` and ``q_i``)."""
        lam_t = self._check_multipliers(lam, "target_mixture")
        mix = self._exact(lam_t)
        if mix is None:
            raise ValueError(
                "KLConstrainedProblem.target_mixture: the RU target is Gaussian only for a "
                "single-Gaussian pretrained model and single-Gaussian unlearn distributions, "
                f"got {self.pretrained.n_components} and "
                f"{[q.n_components for q in self.unlearn]} components"
            )
        return mix.mixture()

    def _exact_certificate(self, lam: torch.Tensor, status: str) -> Certificate | None:
        mix = self._exact(lam)
        if mix is None:
            return None
        mean, _, e_log_u, _ = self._exact_moments(lam, mix)
        log_z = mix.log_mass
        f = e_log_u - log_z - float(mean[0])  # KL(p_lam || p0)
        c = e_log_u - mean[1:] - log_z  # KL(p_lam || q_i)
        eps = 1e-14
        mass = self._independent_mass(self._target(lam))
        return self._certify(
            lam,
            f,
            eps * (1.0 + abs(f)),
            c,
            eps * (1.0 + c.abs()),
            "closed_form",
            status,
            mass if math.isfinite(mass) else float(mix.weights.sum()),
            self._oracle(lam),
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
    _domain_pts: torch.Tensor | None = None
    _RULE_CACHES = (
        "_lam_max",
        "_domain_log_ratio",
        "_domain_pts",
        "_neg_ent",
        "_mass_q",
        "_ratio_cache",
    )

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
            self._domain_pts = pts
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
        worst, where = self._combined_ratio_max(lam)
        if worst > _FU_DOMAIN_ROUNDING:
            return False, (
                "p0 - sum lam_i q_i < 0 somewhere (max of log(sum lam_i q_i/p0) = "
                f"{worst:.6g} at x = {where.tolist()}, must be <= {_FU_DOMAIN_ROUNDING:g})"
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

    def _in_domain_search(self, lam: torch.Tensor) -> bool:
        # Line searches screen on the table only (fast); the returned multipliers get the
        # full local-maximisation check in solve_dual and are pulled back if they fail it.
        if self.m == 1 or not float(lam.sum()) < 1.0:
            return self._in_domain(lam)[0]
        pos = lam > 0
        if not bool(pos.any()):
            return True
        lr = self._domain_points_log_ratio()[pos] + torch.log(lam[pos])[:, None]
        return float(torch.logsumexp(lr, 0).max()) <= _FU_DOMAIN_ROUNDING

    def _combined_ratio_max(self, lam: torch.Tensor) -> tuple[float, torch.Tensor]:
        r""":math:`\max_x\log\sum_i\lambda_iq_i/p_0`: table maximum, then local maximisation.

        Starts: the 8 largest table values (rule points, ``lam_max`` minimisers, far rays) and
        every component mean of :math:`p_0` and of the :math:`q_i` with :math:`\lambda_i>0`.
        Cached per ``lam``.
        """
        key = tuple(lam.tolist())
        cache = self.__dict__.setdefault("_ratio_cache", {})
        if key in cache:
            return cache[key]
        pos = lam > 0
        lr = self._domain_points_log_ratio()[pos] + torch.log(lam[pos])[:, None]
        comb = torch.logsumexp(lr, 0)
        if float(comb.max()) > 0 or float(comb.max()) < -_FU_SEARCH_BELOW:
            # outside on the table already, or far inside: between points of a grid that
            # resolves every component the log-ratio cannot climb 2 nats (ratio 0.14 -> 1)
            i = int(comb.argmax())
            out = (float(comb[i]), self._domain_points()[i])
        else:
            pts = self._domain_points()
            top = torch.topk(comb, min(8, comb.numel())).indices
            means = [self.pretrained.means] + [
                q.means for q, p in zip(self.unlearn, pos.tolist(), strict=True) if p
            ]
            starts = torch.cat([pts[top], *means])
            out = combined_ratio_max(self.pretrained, self.unlearn, lam, starts)
            out = max(out, (float(comb.max()), pts[int(comb.argmax())]), key=lambda t: t[0])
        if len(cache) > 4096:
            cache.clear()
        cache[key] = out
        return out

    def _domain_points(self) -> torch.Tensor:
        """The points of :meth:`_domain_points_log_ratio`, ``(M, d)``."""
        self._domain_points_log_ratio()
        assert self._domain_pts is not None
        return self._domain_pts

    def lam_max_along(self, direction: Any) -> float:
        r"""Largest :math:`s` with :math:`s\,u` in the dual domain, ``u`` a direction ``(m,)``.

        Bisection on :meth:`in_domain` (60 halvings) between 0 and the first of
        :math:`\sum_i s u_i = 1` and the per-constraint bounds.
        """
        u = torch.as_tensor(direction, dtype=torch.float64).reshape(-1)
        if u.numel() != self.m or bool((u < 0).any()) or not bool((u > 0).any()):
            raise ValueError(
                f"ForwardKLProblem.lam_max_along: parameter 'direction' must have m={self.m} "
                f"non-negative entries, not all zero, got {u.tolist()}"
            )
        hi = 1.0 / float(u.sum())
        for r, ui in zip(self.lam_max, u.tolist(), strict=True):
            if ui > 0:
                hi = min(hi, r.value / ui)
        lo = 0.0
        if self.in_domain(hi * u):
            return hi
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.in_domain(mid * u):
                lo = mid
            else:
                hi = mid
        return lo

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

    def _entropy_point_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`p_0\log p_0` ``(N,)`` and :math:`q_i\log q_i` ``(m, N)`` on the rule's points."""
        t = self.tables
        return (
            _xlogy_terms(t["log_p0"], torch.zeros_like(t["log_p0"])),
            _xlogy_terms(t["log_q"], torch.zeros_like(t["log_q"])),
        )

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
        neg_h0, _, neg_hq, _ = self._entropy_terms()
        w_terms = _xlogy_terms(log_w, torch.zeros_like(log_w))
        wlogw, _ = rule.integral(w_terms)
        # One error bar for the combined integrand p0 log p0 - sum lam q log q - w log w: the
        # three integrals share their points and their errors largely cancel (summing the
        # separate bars overstates a Monte Carlo standard error many times over).
        p_terms, q_terms = self._entropy_point_terms()
        _, value_err = rule.integral(p_terms - lam @ q_terms - w_terms)
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
            value_err=float(value_err),
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
