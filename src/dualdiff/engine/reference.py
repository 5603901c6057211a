r"""A trainable Gaussian-mixture score model with an exact density at every diffusion time.

Used as the "model" of the primal-dual engine when constraint values must be exact and cheap
(tests, reference runs): its noised marginal is

.. math::
    p_{\theta,t}(x) = \sum_k \pi_k\,\mathcal N\big(x;\ \alpha_t\mu_k,\
    \operatorname{diag}(\alpha_t^2 v_k + \sigma_t^2)\big),\qquad
    \pi = \operatorname{softmax}(\text{logits}),\ v_k = e^{\text{log\_var}_k},

so ``log_prob`` and ``score`` are closed-form and differentiable in every parameter.
Exponential tilts :math:`p_0\prod_i q_i^{-\lambda_i}` and signed mixtures
:math:`(p_0-\sum_i\lambda_i q_i)/(1-\Lambda)` of diagonal mixtures with shared components are
again diagonal mixtures with as many components, so LU and FU targets are exactly
representable (RU targets, powers of mixtures, only approximately).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._constants import LOG_2PI as _LOG_2PI
from .._validation import as_tensor
from ..models.gaussian_mixture import GaussianMixture
from ..models.schedule import NoiseSchedule, VPSchedule

__all__ = ["TrainableGaussianMixture"]

_PARTS = ("weights", "means", "variances")


class TrainableGaussianMixture(nn.Module):
    r"""Diagonal Gaussian mixture as a ``torch.nn.Module`` (a trainable score model).

    Parameters
    ----------
    weights
        Mixture weights ``(K,)``, positive (stored as logits).
    means
        Means ``(K, d)``.
    variances
        Diagonal variances ``(K, d)`` or a positive scalar (stored as log-variances).
    learn
        Which of ``"weights"``, ``"means"``, ``"variances"`` are trainable parameters (the
        others are buffers).
    schedule
        Forward noise schedule (default :class:`~dualdiff.models.VPSchedule`).
    dtype
        Parameter dtype (default float64).

    Notes
    -----
    ``score(x, t)`` accepts ``t`` as a float, a 0-d tensor or one time per point; it is the exact
    score of :math:`p_{\theta,t}`. ``t = 0`` is the clean mixture.
    """

    def __init__(
        self,
        weights: Any,
        means: Any,
        variances: Any,
        *,
        learn: Iterable[str] = _PARTS,
        schedule: NoiseSchedule | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        owner = "TrainableGaussianMixture"
        w = as_tensor(weights, "weights", owner, dtype=dtype).reshape(-1)
        mu = as_tensor(means, "means", owner, dtype=dtype)
        var = as_tensor(variances, "variances", owner, dtype=dtype)
        if mu.ndim != 2 or mu.shape[0] != w.numel():
            raise ValueError(
                f"{owner}: parameter 'means' must have shape (K, d) with K={w.numel()}, got "
                f"{tuple(mu.shape)}"
            )
        if bool((w <= 0).any()):
            raise ValueError(f"{owner}: parameter 'weights' must be positive, got {w.tolist()}")
        if var.ndim == 0:
            var = var.expand(mu.shape).clone()
        if var.shape != mu.shape or bool((var <= 0).any()):
            raise ValueError(
                f"{owner}: parameter 'variances' must be a positive scalar or have shape "
                f"{tuple(mu.shape)} with positive entries, got {var.tolist()}"
            )
        learn = (learn,) if isinstance(learn, str) else tuple(learn)  # "means" is one part
        for name in learn:
            if name not in _PARTS:
                raise ValueError(
                    f"{owner}: unknown entry {name!r} in 'learn'; allowed: {', '.join(_PARTS)}"
                )
        values = {"weights": torch.log(w / w.sum()), "means": mu, "variances": torch.log(var)}
        names = {"weights": "logits", "means": "means", "variances": "log_var"}
        for part, value in values.items():
            if part in learn:
                self.register_parameter(names[part], nn.Parameter(value.clone()))
            else:
                self.register_buffer(names[part], value.clone())
        self.schedule: NoiseSchedule = schedule if schedule is not None else VPSchedule()

    logits: torch.Tensor
    means: torch.Tensor
    log_var: torch.Tensor

    @classmethod
    def from_mixture(
        cls, mixture: GaussianMixture, *, learn: Iterable[str] = _PARTS, **kwargs: Any
    ) -> TrainableGaussianMixture:
        """Initialise from a :class:`~dualdiff.GaussianMixture` with diagonal covariances."""
        cov = mixture.covariances
        diag = torch.diagonal(cov, dim1=-2, dim2=-1)
        if not torch.allclose(cov, torch.diag_embed(diag)):
            raise ValueError(
                "TrainableGaussianMixture.from_mixture: parameter 'mixture' must have diagonal "
                "covariances"
            )
        kwargs.setdefault("schedule", mixture.schedule)
        return cls(mixture.weights, mixture.means, diag, learn=learn, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Event dimension ``d``."""
        return int(self.means.shape[1])

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights ``(K,)``."""
        return torch.softmax(self.logits, 0)

    @property
    def variances(self) -> torch.Tensor:
        """Diagonal variances ``(K, d)``."""
        return torch.exp(self.log_var)

    def to_mixture(self) -> GaussianMixture:
        """A detached :class:`~dualdiff.GaussianMixture` copy (float64)."""
        with torch.no_grad():
            return GaussianMixture(
                self.weights.double(), self.means.double(), self.variances.double(),
                schedule=self.schedule,
            )

    # ------------------------------------------------------------------ densities
    def _components(
        self, x: torch.Tensor, t: torch.Tensor | float | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-component log terms ``(..., K)``, centred points ``(..., K, d)``, variances."""
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"TrainableGaussianMixture: parameter 'x' must have shape (..., {self.dim}), got "
                f"{tuple(x.shape)}"
            )
        x = x.to(self.means.dtype)
        var = self.variances
        mean = self.means
        if t is not None:
            tt = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            if tt.numel() > 1 or tt.ndim > 0:
                tt = tt.reshape((*tt.shape, 1, 1))  # (..., 1, 1) per point
            a = torch.as_tensor(self.schedule.alpha(tt)).to(x.dtype)
            s2 = torch.as_tensor(self.schedule.sigma(tt)).to(x.dtype) ** 2
            mean = a * mean
            var = a**2 * var + s2
        diff = x.unsqueeze(-2) - mean  # (..., K, d)
        comp = torch.log_softmax(self.logits, 0) - 0.5 * (
            self.dim * _LOG_2PI + torch.log(var).sum(-1) + (diff**2 / var).sum(-1)
        )
        return comp, diff, var

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        """Log-density ``(...)`` at ``x`` ``(..., d)`` (of the noised marginal when ``t``)."""
        comp, _, _ = self._components(x, t)
        return torch.logsumexp(comp, -1)

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        r"""Exact score :math:`\nabla_x\log p_{\theta,t}(x)`, shape like ``x`` ``(..., d)``."""
        comp, diff, var = self._components(x, t)
        r = torch.softmax(comp, -1)
        return -(r.unsqueeze(-1) * diff / var).sum(-2)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Same as :meth:`score`."""
        return self.score(x, t)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples ``(n, d)`` of the clean mixture."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(
            n, self.dim, dtype=self.means.dtype, device=self.means.device, generator=generator
        )
        return self.means[idx] + torch.sqrt(self.variances[idx]) * z
