r"""Gaussian mixtures: exact density, score and samples at every diffusion time.

Under the VP forward process :math:`x_t=\alpha_t x_0+\sigma_t\varepsilon` a mixture
:math:`\sum_k w_k\,\mathcal N(\mu_k,\Sigma_k)` stays a mixture with components
:math:`\mathcal N(\alpha_t\mu_k,\ \alpha_t^2\Sigma_k+\sigma_t^2 I)`
(see :ref:`the diffusion view <diffusion-view>`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._constants import LOG_2PI as _LOG_2PI
from .._errors import NonFiniteError
from .._validation import as_tensor, check_finite
from .schedule import NoiseSchedule, VPSchedule

__all__ = ["GaussianMixture"]



class GaussianMixture:
    r"""A finite Gaussian mixture :math:`p(x)=\sum_{k=1}^K w_k\,\mathcal N(x;\mu_k,\Sigma_k)`.

    Parameters
    ----------
    weights
        Mixture weights, shape ``(K,)``; non-negative with a positive sum. They are normalised
        to sum to one.
    means
        Component means, shape ``(K, d)``.
    covariances
        Component covariances: full ``(K, d, d)`` symmetric positive definite, diagonal
        ``(K, d)`` (positive variances), or a positive scalar shared by all components and
        dimensions (isotropic).
    schedule
        Forward noise schedule used by :meth:`score` and :meth:`noised` (default
        :class:`~dualdiff.models.VPSchedule`).
    dtype
        Storage dtype (default float64 for non-tensor input, else the tensor's dtype).
    device
        Storage device.

    Notes
    -----
    All methods are differentiable with respect to ``x`` and (through the Cholesky
    factorisation) the parameters. ``score`` with per-sample times uses an eigendecomposition
    of the covariances, which is differentiable in ``x`` only.
    """

    def __init__(
        self,
        weights: Any,
        means: Any,
        covariances: Any,
        *,
        schedule: NoiseSchedule | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        owner = "GaussianMixture"
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"{owner}: parameter 'dtype' must be a floating dtype, got {dtype}")
        w = as_tensor(weights, "weights", owner, dtype=dtype, device=device)
        mu = as_tensor(means, "means", owner, dtype=dtype, device=device)
        cov = as_tensor(covariances, "covariances", owner, dtype=dtype, device=device)
        if dtype is None:  # promote across the three parameters (float64 for plain lists)
            dtype = torch.promote_types(torch.promote_types(w.dtype, mu.dtype), cov.dtype)
        device = w.device
        w, mu, cov = (v.to(dtype=dtype, device=device) for v in (w, mu, cov))
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(
                f"{owner}: parameter 'weights' must have shape (K,) with K >= 1, "
                f"got shape {tuple(w.shape)}"
            )
        if bool((w < 0).any()):
            raise ValueError(
                f"{owner}: parameter 'weights' must be non-negative, got {w.tolist()}"
            )
        total = w.sum()
        if not float(total) > 0:
            raise ValueError(
                f"{owner}: parameter 'weights' must have a positive sum to be normalisable, "
                f"got sum {float(total)}"
            )
        k = w.shape[0]
        if mu.ndim != 2 or mu.shape[0] != k:
            raise ValueError(
                f"{owner}: parameter 'means' must have shape (K, d) = ({k}, d) to match "
                f"{k} weights, got shape {tuple(mu.shape)}"
            )
        d = mu.shape[1]
        if d < 1:
            raise ValueError(f"{owner}: parameter 'means' must have d >= 1, got shape (K, 0)")
        eye = torch.eye(d, dtype=dtype, device=device)
        if cov.ndim == 0:
            if not float(cov) > 0:
                raise ValueError(
                    f"{owner}: scalar 'covariances' must be > 0 (an isotropic variance), "
                    f"got {float(cov)}"
                )
            cov = cov * eye.expand(k, d, d).clone()
        elif cov.ndim == 2 and cov.shape == (k, d):
            if bool((cov <= 0).any()):
                raise ValueError(
                    f"{owner}: diagonal 'covariances' (K, d) must be positive, got {cov.tolist()}"
                )
            cov = torch.diag_embed(cov)
        elif cov.ndim == 3 and cov.shape == (k, d, d):
            if not torch.allclose(cov, cov.transpose(-1, -2), rtol=1e-8, atol=1e-10):
                asym = float((cov - cov.transpose(-1, -2)).abs().max())
                raise ValueError(
                    f"{owner}: parameter 'covariances' must be symmetric, got a maximum "
                    f"asymmetry |S - S^T| of {asym:.3g}"
                )
        else:
            raise ValueError(
                f"{owner}: parameter 'covariances' must be a scalar, (K, d) = ({k}, {d}) "
                f"diagonal or (K, d, d) = ({k}, {d}, {d}) full, got shape {tuple(cov.shape)}"
            )
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            bad = torch.nonzero(info).flatten().tolist()
            raise ValueError(
                f"{owner}: parameter 'covariances' must be positive definite; component(s) "
                f"{bad} are not (eigenvalues {torch.linalg.eigvalsh(cov[bad[0]]).tolist()})"
            )
        self.weights = w / total
        self.means = mu
        self.covariances = cov
        self.schedule: NoiseSchedule = schedule if schedule is not None else VPSchedule()
        self._chol = chol
        # U_k = L_k^{-1}, so that (x-mu)^T Sigma^{-1} (x-mu) = ||U_k (x-mu)||^2.
        self._prec_chol = torch.linalg.solve_triangular(chol, eye.expand(k, d, d), upper=False)
        self._half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ basic properties
    @property
    def dim(self) -> int:
        """Event dimension ``d``."""
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return int(self.weights.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.means.device

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(K={self.n_components}, d={self.dim}, dtype={self.dtype}, "
            f"device={self.device})"
        )

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> GaussianMixture:
        """Copy of this mixture with another dtype and/or device."""
        return GaussianMixture(
            self.weights.to(dtype=dtype or self.dtype, device=device or self.device),
            self.means.to(dtype=dtype or self.dtype, device=device or self.device),
            self.covariances.to(dtype=dtype or self.dtype, device=device or self.device),
            schedule=self.schedule,
        )

    def component(self, k: int) -> GaussianMixture:
        """The ``k``-th component as a one-component mixture (a concept / forget set)."""
        if not isinstance(k, int) or not -self.n_components <= k < self.n_components:
            raise IndexError(
                f"GaussianMixture.component: parameter 'k' must be an int in "
                f"[0, {self.n_components}), got {k!r}"
            )
        return GaussianMixture(
            self.weights[k : k + 1] * 0 + 1,
            self.means[k : k + 1],
            self.covariances[k : k + 1],
            schedule=self.schedule,
        )

    def to_dict(self) -> dict[str, list]:
        """JSON-serialisable parameters ``{weights, means, covariances}`` (full covariances)."""
        return {
            "weights": self.weights.detach().cpu().tolist(),
            "means": self.means.detach().cpu().tolist(),
            "covariances": self.covariances.detach().cpu().tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> GaussianMixture:
        """Inverse of :meth:`to_dict`."""
        return cls(data["weights"], data["means"], data["covariances"], **kwargs)

    def mean(self) -> torch.Tensor:
        """Mixture mean, shape ``(d,)``."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Mixture covariance, shape ``(d, d)``."""
        m = self.mean()
        dm = self.means - m
        second = self.covariances + dm[:, :, None] * dm[:, None, :]
        return (self.weights[:, None, None] * second).sum(0)

    # ------------------------------------------------------------------ densities
    def _check_x(self, x: torch.Tensor, method: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"GaussianMixture.{method}: parameter 'x' must have shape (..., {self.dim}), "
                f"got {tuple(x.shape)}"
            )
        return check_finite(x, "x", f"GaussianMixture.{method}")

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""Per-component :math:`\log w_k + \log\mathcal N(x;\mu_k,\Sigma_k)`, ``(..., K)``."""
        x = self._check_x(x, "component_log_prob")
        x = x.to(self.dtype)
        ux = torch.einsum("kij,...j->...ki", self._prec_chol, x)
        umu = torch.einsum("kij,kj->ki", self._prec_chol, self.means)
        maha = ((ux - umu) ** 2).sum(-1)
        log_norm = -0.5 * self.dim * _LOG_2PI - self._half_logdet
        with torch.no_grad():
            zero_w = self.weights == 0
        logw = torch.where(zero_w, torch.full_like(self.weights, -math.inf), self.weights.log())
        return logw + log_norm - 0.5 * maha

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        """Normalised log-density at ``x`` of shape ``(..., d)``; returns shape ``(...)``.

        With ``t`` (a float or per-point tensor of shape ``x.shape[:-1]``) the density of the
        noised marginal :math:`p_t` is returned instead.
        """
        if t is None:
            return torch.logsumexp(self.component_log_prob(x), dim=-1)
        return self._log_prob_and_score(x, t, "log_prob")[0]

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        r"""Posterior component probabilities :math:`p(k\mid x)`, shape ``(..., K)``."""
        return torch.softmax(self.component_log_prob(x), dim=-1)

    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eig is None:
            evals, evecs = torch.linalg.eigh(self.covariances.detach())
            self._eig = (evals, evecs)
        return self._eig

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        r"""Exact score :math:`\nabla_x\log p_t(x)` of the noised mixture.

        Parameters
        ----------
        x
            Points, shape ``(..., d)``.
        t
            Diffusion time: a float, a 0-d tensor, or a tensor of shape ``x.shape[:-1]``
            (one time per point). ``t = 0`` is the clean density.
        cond
            Ignored (a mixture is unconditional); accepted for :class:`ScoreModel` conformity.

        Returns
        -------
        torch.Tensor
            Shape ``(..., d)``.
        """
        return self._log_prob_and_score(x, t, "score")[1]

    def _log_prob_and_score(
        self, x: torch.Tensor, t: torch.Tensor | float, method: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._check_x(x, method)
        t_t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        check_finite(t_t, "t", f"GaussianMixture.{method}")
        if t_t.ndim == 0 or t_t.numel() == 1:
            t0 = float(t_t.reshape(()))
            p = self if t0 == 0.0 else self.noised(t_t.reshape(()))
            if method == "log_prob":
                return p.log_prob(x), x
            return x, p._score_clean(x)
        return self._batched_t(x, t_t)

    def _score_clean(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        r = self.responsibilities(x)  # (..., K)
        diff = x.unsqueeze(-2) - self.means  # (..., K, d)
        u = torch.einsum("kij,...kj->...ki", self._prec_chol, diff)
        prec_diff = torch.einsum("kji,...kj->...ki", self._prec_chol, u)  # U^T U diff
        return -(r.unsqueeze(-1) * prec_diff).sum(-2)

    def _batched_t(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-density and score of the noised mixture with one time per point."""
        comp, comp_score = self.components_at(x, t)
        r = torch.softmax(comp, dim=-1)
        return torch.logsumexp(comp, dim=-1), (r.unsqueeze(-1) * comp_score).sum(-2)

    def components_at(
        self, x: torch.Tensor, t: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Per-component log-densities and scores of the noised mixture at time ``t``.

        Parameters
        ----------
        x
            ``(..., d)``.
        t
            Float or tensor broadcastable to ``x.shape[:-1]``.

        Returns
        -------
        comp : torch.Tensor
            ``comp[..., k]`` :math:`= \log w_k + \log\mathcal N(x;\alpha_t\mu_k,
            \alpha_t^2\Sigma_k+\sigma_t^2I)`, shape ``(..., K)``.
        scores : torch.Tensor
            ``scores[..., k, :]`` the score of component ``k``, shape ``(..., K, d)``.

        Notes
        -----
        Uses the covariance eigendecomposition (differentiable in ``x``).
        """
        x = self._check_x(x, "components_at").to(self.dtype)
        t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        if t.shape != x.shape[:-1]:
            try:
                t = t.expand(x.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"GaussianMixture: parameter 't' must be a scalar or have shape "
                    f"{tuple(x.shape[:-1])}, got {tuple(t.shape)}"
                ) from None
        if bool((t < 0).any()) or bool((t > self.schedule.t_max).any()):
            raise ValueError(
                f"GaussianMixture: parameter 't' must lie in [0, {self.schedule.t_max}], got "
                f"values in [{float(t.min())}, {float(t.max())}]"
            )
        a = self.schedule.alpha(t)[..., None, None]  # (..., 1, 1)
        s2 = (self.schedule.sigma(t) ** 2)[..., None, None]
        evals, evecs = self._eigh()  # (K, d), (K, d, d)
        var = a**2 * evals + s2  # (..., K, d)
        diff = x.unsqueeze(-2) - a * self.means  # (..., K, d)
        proj = torch.einsum("kji,...kj->...ki", evecs, diff)  # V^T diff
        maha = (proj**2 / var).sum(-1)
        logw = torch.where(
            self.weights > 0, self.weights.clamp_min(1e-300).log(), -math.inf
        )
        comp = logw - 0.5 * self.dim * _LOG_2PI - 0.5 * torch.log(var).sum(-1) - 0.5 * maha
        scores = -torch.einsum("kij,...kj->...ki", evecs, proj / var)
        return comp, scores

    def noised(
        self, t: torch.Tensor | float, schedule: NoiseSchedule | None = None
    ) -> GaussianMixture:
        r"""The exact marginal at time ``t``.

        Components :math:`\mathcal N(\alpha_t\mu_k,
        \alpha_t^2\Sigma_k+\sigma_t^2 I)`.
        """
        sched = schedule if schedule is not None else self.schedule
        t_t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        if t_t.ndim != 0:
            raise ValueError(
                f"GaussianMixture.noised: parameter 't' must be a scalar, got shape "
                f"{tuple(t_t.shape)}"
            )
        check_finite(t_t, "t", "GaussianMixture.noised")
        if float(t_t) < 0 or float(t_t) > sched.t_max:
            raise ValueError(
                f"GaussianMixture.noised: parameter 't' must lie in [0, {sched.t_max}], "
                f"got {float(t_t)}"
            )
        a = sched.alpha(t_t)
        s2 = sched.sigma(t_t) ** 2
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return GaussianMixture(
            self.weights, a * self.means, a**2 * self.covariances + s2 * eye, schedule=sched
        )

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` i.i.d. samples, shape ``(n, d)``.

        ``generator`` must live on this mixture's device (CPU generator for CPU mixtures).
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(
                f"GaussianMixture.sample: parameter 'n' must be an int >= 0, got {n!r}"
            )
        with torch.no_grad():
            idx = torch.multinomial(
                self.weights.detach(), n, replacement=True, generator=generator
            ) if n > 0 else torch.zeros(0, dtype=torch.long, device=self.device)
        z = torch.randn(n, self.dim, dtype=self.dtype, device=self.device, generator=generator)
        x = self.means[idx] + torch.einsum("nij,nj->ni", self._chol[idx], z)
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("GaussianMixture.sample: produced non-finite samples")
        return x
