r"""Likelihood-constrained unlearning (LU); see :doc:`/mathematics`.

.. math::
    \min_p \mathrm{KL}(p\|p_0)\ \text{s.t.}\ E_{x\sim p}[\ell_i(x)]\le\tau_i,\qquad
    p_\lambda \propto p_0\,e^{-\sum_i\lambda_i\ell_i},\qquad
    g(\lambda) = -\log E_{p_0}\big[e^{-\sum_i\lambda_i\ell_i}\big] - \lambda^\top\tau .

The problem is convex (the constraint is linear in :math:`p`). The other reading,
:math:`E_{x\sim q}[\log p(x)] \le \tau` under the reverse-KL objective, is ill-posed (its dual is
:math:`-\infty` for every :math:`\lambda>0`) and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, overload

import torch

from .._errors import IllPosedProblemError
from .._validation import check_choice
from ..domain import log_tilt_in_domain, log_tilt_upper_bounds, tilt_bound
from ..duality import Certificate, DualEval
from ..integration import GridQuadrature, MonteCarlo
from ..models.gaussian_mixture import GaussianMixture
from ..models.protocol import ScoreModel
from ..targets import GeometricTarget
from ..targets.potentials import CallableLikelihood, DensityLikelihood, LogLikelihood, Potential
from ._estimates import estimate_on_model_samples
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
from .kl import _centred_cov, reverse_kl_to_pretrained

__all__ = ["LikelihoodConstrainedProblem"]

_ILL_POSED = (
    "LikelihoodConstrainedProblem: expectation='unlearn' asks for E_{{x~q}}[log p(x)] <= tau "
    "under the reverse-KL objective KL(p||p0). That problem is ill-posed: for every lam > 0 the "
    "Lagrangian is unbounded below (put p = 0 on part of q's support: E_q[log p] -> -inf while "
    "KL(p||p0) stays finite), so the dual is -inf for every lam > 0, there is no saddle point and "
    "no multiplier or certificate can be computed. Use expectation='model' (bound the "
    "likelihood of generated samples, E_{{x~p}}[l(x)] <= tau), or "
    "KLConstrainedProblem(direction='forward') for the forward-KL objective, where this "
    "reading is data unlearning (FU). Got {got!r}."
)


class LikelihoodConstrainedProblem(AnalyticProblem):
    r"""Unlearning with likelihood constraints on the model's own samples (LU).

    Parameters
    ----------
    pretrained
        :math:`p_0`, a :class:`~dualdiff.GaussianMixture`.
    unlearn
        List of ``m >= 1`` unlearning distributions :math:`q_i`.
    bounds
        Levels :math:`\tau_i`, shape ``(m,)``.
    likelihood
        ``"log"`` (:math:`\ell_i=\log q_i`, default), ``"density"`` (:math:`\ell_i = q_i`) or a
        callable ``fn(x, i) -> (...)`` giving :math:`\ell_i(x)` for ``x`` of shape ``(..., d)``.
    expectation
        ``"model"`` (:math:`E_{x\sim p}[\ell_i(x)]`, the well-posed problem). ``"unlearn"`` —
        :math:`E_{x\sim q}[\log p(x)]` — is refused with :class:`~dualdiff.IllPosedProblemError`.
    integration
        As in :class:`KLConstrainedProblem`.
    """

    kind = "LU"
    sample_functional = True

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """Dispatch by what ``pretrained`` is.

        A :class:`~dualdiff.GaussianMixture` gives this closed-form class; any other score
        model gives :class:`~dualdiff.problems.model_level.ModelLikelihoodProblem`.
        """
        pretrained = args[0] if args else kwargs.get("pretrained")
        stated_with_models = pretrained is not None and not isinstance(pretrained, GaussianMixture)
        if cls is LikelihoodConstrainedProblem and stated_with_models:
            from .model_level import ModelLikelihoodProblem

            # a registered virtual subclass, which type.__call__ does not initialise
            obj = object.__new__(ModelLikelihoodProblem)
            ModelLikelihoodProblem.__init__(obj, *args, **kwargs)
            return obj
        return super().__new__(cls)

    @overload
    def __init__(
        self,
        pretrained: GaussianMixture,
        unlearn: Any,
        bounds: Any,
        *,
        likelihood: str | Callable[[torch.Tensor, int], torch.Tensor] = "log",
        expectation: str = "model",
        integration: str | GridQuadrature | MonteCarlo = "auto",
    ) -> None: ...

    @overload
    def __init__(  # the model-level problem (model_level.py), typed for the caller
        self,
        pretrained: ScoreModel,
        unlearn: Any,
        bounds: Any,
        *,
        likelihood: str = "log",
        expectation: str = "model",
        pretrained_data: Any = None,
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
        likelihood: str | Callable[[torch.Tensor, int], torch.Tensor] = "log",
        expectation: str = "model",
        integration: str | GridQuadrature | MonteCarlo = "auto",
        **model_options: Any,
    ) -> None:
        owner = "LikelihoodConstrainedProblem"
        if model_options:
            raise TypeError(
                f"{owner}: keyword(s) {sorted(model_options)} apply only when 'pretrained' is "
                "a score model (the model-level problem); with a GaussianMixture the keywords "
                "are 'likelihood', 'expectation' and 'integration'"
            )
        if expectation == "unlearn":
            raise IllPosedProblemError(_ILL_POSED.format(got=expectation))
        check_choice(expectation, "expectation", owner, ["model"])
        if not callable(likelihood):
            check_choice(likelihood, "likelihood", owner, ["log", "density"])
        self.likelihood = likelihood
        super().__init__(pretrained, unlearn, bounds, integration, owner)
        self.potentials: list[Potential] = self._make_potentials()

    def _make_potentials(self) -> list[Potential]:
        if self.likelihood == "log":
            return [LogLikelihood(q) for q in self.unlearn]
        if self.likelihood == "density":
            return [DensityLikelihood(q) for q in self.unlearn]
        fn = self.likelihood
        assert callable(fn)
        return [
            CallableLikelihood(lambda x, i=i: fn(x, i))  # type: ignore[misc]
            for i in range(self.m)
        ]

    @property
    def likelihood_name(self) -> str:
        """``"log"``, ``"density"`` or ``"callable"``."""
        return self.likelihood if isinstance(self.likelihood, str) else "callable"

    def _extra_tables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ell = torch.stack([p.value(x).to(torch.float64) for p in self._make_potentials()])
        if not bool(torch.isfinite(ell).all()):
            raise ValueError(
                "LikelihoodConstrainedProblem: the likelihood functional returned NaN/inf on "
                "the integration points"
            )
        return {"ell": ell}

    @property
    def domain_description(self) -> str:  # noqa: D102
        if self.likelihood_name == "log":
            return "lam >= 0 with p0 * prod q_i^(-lam_i) normalisable"
        return "lam >= 0 with E_p0[exp(-sum lam_i l_i)] finite"

    def _in_domain(self, lam: torch.Tensor) -> tuple[bool, str]:
        if self.likelihood_name == "log":
            return log_tilt_in_domain(self.pretrained, self.unlearn, lam)
        return True, ""

    def _domain_upper(self) -> tuple[torch.Tensor, bool]:
        if self.likelihood_name == "log":
            return log_tilt_upper_bounds(self.pretrained, self.unlearn), False
        return super()._domain_upper()

    def _projection_upper(self) -> tuple[torch.Tensor, float, bool]:
        upper = torch.full((self.m,), float("inf"), dtype=torch.float64)
        if self.m == 1 and self.likelihood_name == "log":
            upper[0] = tilt_bound(self.pretrained, self.unlearn[0])
        return upper, float("inf"), False

    def _ell(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\ell_i(x)` ``(m, n)`` float64 (differentiable in ``x``)."""
        return torch.stack([pot.value(x).to(torch.float64) for pot in self.potentials])

    def sampler_constraint_terms(  # noqa: D102
        self, x_final: torch.Tensor, path_kls: list[torch.Tensor]
    ) -> torch.Tensor:
        return self._ell(x_final)

    def estimate_constraints(  # noqa: D102
        self,
        model: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None,
        density: DensityEstimator,
        estimate_objective: bool = True,
    ) -> ConstraintEstimate:
        return estimate_on_model_samples(
            self, model, n_samples=n_samples, generator=generator, density=density,
            terms=lambda x, lp: self._ell(x), needs_model_log_prob=False,
            log_p0=self.pretrained.log_prob, estimate_objective=estimate_objective,
        )

    def _log_u(self, lam: torch.Tensor) -> torch.Tensor:
        t = self.tables
        return t["log_p0"] - lam @ t["ell"]

    @property
    def closed_form(self) -> bool:
        """Whether the dual and the target are exact (``likelihood="log"``, Gaussian ``q_i``)."""
        return self.likelihood_name == "log" and all(is_single_gaussian(q) for q in self.unlearn)

    def _exact(self, lam: torch.Tensor) -> TiltedMixture | None:
        r"""The exact target mixture :math:`p_0\prod_i q_i^{-\lambda_i}` (``None`` if none)."""
        if not self.closed_form:
            return None
        return tilted_mixture(self.pretrained, self.unlearn, lam.tolist(), 1.0)

    def _envelope(self, lam: torch.Tensor) -> TiltedMixture | None:
        if self.likelihood_name == "log":
            return tilted_envelope(self.pretrained, self.unlearn, lam.tolist(), 1.0)
        if self.likelihood_name == "density":  # exp(-lam q) <= 1: p0 bounds the target
            return tilted_envelope(self.pretrained, [], [], 1.0)
        return None

    @property
    def _envelope_moves(self) -> bool:
        # density likelihood: the envelope is p0 itself, already in the default proposal
        return self.likelihood_name == "log"

    def _exact_moments(self, mix: TiltedMixture) -> tuple[torch.Tensor, torch.Tensor]:
        quads = [gaussian_log_quadratic(q.means[0], q.covariances[0]) for q in self.unlearn]
        return quadratic_moments(mix, quads)

    def _oracle(self, lam: torch.Tensor) -> DualEval:
        mix = self._exact(lam)
        if mix is not None:
            lz = mix.log_mass
            e_ell, cov = self._exact_moments(mix)
            value = float(-lz - lam @ self.bounds)
            eps = 1e-14
            return DualEval(
                value=value,
                grad=e_ell - self.bounds,
                hess=-cov,
                value_err=eps * (1.0 + abs(value)),
                grad_err=eps * (1.0 + e_ell.abs()),
            )
        self._follow(lam)
        rule, t = self.rule, self.tables
        log_u = self._log_u(lam)
        log_z, log_z_err = rule.log_integral(log_u)
        e_ell, e_err = rule.expectation(log_u, t["ell"])
        value = float(-log_z - lam @ self.bounds)
        tail = self._tail_fraction(lam, float(log_z))
        return DualEval(
            value=value,
            grad=e_ell - self.bounds,
            hess=-_centred_cov(rule, log_u, t["ell"]),
            value_err=float(log_z_err) + math.log1p(tail),
            grad_err=e_err + tail * (1.0 + e_ell.abs()),
        )

    def _target(self, lam: torch.Tensor) -> GeometricTarget:
        mix = self._exact(lam)
        if mix is not None:
            log_z = mix.log_mass
        else:
            log_z = float(self.rule.log_integral(self._log_u(lam))[0])
        return GeometricTarget(
            self.pretrained,
            self.potentials,
            coefficients=lam.clone(),
            power=1.0,
            log_normalizer=float(log_z),
            multipliers=lam,
        )

    def target_mixture(self, lam: Any) -> GaussianMixture:
        r"""The exact target as a :class:`~dualdiff.GaussianMixture` (closed-form case only).

        Component :math:`k` of :math:`p_0\prod_i q_i^{-\lambda_i}` has precision
        :math:`P_k-\sum_i\lambda_iP_i`; exact sampling and log-density in any dimension.
        """
        lam_t = self._check_multipliers(lam, "target_mixture")
        mix = self._exact(lam_t)
        if mix is None:
            raise ValueError(
                "LikelihoodConstrainedProblem.target_mixture: the target is a Gaussian mixture "
                "only for likelihood='log' with single-Gaussian unlearn distributions, got "
                f"likelihood={self.likelihood_name!r} and unlearn components "
                f"{[q.n_components for q in self.unlearn]}"
            )
        return mix.mixture()

    def _exact_certificate(self, lam: torch.Tensor, status: str) -> Certificate | None:
        mix = self._exact(lam)
        if mix is None:
            return None
        e_ell, _ = self._exact_moments(mix)
        # KL(p_lam || p0) = E[log p_lam - log p0] = -lam . E[l] - log Z
        f = float(-lam @ e_ell - mix.log_mass)
        eps = 1e-14
        ev = self._oracle(lam)
        mass = self._independent_mass(self._target(lam))
        return self._certify(
            lam,
            f,
            eps * (1.0 + abs(f)),
            e_ell,
            eps * (1.0 + e_ell.abs()),
            "closed_form",
            status,
            mass if math.isfinite(mass) else float(mix.weights.sum()),
            ev,
        )

    def _infeasible_at(self) -> float:
        return 1e8 if self._certified_infeasible() else math.inf

    def _certified_infeasible(self) -> bool:
        # l_i = q_i > 0 with inf q_i = 0 (far tails): every tau_i > 0 is attainable and
        # tau_i <= 0 is not. l_i = log q_i -> -inf far away: every level is attainable. A
        # callable's infimum is unknown: an increasing dual is never called infeasible.
        if self.likelihood_name == "density":
            return bool((self.bounds <= 0).any())
        return False

    def _objective_and_constraints(
        self, log_p: torch.Tensor
    ) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        t = self.tables
        f, fe = reverse_kl_to_pretrained(self.rule, t, log_p)
        c, ce = self.rule.integral(torch.exp(log_p) * t["ell"])
        return f, fe, c, ce

    def _slack(self, c: torch.Tensor) -> torch.Tensor:
        return self.bounds - c
