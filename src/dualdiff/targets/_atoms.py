"""Signed mixtures of Gaussian components, evaluated without catastrophic cancellation.

``p0 - sum_i lam_i q_i`` is a signed combination of Gaussian *atoms* (the distinct components
of ``p0`` and the ``q_i``). Merging identical components first makes the typical forget-set
case (``q`` a component of ``p0``) exact: the coefficient of that atom is ``w_k - lam`` and
the density stays accurate even at ``lam = lam_max``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.gaussian_mixture import GaussianMixture

__all__ = ["Atoms", "signed_log_sum"]


@dataclass(frozen=True)
class Atoms:
    """Distinct Gaussian components and each distribution's coefficients on them.

    Attributes
    ----------
    mixture
        A :class:`GaussianMixture` with one (equally weighted) component per atom.
    coeffs
        ``(1 + m, A)``: row 0 are ``p0``'s weights, row ``i`` are ``q_i``'s weights.
    """

    mixture: GaussianMixture
    coeffs: torch.Tensor

    @classmethod
    def from_mixtures(cls, dists: Sequence[GaussianMixture], atol: float = 1e-12) -> Atoms:
        """Merge the components of ``dists`` (same mean and covariance to ``atol``)."""
        means: list[torch.Tensor] = []
        covs: list[torch.Tensor] = []
        rows: list[dict[int, float]] = []
        for p in dists:
            row: dict[int, float] = {}
            for k in range(p.n_components):
                idx = None
                for a, (mu, cv) in enumerate(zip(means, covs, strict=True)):
                    if torch.allclose(mu, p.means[k], rtol=0, atol=atol) and torch.allclose(
                        cv, p.covariances[k], rtol=0, atol=atol
                    ):
                        idx = a
                        break
                if idx is None:
                    means.append(p.means[k])
                    covs.append(p.covariances[k])
                    idx = len(means) - 1
                row[idx] = row.get(idx, 0.0) + float(p.weights[k])
            rows.append(row)
        n_atoms = len(means)
        coeffs = torch.zeros(len(dists), n_atoms, dtype=dists[0].dtype)
        for i, row in enumerate(rows):
            for a, w in row.items():
                coeffs[i, a] = w
        mix = GaussianMixture(
            torch.full((n_atoms,), 1.0 / n_atoms, dtype=dists[0].dtype),
            torch.stack(means),
            torch.stack(covs),
            schedule=dists[0].schedule,
        )
        return cls(mixture=mix, coeffs=coeffs)

    def log_atoms(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of every atom at ``x`` ``(N, d)``; returns ``(A, N)``."""
        a = self.mixture.n_components
        return (self.mixture.component_log_prob(x) + math.log(a)).T

    def log_atoms_and_scores(
        self, x: torch.Tensor, t: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noised atom log-densities ``(..., A)`` and scores ``(..., A, d)`` at time ``t``."""
        comp, scores = self.mixture.components_at(x, t)
        return comp + math.log(self.mixture.n_components), scores

    def signed_coeffs(self, lam: torch.Tensor) -> torch.Tensor:
        """Coefficients of ``p0 - sum_i lam_i q_i`` on the atoms, ``(A,)``."""
        return self.coeffs[0] - lam.to(self.coeffs.dtype) @ self.coeffs[1:]


def signed_log_sum(log_atoms: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\sum_a c_a e^{\ell_a}` for signed ``coeffs`` ``(A,)``, ``log_atoms`` ``(A, N)``.

    Computed as :math:`\log P + \log(1 - N/P)` with :math:`P` (:math:`N`) the positive
    (negative) part; NaN where the sum is negative (outside the FU domain).
    """
    pos, neg = coeffs > 0, coeffs < 0
    lp = torch.logsumexp(torch.log(coeffs[pos])[:, None] + log_atoms[pos], 0)
    if not bool(neg.any()):
        return lp
    ln = torch.logsumexp(torch.log(-coeffs[neg])[:, None] + log_atoms[neg], 0)
    ratio = ln - lp
    return torch.where(ratio <= 0, lp + torch.log(-torch.expm1(ratio.clamp_max(0.0))), math.nan)
