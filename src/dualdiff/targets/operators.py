r"""Closed-form optimal unlearned distributions, each a reweighting of the pretrained model.

Two operators cover the three problems (the closed-form targets of :doc:`/mathematics`):

* :class:`GeometricTarget` — :math:`p_\lambda \propto p_0^{a}\exp(-\sum_i c_i\ell_i)`.
  RU: :math:`a = 1/(1-\Lambda)`, :math:`c_i=\lambda_i/(1-\Lambda)`, :math:`\ell_i=\log q_i`
  (geometric reweighting / product of experts). LU: :math:`a=1`, :math:`c_i=\lambda_i` and
  :math:`\ell_i` the likelihood functional (exponential tilt).
* :class:`SignedMixtureTarget` — FU: :math:`p_\lambda = (p_0-\sum_i\lambda_i q_i)/(1-\Lambda)`,
  exact under noising.

Both expose the reweighting :math:`\log w_\lambda = \log p_\lambda - \log p_0` that reweighted
denoising score matching trains with, a normalised ``log_prob``, ``score(x, t)`` and
``sample(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._errors import DualDomainError, NonFiniteError
from ..models.gaussian_mixture import GaussianMixture
from ._atoms import Atoms, signed_log_sum
from ._mcmc import mala
from .potentials import Potential

__all__ = ["GeometricTarget", "SignedMixtureTarget", "Target"]


def _is_zero_time(t: torch.Tensor | float) -> bool:
    if isinstance(t, torch.Tensor):
        return bool((t == 0).all())
    return float(t) == 0.0


class Target:
    """Common behaviour of the closed-form targets (a :class:`~dualdiff.ScoreModel`).

    Attributes
    ----------
    p0
        The pretrained distribution.
    multipliers
        The dual variables ``lam``, shape ``(m,)``.
    """

    p0: Any
    multipliers: torch.Tensor
    #: Upper bound of ``log_weight`` if known (enables exact rejection sampling), else None.
    max_log_weight: float | None = None
    #: "exact" if ``score(x, t)`` is the exact noised score for every t, else "composed".
    score_at_positive_t: str = "exact"

    def log_weight(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log w_\lambda(x) = \log p_\lambda(x) - \log p_0(x)`; ``(..., d) -> (...)``."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-density of the target at ``x`` ``(..., d)``; returns ``(...)``."""
        return (self.p0.log_prob(x) + self.log_weight(x)).to(x.dtype)

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        """Score at diffusion time ``t`` (see :attr:`score_at_positive_t`)."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """Event dimension."""
        return int(self.p0.dim)

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, mcmc_steps: int = 200
    ) -> torch.Tensor:
        r"""Draw ``n`` samples ``(n, d)``.

        Exact rejection sampling from ``p0`` when the weight is bounded
        (:attr:`max_log_weight` known and the acceptance rate above 1e-3); otherwise
        sampling-importance-resampling from ``p0`` followed by ``mcmc_steps`` MALA steps on the
        target (asymptotically exact; documented approximation).
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample: 'n' must be an int >= 0, got {n!r}")
        with torch.no_grad():
            if self.max_log_weight is not None:
                out = self._rejection(n, generator)
                if out is not None:
                    return out
            pool = self.p0.sample(max(4 * n, 1000), generator=generator)
            logw = self.log_weight(pool)
            probs = torch.softmax(logw, 0)
            idx = torch.multinomial(probs, n, replacement=True, generator=generator)
            x = pool[idx]
        x = mala(
            self.log_prob,
            lambda z: self.score(z, 0.0),
            x,
            steps=mcmc_steps,
            step_size=0.1 * float(torch.diagonal(self.p0.covariance()).min()),
            generator=generator,
        )
        return x

    def _rejection(self, n: int, generator: torch.Generator | None) -> torch.Tensor | None:
        assert self.max_log_weight is not None
        out: list[torch.Tensor] = []
        total, drawn = 0, 0
        while total < n:
            batch = self.p0.sample(max(2 * (n - total), 256), generator=generator)
            log_acc = self.log_weight(batch) - self.max_log_weight
            u = torch.rand(batch.shape[0], dtype=batch.dtype, generator=generator)
            keep = batch[torch.log(u) < log_acc]
            drawn += batch.shape[0]
            out.append(keep)
            total += keep.shape[0]
            if drawn > 2000 and total / drawn < 1e-3:
                return None
        return torch.cat(out)[:n]

    def population_ess(self, rule: Any) -> float:
        r"""Population effective sample size :math:`1/E_{p_0}[w_\lambda^2]` in ``(0, 1]``.

        Computed on an :class:`~dualdiff.integration.IntegrationRule`: it measures how learnable
        the reweighting is by weighted training on samples of ``p0`` (per-batch ESS
        overstates it).
        """
        lp0 = self.p0.log_prob(rule.points)
        lw = self.log_weight(rule.points)
        log_e_w2, _ = rule.log_integral(lp0 + 2 * lw)
        return float(torch.exp(-log_e_w2))


class GeometricTarget(Target):
    r"""Geometric reweighting / exponential tilt :math:`p \propto p_0^{a} e^{-\sum_i c_i \ell_i}`.

    .. math::
        \log w_\lambda(x) = (a-1)\log p_0(x) - \sum_i c_i\,\ell_i(x) - \log Z,
        \qquad Z = \int p_0^{a} e^{-\sum_i c_i\ell_i}\,dx .

    Score at ``t = 0``: :math:`a\,s_0 - \sum_i c_i\nabla\ell_i`. At ``t > 0`` the same
    combination of *noised* quantities is returned — the composed (ESD-style) score, an
    approximation: powers and products do not commute with noising (see
    :ref:`the diffusion view <diffusion-view>`).

    Parameters
    ----------
    p0
        Pretrained distribution with ``log_prob`` and ``score``.
    potentials
        The :math:`\ell_i`, length ``m``.
    coefficients
        :math:`c_i \ge 0`, shape ``(m,)``.
    power
        :math:`a > 0`.
    log_normalizer
        :math:`\log Z` (computed by the problem's integration rule).
    multipliers
        The dual variables this target was built from, ``(m,)`` (for reporting).
    """

    score_at_positive_t = "composed"

    def __init__(
        self,
        p0: Any,
        potentials: Sequence[Potential],
        coefficients: torch.Tensor,
        power: float,
        log_normalizer: float,
        multipliers: torch.Tensor,
    ) -> None:
        if not math.isfinite(log_normalizer):
            raise NonFiniteError(
                f"GeometricTarget: log-normaliser is {log_normalizer}; the tilt "
                f"p0^{power} * exp(-sum c_i l_i) is not normalisable at multipliers "
                f"{multipliers.tolist()}"
            )
        self.p0 = p0
        self.potentials = list(potentials)
        self.coefficients = coefficients
        self.power = float(power)
        self.log_normalizer = float(log_normalizer)
        self.multipliers = multipliers
        if self.power == 1.0 and all(pt.nonnegative for pt in self.potentials):
            self.max_log_weight = -self.log_normalizer

    def __repr__(self) -> str:
        return (
            f"GeometricTarget(power={self.power:.6g}, coefficients={self.coefficients.tolist()}, "
            f"potentials={[p.name for p in self.potentials]}, log_Z={self.log_normalizer:.6g})"
        )

    def log_unnormalized(self, x: torch.Tensor, log_p0: torch.Tensor | None = None) -> torch.Tensor:
        r""":math:`a\log p_0(x) - \sum_i c_i \ell_i(x)` (``log_p0`` may be passed if known)."""
        lp0 = self.p0.log_prob(x) if log_p0 is None else log_p0
        out = self.power * lp0
        for c, pot in zip(self.coefficients, self.potentials, strict=True):
            if float(c) != 0.0:
                out = out - c.to(out.dtype) * pot.value(x)
        return out

    def log_weight(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        lp0 = self.p0.log_prob(x)
        return (self.log_unnormalized(x, lp0) - lp0 - self.log_normalizer).to(x.dtype)

    def score(  # noqa: D102
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        s = self.power * self.p0.score(x, t)
        for c, pot in zip(self.coefficients, self.potentials, strict=True):
            if float(c) != 0.0:
                s = s - c.to(s.dtype) * pot.grad(x, t)
        return s.to(x.dtype)


class SignedMixtureTarget(Target):
    r"""Signed mixture :math:`p_\lambda = (p_0 - \sum_i\lambda_i q_i)/(1-\Lambda)` (FU).

    .. math::
        \log w_\lambda(x) = \log\Big(1-\sum_i\lambda_i\,\tfrac{q_i(x)}{p_0(x)}\Big)-\log(1-\Lambda).

    Mixtures commute with the forward noising, so the noised target is the same signed
    mixture of the noised distributions and the score is exact at every ``t``:
    :math:`s_{\lambda,t} = (s_0 - \sum_i\lambda_i r_i s_i)/(1-\sum_i\lambda_i r_i)`,
    :math:`r_i = q_{i,t}/p_{0,t}`. Weights are bounded by :math:`1/(1-\Lambda)`, so sampling
    is exact rejection from ``p0``.
    """

    def __init__(
        self,
        p0: Any,
        unlearn: Sequence[Any],
        multipliers: torch.Tensor,
        *,
        atoms: Atoms | None = None,
    ) -> None:
        lam_sum = float(multipliers.sum())
        if not lam_sum < 1.0:
            raise DualDomainError(
                f"SignedMixtureTarget: multipliers must sum to < 1, got sum {lam_sum}"
            )
        self.p0 = p0
        self.unlearn = list(unlearn)
        self.multipliers = multipliers
        self.max_log_weight = -math.log1p(-lam_sum)
        if atoms is None and isinstance(p0, GaussianMixture):
            if all(isinstance(q, GaussianMixture) for q in unlearn):
                atoms = Atoms.from_mixtures([p0, *unlearn])
        self.atoms = atoms

    def __repr__(self) -> str:
        return f"SignedMixtureTarget(multipliers={self.multipliers.tolist()})"

    def _log_ratio_sum(
        self, x: torch.Tensor, t: torch.Tensor | float, lp0: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\log \sum_i \lambda_i q_{i,t}/p_{0,t}` (``-inf`` when all lam are 0)."""
        terms = []
        for lam, q in zip(self.multipliers, self.unlearn, strict=True):
            if float(lam) > 0:
                lq = q.log_prob(x) if _is_zero_time(t) else q.log_prob(x, t)
                terms.append(torch.log(lam).to(lp0.dtype) + lq - lp0)
        if not terms:
            return torch.full_like(lp0, -math.inf)
        return torch.logsumexp(torch.stack(terms), 0)

    def _log_prob_t(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        if self.atoms is not None:
            xd = x.to(self.atoms.mixture.dtype)
            if _is_zero_time(t):
                log_atoms = self.atoms.log_atoms(xd.reshape(-1, x.shape[-1]))
            else:
                comp, _ = self.atoms.log_atoms_and_scores(xd, t)
                log_atoms = comp.reshape(-1, comp.shape[-1]).T
            coeffs = self.atoms.signed_coeffs(self.multipliers)
            lw = torch.nan_to_num(signed_log_sum(log_atoms, coeffs), nan=-math.inf)
            lam_sum = self.multipliers.sum().to(lw.dtype)
            return (lw - torch.log1p(-lam_sum)).reshape(x.shape[:-1]).to(x.dtype)
        lp0 = self.p0.log_prob(x) if _is_zero_time(t) else self.p0.log_prob(x, t)
        lr = self._log_ratio_sum(x, t, lp0)
        inside = -torch.expm1(lr)
        lam_sum = self.multipliers.sum().to(lp0.dtype)
        # Outside the dual domain the bracket is negative; the density is 0 there.
        bracket = torch.where(inside > 0, torch.log(inside.clamp_min(1e-300)), -math.inf)
        return lp0 + bracket - torch.log1p(-lam_sum)

    def log_weight(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._log_prob_t(x, 0.0) - self.p0.log_prob(x)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        """Normalised log-density, of the noised target when ``t`` is given."""
        return self._log_prob_t(x, 0.0 if t is None else t)

    def score(  # noqa: D102
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        if self.atoms is not None:
            # exact and cancellation-free: s = sum_a c_a N_a s_a / sum_a c_a N_a
            comp, scores = self.atoms.log_atoms_and_scores(x.to(self.atoms.mixture.dtype), t)
            coeffs = self.atoms.signed_coeffs(self.multipliers)
            log_w = signed_log_sum(comp.movedim(-1, 0), coeffs)
            r = coeffs * torch.exp(comp - log_w.unsqueeze(-1))
            return (r.unsqueeze(-1) * scores).sum(-2).to(x.dtype)
        lp0 = self.p0.log_prob(x) if _is_zero_time(t) else self.p0.log_prob(x, t)
        num = self.p0.score(x, t)
        denom = torch.ones_like(lp0)
        for lam, q in zip(self.multipliers, self.unlearn, strict=True):
            if float(lam) > 0:
                lq = q.log_prob(x) if _is_zero_time(t) else q.log_prob(x, t)
                r = lam.to(lp0.dtype) * torch.exp(lq - lp0)
                num = num - r.unsqueeze(-1) * q.score(x, t)
                denom = denom - r
        return num / denom.unsqueeze(-1)
