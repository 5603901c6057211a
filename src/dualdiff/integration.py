r"""Integration back-ends for KLs, normalisers and expectations.

Two rules share one interface (:class:`IntegrationRule`): a set of points :math:`x_i` and
log-weights :math:`\log\omega_i` with :math:`\int f(x)\,dx \approx \sum_i \omega_i f(x_i)`.

* :class:`GridQuadrature` (``d <= 2``): a uniform tensor grid (trapezoid rule on a box wide
  enough that the integrands vanish at its edge). For smooth, rapidly decaying integrands the
  trapezoid rule converges spectrally, so the default spacing gives ~1e-10 relative accuracy
  on Gaussian-mixture quantities. The error bar is the difference to the same sum on the
  grid of double spacing (every other point), plus the mass at the box's edge.
* :class:`MonteCarlo` (any ``d``): importance sampling from a defensive mixture proposal
  (half the pretrained mixture, half the unlearning distributions). The points are drawn once
  (common random numbers), so the dual function stays smooth in :math:`\lambda`; error bars
  are standard errors (delta method for self-normalised ratios).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ._validation import check_choice, check_positive
from .models.gaussian_mixture import GaussianMixture

__all__ = ["GridQuadrature", "IntegrationRule", "MonteCarlo", "resolve_integration"]


@dataclass(frozen=True)
class IntegrationRule:
    r"""Points and log-weights of a prepared quadrature or Monte Carlo rule.

    Attributes
    ----------
    points
        Shape ``(N, d)``.
    log_weights
        Shape ``(N,)``; :math:`\int f \approx \sum_i e^{\log\omega_i} f(x_i)`.
    method
        ``"grid"`` or ``"monte_carlo"``.
    coarse_mask
        Grid only: boolean ``(N,)`` selecting the points of the grid with double spacing.
    edge_mask
        Grid only: boolean ``(N,)`` selecting the outermost layer of points.
    """

    points: torch.Tensor
    log_weights: torch.Tensor
    method: Literal["grid", "monte_carlo"]
    coarse_mask: torch.Tensor | None = None
    edge_mask: torch.Tensor | None = None
    points_per_dim: int = 1
    #: Grid only: a union of per-component grids with a partition of unity
    #: (:meth:`GridQuadrature.prepare` builds one when a single uniform grid cannot resolve
    #: every component under the point cap).
    per_component: bool = False

    @property
    def _tail_factor(self) -> float:
        # Mass beyond the box is bounded by the edge layer's mass times the number of layers
        # (a tail decaying no slower than across the box): a conservative edge error term.
        return float(self.points_per_dim)

    @property
    def n_points(self) -> int:
        """Number of points ``N``."""
        return int(self.points.shape[0])

    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return int(self.points.shape[1])

    def _coarse_log_weights(self) -> torch.Tensor:
        assert self.coarse_mask is not None
        return self.log_weights[self.coarse_mask] + self.dim * math.log(2.0)

    def _blind_to_spikes(self, p: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        r"""Grid: ``inf`` error bars where the integrand's mass sits on too few points.

        The sub-grid comparison cannot see an integrand much narrower than the spacing: when
        its mass ``p`` (normalised, ``(..., N)``) lies on one point of the double-spacing
        sub-grid, both sums agree and the difference is 0. A Gaussian of standard deviation
        ``h`` per axis spreads over :math:`(2\sqrt\pi)^d \approx 3.5^d` points (Kish count
        :math:`1/\sum p_i^2`); below :math:`2^d` (a standard deviation under about ``h/2``,
        where the trapezoid rule is no longer accurate to 1e-3 anyway) the error bar is
        ``inf``: unknown, not small.
        """
        n_eff = 1.0 / (p.double() ** 2).sum(-1)
        blind = ~(n_eff >= 2.0**self.dim)
        return torch.where(blind, torch.full_like(err, math.inf), err)

    def log_integral(self, log_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`\log\int e^{\log f}` and its absolute error bar (in log units).

        Parameters
        ----------
        log_f
            Log-integrand at the points, shape ``(N,)``; non-finite ``+inf`` entries propagate
            to ``+inf``.

        Returns
        -------
        value : torch.Tensor
            :math:`\log\int e^{\log f}`, a 0-d tensor.
        err : torch.Tensor
            Its absolute error bar in log units, a 0-d tensor (grid: difference to the coarser
            grid plus the edge mass; Monte Carlo: relative standard error).
        """
        a = log_f + self.log_weights
        value = torch.logsumexp(a, dim=-1)
        if self.method == "grid":
            assert self.coarse_mask is not None and self.edge_mask is not None
            coarse = torch.logsumexp(log_f[self.coarse_mask] + self._coarse_log_weights(), -1)
            edge = torch.logsumexp(a[self.edge_mask], -1)
            err = (value - coarse).abs() + self._tail_factor * torch.exp(edge - value)
            err = self._blind_to_spikes(torch.softmax(a, -1), err)
        else:
            # stderr of the mean of exp(a) * N, relative to the mean, is the log error.
            n = a.shape[-1]
            rel = torch.softmax(a, -1) * n  # terms / mean
            err = rel.std(unbiased=True) / math.sqrt(n)
        return value, err

    def integral(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`\int f` and its error bar.

        Parameters
        ----------
        f
            Integrand values at the points, shape ``(..., N)``.

        Returns
        -------
        value : torch.Tensor
            :math:`\int f`, shape ``(...)``.
        err : torch.Tensor
            Its error bar, shape ``(...)`` (grid: difference to the coarser grid plus the edge
            mass; Monte Carlo: standard error).
        """
        w = torch.exp(self.log_weights)
        value = (f * w).sum(-1)
        if self.method == "grid":
            assert self.coarse_mask is not None and self.edge_mask is not None
            coarse = (f[..., self.coarse_mask] * torch.exp(self._coarse_log_weights())).sum(-1)
            edge = (f[..., self.edge_mask] * w[self.edge_mask]).abs().sum(-1)
            err = (value - coarse).abs() + self._tail_factor * edge
            mass = (f * w).abs()
            total = mass.sum(-1, keepdim=True)
            share = torch.where(total > 0, mass / total.clamp_min(1e-300), 0.0)
            err = self._blind_to_spikes(share, err)  # f = 0 everywhere: no mass, not blind
        else:
            n = f.shape[-1]
            terms = f * w * n
            err = terms.std(dim=-1, unbiased=True) / math.sqrt(n)
        return value, err

    def expectation(
        self, log_u: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Self-normalised :math:`E_{p}[F]` with :math:`p \propto e^{\log u}`.

        Parameters
        ----------
        log_u
            Unnormalised log-density at the points, ``(N,)``.
        values
            ``(k, N)`` or ``(N,)`` function values.

        Returns
        -------
        value : torch.Tensor
            :math:`E_p[F]`, shape ``(k,)`` (0-d for ``values`` of shape ``(N,)``).
        err : torch.Tensor
            Its error bar, same shape (grid: difference to the coarser grid plus the edge
            mass; Monte Carlo: delta-method standard error of the ratio estimator).
        """
        a = log_u + self.log_weights
        p = torch.softmax(a, -1)
        value = (values * p).sum(-1)
        if self.method == "grid":
            assert self.coarse_mask is not None and self.edge_mask is not None
            pc = torch.softmax(log_u[self.coarse_mask] + self._coarse_log_weights(), -1)
            coarse = (values[..., self.coarse_mask] * pc).sum(-1)
            edge = (values[..., self.edge_mask] * p[self.edge_mask]).abs().sum(-1)
            err = (value - coarse).abs() + self._tail_factor * edge
            err = self._blind_to_spikes(p, err)
        else:
            # delta method for a ratio estimator: Var ≈ sum_i p_i^2 (F_i - E)^2
            centred = values - value.unsqueeze(-1) if values.ndim > 1 else values - value
            err = torch.sqrt((p**2 * centred**2).sum(-1))
        return value, err

    def effective_sample_size(self, log_u: torch.Tensor) -> float:
        """Kish effective sample size fraction of the normalised weights (in ``(0, 1]``)."""
        p = torch.softmax(log_u + self.log_weights, -1)
        return float(1.0 / (p**2).sum() / p.shape[-1])


def _mixture_box(
    dists: Sequence[GaussianMixture], extent: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    lows, highs, min_std = [], [], math.inf
    for p in dists:
        std = torch.sqrt(torch.diagonal(p.covariances, dim1=-2, dim2=-1))  # (K, d)
        lows.append((p.means - extent * std).min(0).values)
        highs.append((p.means + extent * std).max(0).values)
        min_std = min(min_std, float(torch.linalg.eigvalsh(p.covariances).min().sqrt()))
    return torch.stack(lows).min(0).values, torch.stack(highs).max(0).values, min_std


class GridQuadrature:
    r"""Uniform tensor-grid (trapezoid) quadrature for ``d <= 2``.

    Parameters
    ----------
    points_per_dim
        Grid size per dimension. Default: chosen from the spacing ``resolution`` (odd, so the
        double-spacing sub-grid shares the end points), capped by ``max_points``.
    extent
        Half-width of the box in standard deviations beyond the extreme component means.
    resolution
        Grid points per smallest standard deviation of any component (default 6: the trapezoid
        rule's aliasing error on a Gaussian of standard deviation ``s`` is about
        ``exp(-2 pi^2 (s/h)^2)``, negligible even for targets sharpened four-fold).
    bounds
        Optional explicit box ``[(lo, hi), ...]`` of length ``d`` overriding ``extent``.
    max_points
        Cap on the total number of points.
    """

    method = "grid"

    def __init__(
        self,
        points_per_dim: int | None = None,
        *,
        extent: float = 10.0,
        resolution: float = 6.0,
        bounds: Sequence[tuple[float, float]] | None = None,
        max_points: int = 400_000,
    ) -> None:
        owner = "GridQuadrature"
        ppd = points_per_dim
        if ppd is not None and (not isinstance(ppd, int) or ppd < 5):
            raise ValueError(
                f"{owner}: parameter 'points_per_dim' must be an int >= 5, got {points_per_dim!r}"
            )
        self.points_per_dim = points_per_dim
        self.extent = check_positive(extent, "extent", owner)
        self.resolution = check_positive(resolution, "resolution", owner)
        self.bounds = None if bounds is None else [(float(a), float(b)) for a, b in bounds]
        if self.bounds is not None and any(b <= a for a, b in self.bounds):
            raise ValueError(f"{owner}: parameter 'bounds' needs lo < hi, got {bounds}")
        self.max_points = int(max_points)

    def __repr__(self) -> str:
        return (
            f"GridQuadrature(points_per_dim={self.points_per_dim}, extent={self.extent}, "
            f"resolution={self.resolution})"
        )

    def refined(self) -> GridQuadrature | None:
        """A wider and finer automatic grid (``None`` if the user fixed the grid)."""
        if self.points_per_dim is not None or self.bounds is not None:
            return None
        return GridQuadrature(
            extent=1.7 * self.extent, resolution=1.4 * self.resolution, max_points=self.max_points
        )

    def prepare(
        self,
        dists: Sequence[GaussianMixture],
        generator: torch.Generator | None = None,
        *,
        cover: Sequence[GaussianMixture] = (),
    ) -> IntegrationRule:
        """Build the grid covering every mixture in ``dists`` and ``cover`` (one dimension ``d``).

        ``cover`` holds extra mixtures (where a tilted target puts its mass); for a grid they
        are simply more mixtures to cover.
        """
        dists = [*dists, *cover]
        d = dists[0].dim
        dtype, device = dists[0].dtype, dists[0].device
        if d > 2:
            raise ValueError(
                f"GridQuadrature: grid quadrature is for d <= 2, got d={d}; use MonteCarlo"
            )
        if self.bounds is not None:
            if len(self.bounds) != d:
                raise ValueError(
                    f"GridQuadrature: parameter 'bounds' must have {d} (lo, hi) pairs, "
                    f"got {len(self.bounds)}"
                )
            lo = torch.tensor([b[0] for b in self.bounds], dtype=dtype)
            hi = torch.tensor([b[1] for b in self.bounds], dtype=dtype)
            min_std = min(float(torch.linalg.eigvalsh(p.covariances).min().sqrt()) for p in dists)
        else:
            lo, hi, min_std = _mixture_box(dists, self.extent)
        if self.points_per_dim is not None:
            n = self.points_per_dim
        else:
            width = float((hi - lo).max())
            n = math.ceil(width / (min_std / self.resolution)) + 1
            n = max(n, 41)
        cap = int(self.max_points ** (1.0 / d))
        if n > cap and self.points_per_dim is None and self.bounds is None:
            return self._per_component(dists)
        n = min(n, cap)
        if n % 2 == 0:
            n += 1 if n + 1 <= cap or self.points_per_dim is not None else -1
        axes = [torch.linspace(float(lo[i]), float(hi[i]), n, dtype=dtype) for i in range(d)]
        h = torch.stack([a[1] - a[0] for a in axes])
        mesh = torch.meshgrid(*axes, indexing="ij")
        pts = torch.stack([m.reshape(-1) for m in mesh], -1)
        idx = torch.meshgrid(*[torch.arange(n) for _ in range(d)], indexing="ij")
        idx_flat = torch.stack([i.reshape(-1) for i in idx], -1)
        coarse = (idx_flat % 2 == 0).all(-1)
        edge = ((idx_flat == 0) | (idx_flat == n - 1)).any(-1)
        # trapezoid: half weight at each boundary index per dimension
        logw = torch.full((pts.shape[0],), float(torch.log(h).sum()), dtype=dtype)
        logw = logw + math.log(0.5) * edge_count(idx_flat, n).to(dtype)
        return IntegrationRule(
            points=pts.to(device),
            log_weights=logw.to(device),
            method="grid",
            coarse_mask=coarse.to(device),
            edge_mask=edge.to(device),
            points_per_dim=n,
        )

    def _per_component(self, dists: Sequence[GaussianMixture]) -> IntegrationRule:
        r"""A union of per-component grids glued by a Gaussian partition of unity.

        With :math:`\pi = \sum_k \pi_k\mathcal N_k` the mixture of every component of
        ``dists`` (each mixture given equal total weight) and
        :math:`\psi_k = \pi_k\mathcal N_k/\pi` (so :math:`\sum_k\psi_k = 1`),

        .. math:: \int f = \sum_k \int f\,\psi_k,

        and the ``k``-th term is integrated by the trapezoid rule on a grid covering component
        ``k``'s box (``extent`` standard deviations) at ``resolution`` points per its smallest
        standard deviation: :math:`f\psi_k = \pi_k\mathcal N_k\,(f/\pi)` decays like
        :math:`\mathcal N_k` wherever ``f`` is covered by ``pi``. Every component is resolved
        whatever the ratio of scales (a single uniform grid under the point cap cannot resolve
        a standard deviation of 1e-3 next to one of 1e3). Error bars: the difference to each
        grid's double-spacing sub-grid plus the edge layers' mass, as for one grid.
        """
        d = dists[0].dim
        dtype = dists[0].dtype
        device = dists[0].device
        ws, mus, covs = [], [], []
        for p in dists:
            keep = p.weights > 0
            w = p.weights[keep].to(dtype)
            ws.append(w / w.sum() / len(dists))
            mus.append(p.means[keep].to(dtype))
            covs.append(p.covariances[keep].to(dtype))
        w_all, cov_all = torch.cat(ws), torch.cat(covs)
        # partition weights boosted by |Sigma_k|^(-1/4): near a narrow component the wide
        # components' share (their grids' aliasing error there) shrinks by the square root of
        # the ratio of scales, while a narrow component's share still vanishes at its box edge
        w_all = w_all * torch.exp(-0.25 * torch.linalg.slogdet(cov_all)[1])
        pi = GaussianMixture(w_all / w_all.sum(), torch.cat(mus), cov_all)
        n_comp = pi.n_components
        std = torch.sqrt(torch.diagonal(pi.covariances, dim1=-2, dim2=-1))  # (K, d)
        min_std = torch.linalg.eigvalsh(pi.covariances).min(-1).values.clamp_min(0).sqrt()
        ratio = float((std.max(-1).values / min_std).max())
        n = max(math.ceil(2 * self.extent * ratio * self.resolution) + 1, 41)
        cap = max(int((self.max_points / n_comp) ** (1.0 / d)), 5)
        n = min(n, cap)
        if n % 2 == 0:
            n -= 1
        idx = torch.meshgrid(*[torch.arange(n) for _ in range(d)], indexing="ij")
        idx_flat = torch.stack([i.reshape(-1) for i in idx], -1)
        unit = idx_flat.to(dtype) / (n - 1) * 2.0 - 1.0  # [-1, 1]^d
        coarse1 = (idx_flat % 2 == 0).all(-1)
        edge1 = ((idx_flat == 0) | (idx_flat == n - 1)).any(-1)
        trap1 = math.log(0.5) * edge_count(idx_flat, n).to(dtype)
        pts, logw, coarse, edge = [], [], [], []
        log_pi_w = torch.log(pi.weights)
        for k in range(n_comp):
            half = self.extent * std[k]
            x = pi.means[k] + unit * half
            h = 2.0 * half / (n - 1)
            comp = GaussianMixture(
                torch.ones(1, dtype=dtype), pi.means[k : k + 1], pi.covariances[k : k + 1]
            )
            log_psi = log_pi_w[k] + comp.log_prob(x) - pi.log_prob(x)
            pts.append(x)
            logw.append(float(torch.log(h).sum()) + trap1 + log_psi)
            coarse.append(coarse1)
            edge.append(edge1)
        return IntegrationRule(
            points=torch.cat(pts).to(device),
            log_weights=torch.cat(logw).to(device),
            method="grid",
            coarse_mask=torch.cat(coarse).to(device),
            edge_mask=torch.cat(edge).to(device),
            points_per_dim=n,
            per_component=True,
        )


def edge_count(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Number of coordinates of each multi-index lying on the box boundary, ``(N,)``."""
    return ((idx == 0) | (idx == n - 1)).sum(-1)


class MonteCarlo:
    r"""Importance-sampling Monte Carlo with a defensive mixture proposal.

    The proposal is :math:`\pi = \tfrac12 p_0^{(s)} + \tfrac1{2m}\sum_i q_i^{(s)}`, every
    component's covariance multiplied by ``inflation`` (``s``). When the problem passes
    ``cover`` mixtures (a Gaussian envelope of the tilted target at the current multipliers,
    see :doc:`/mathematics`, "What a certificate guarantees"), the proposal gives them half
    its mass: :math:`\pi = \tfrac12 e + \tfrac14 p_0 + \tfrac1{4m}\sum_i q_i`. An envelope
    bounds the target from above, so the importance weights of the target stay bounded by
    twice the envelope's mass over the target's, and the central limit theorem behind the
    standard errors applies. Points are drawn once per rule (common random numbers).

    Parameters
    ----------
    n
        Number of samples (default 100 000).
    seed
        Seed of the proposal draw (results are reproducible).
    inflation
        Covariance inflation of the proposal (``>= 1`` keeps tails heavy enough for tilted
        targets).
    """

    method = "monte_carlo"

    def __init__(self, n: int = 100_000, *, seed: int = 0, inflation: float = 1.0) -> None:
        owner = "MonteCarlo"
        if not isinstance(n, int) or n < 100:
            raise ValueError(f"{owner}: parameter 'n' must be an int >= 100, got {n!r}")
        self.n = n
        self.seed = int(seed)
        self.inflation = check_positive(inflation, "inflation", owner)

    def __repr__(self) -> str:
        return f"MonteCarlo(n={self.n}, seed={self.seed}, inflation={self.inflation})"

    def proposal(
        self, dists: Sequence[GaussianMixture], cover: Sequence[GaussianMixture] = ()
    ) -> GaussianMixture:
        """The defensive mixture proposal for ``dists = [p0, q_1, ..., q_m]`` and ``cover``."""
        p0, qs = dists[0], list(dists[1:])
        share_cover = 0.5 if cover else 0.0
        share_q = 0.5 * (1.0 - share_cover) if qs else 0.0
        parts_w = [(1.0 - share_cover - share_q) * p0.weights]
        parts_m, parts_c = [p0.means], [p0.covariances]
        for q in qs:
            parts_w.append(q.weights * (share_q / len(qs)))
            parts_m.append(q.means.to(p0.dtype))
            parts_c.append(q.covariances.to(p0.dtype))
        for c in cover:
            parts_w.append(c.weights.to(p0.dtype) * (share_cover / len(cover)))
            parts_m.append(c.means.to(p0.dtype))
            parts_c.append(c.covariances.to(p0.dtype))
        return GaussianMixture(
            torch.cat(parts_w), torch.cat(parts_m), torch.cat(parts_c) * self.inflation
        )

    def prepare(
        self,
        dists: Sequence[GaussianMixture],
        generator: torch.Generator | None = None,
        *,
        cover: Sequence[GaussianMixture] = (),
    ) -> IntegrationRule:
        """Draw ``n`` proposal points; log-weights are ``-log(n * pi(x))``."""
        prop = self.proposal(dists, cover)
        gen = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            x = prop.sample(self.n, generator=gen)
            logw = -prop.log_prob(x) - math.log(self.n)
        return IntegrationRule(points=x, log_weights=logw, method="monte_carlo")


IntegrationMethod = Literal["auto", "grid", "monte_carlo"]


def resolve_integration(
    integration: str | GridQuadrature | MonteCarlo, dim: int, owner: str
) -> GridQuadrature | MonteCarlo:
    """Turn ``"auto" | "grid" | "monte_carlo"`` or an instance into an integration back-end."""
    if isinstance(integration, GridQuadrature | MonteCarlo):
        if isinstance(integration, GridQuadrature) and dim > 2:
            raise ValueError(
                f"{owner}: parameter 'integration' is a GridQuadrature but d={dim} > 2; "
                "grid quadrature is for d <= 2, use MonteCarlo()"
            )
        return integration
    check_choice(integration, "integration", owner, ["auto", "grid", "monte_carlo"])
    if integration == "grid" or (integration == "auto" and dim <= 2):
        if dim > 2:
            raise ValueError(
                f"{owner}: integration='grid' is for d <= 2, got d={dim}; use 'monte_carlo'"
            )
        return GridQuadrature()
    return MonteCarlo()
