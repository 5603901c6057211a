r"""Exact noised densities and scores of closed-form targets by numerical convolution (d <= 2).

Under the forward process :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` the marginal of any
clean density :math:`p` is the convolution

.. math::
    p_t(x) = \int p(x_0)\,\mathcal N(x;\ \alpha_t x_0,\ \sigma_t^2 I)\,dx_0
           = \alpha_t^{-d}\int p(x_0)\,
             \mathcal N\!\big(x_0;\ x/\alpha_t,\ (\sigma_t/\alpha_t)^2 I\big)\,dx_0,

and its score follows from the posterior-mean (Tweedie) identity

.. math::
    \nabla_x\log p_t(x) = \frac{\alpha_t\,\mathbb E[x_0\mid x_t = x] - x}{\sigma_t^2}.

The RU and LU targets (:class:`~dualdiff.GeometricTarget`) are exact only at ``t = 0``: at ``t > 0``
their ``score`` is the *composed* (ESD-style) combination of noised scores, which is not the score
of the noised target because powers and products do not commute with the convolution (see
:ref:`the diffusion view <diffusion-view>`). :class:`ExactNoisedTarget` computes the true noised
target on a grid, and :func:`composed_score_error` measures how far the composed field is from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .._constants import FLOAT64 as _DTYPE
from .._constants import LOG_2PI as _LOG_2PI
from .._validation import check_finite, check_positive
from ..integration import GridQuadrature
from ..models.gaussian_mixture import GaussianMixture
from ..models.schedule import NoiseSchedule, VPSchedule

__all__ = ["ExactNoisedTarget", "ScoreErrorProfile", "composed_score_error"]

# Sums below this are treated as underflowed and recomputed in log space.
_TINY = 1e-280
# Upper bound on the number of float64 entries in one (chunk x grid-axis) block.
_BLOCK = 4_000_000
# Below this kernel width (in x0 units) the zero-noise limit is exact to O(s^2) ~ 1e-12.
_S_MIN = 1e-6


def _mixtures_of(target: Any) -> list[GaussianMixture]:
    """The Gaussian mixtures a target is built from (they fix the default grid box)."""
    if isinstance(target, GaussianMixture):
        return [target]
    out: list[GaussianMixture] = []
    p0 = getattr(target, "p0", None)
    if isinstance(p0, GaussianMixture):
        out.append(p0)
    for q in getattr(target, "unlearn", []) or []:
        if isinstance(q, GaussianMixture):
            out.append(q)
    for pot in getattr(target, "potentials", []) or []:
        q = getattr(pot, "q", None)
        if isinstance(q, GaussianMixture):
            out.append(q)
    return [m.to(_DTYPE) for m in out]


class ExactNoisedTarget:
    r"""The exact noised marginal :math:`p_t` of a clean density, by grid convolution (d <= 2).

    The clean density :math:`p` (``target.log_prob``) is tabulated once on a uniform tensor grid
    :math:`\{x_0^{(ij)}\}` with trapezoid weights :math:`\omega_{ij}`; for each query point the
    Gaussian kernel of the forward process is separable across coordinates, so

    .. math::
        p_t(x) \approx \alpha_t^{-d}\sum_{i,j}\omega_{ij}\,p(x_0^{(ij)})\,
            k_1(x_1; g^{(1)}_i)\,k_2(x_2; g^{(2)}_j)
        = \alpha_t^{-d}\;k_1(x)^\top P\,k_2(x),
        \qquad k_c(x_c; g) = \mathcal N\!\big(g;\ x_c/\alpha_t,\ (\sigma_t/\alpha_t)^2\big),

    two matrix products per point (with per-row rescaling, and an exact log-sum-exp for rows
    that would underflow). The score uses the posterior mean,
    :math:`s_t(x) = \alpha_t(\mathbb E[x_0\mid x] - x/\alpha_t)/\sigma_t^2`, with the
    expectation computed on the same grid in coordinates centred at :math:`x/\alpha_t` (no
    cancellation).

    **Accuracy and the small-t fallback.** The trapezoid rule on a grid of spacing :math:`h`
    integrates a Gaussian of standard deviation :math:`s` with relative error about
    :math:`2e^{-2\pi^2 s^2/h^2}`. The kernel's width in :math:`x_0` is
    :math:`\sigma_t/\alpha_t`, so the convolution is used wherever

    .. math::
        \sigma_t/\alpha_t \ \ge\ r\,h \qquad(r=\texttt{min\_kernel\_ratio}=1.25:\ \text{error}
        \lesssim 10^{-13}),

    where :math:`h` is the largest grid spacing. The switching time is :attr:`t_switch`.
    Below that threshold (small ``t``) the kernel is narrower than :math:`r\,h` (about a tenth
    of the smallest standard deviation with the default grid), and the Gaussian expectation
    :math:`p_t(x) = \alpha_t^{-d}\,\mathbb E_{g\sim\mathcal N(x/\alpha_t,\,(\sigma_t/\alpha_t)^2 I)}
    [p(g)]` is computed by Gauss–Hermite quadrature on the clean target's ``log_prob``
    (``hermite_nodes`` nodes per coordinate). For kernel widths :math:`\sigma_t/\alpha_t` below
    :math:`10^{-6}` (including ``t = 0``) the zero-noise limit is returned:
    :math:`\log p_t(x) \approx \log p(x/\alpha_t) - d\log\alpha_t` and
    :math:`s_t(x)\approx s_0(x/\alpha_t)/\alpha_t` (the clean target's exact ``log_prob`` and
    score), whose error is :math:`O(\sigma_t^2/\alpha_t^2)` times the target's curvature. The
    result is accurate only for :math:`x/\alpha_t` inside the grid box.

    Parameters
    ----------
    target
        The clean distribution: anything with a normalised ``log_prob(x)`` mapping ``(..., d)``
        to ``(...)``, ``d in (1, 2)`` (a :class:`~dualdiff.GaussianMixture`, a
        :class:`~dualdiff.GeometricTarget`, a :class:`~dualdiff.SignedMixtureTarget`, ...).
        Its ``score(x, 0.0)`` is used by the small-t fallback when present (else autograd of
        ``log_prob``).
    schedule
        Forward noise schedule; default ``target.schedule``, else ``target.p0.schedule``, else
        :class:`~dualdiff.VPSchedule`.
    grid
        A :class:`~dualdiff.GridQuadrature` (its ``bounds``/``extent``, ``resolution``,
        ``points_per_dim`` and ``max_points`` are used). Default: a box 8 standard deviations
        beyond the extreme means of the mixtures the target is built from, 12 points per
        smallest standard deviation (times :math:`\sqrt{a}` for a geometric target of power
        :math:`a`, which sharpens the modes), at most 400 000 points. Required when the target
        is not built from :class:`~dualdiff.GaussianMixture` objects (give explicit
        ``bounds``).
    min_kernel_ratio
        :math:`r` above: the convolution is used where the kernel width
        :math:`\sigma_t/\alpha_t` is at least ``r`` grid spacings.
    hermite_nodes
        Gauss–Hermite nodes per coordinate below the switching time (an int in ``[2, 64]``).

    Attributes
    ----------
    dim
        ``d``.
    schedule
        The noise schedule.
    spacing
        Largest grid spacing :math:`h`.
    clean_mass
        :math:`\sum\omega\,p` on the grid (should be 1; checked to 1e-3 at construction).
    t_switch
        Smallest diffusion time at which the grid convolution is used, where
        :math:`\sigma_t/\alpha_t = r\,h` (``inf`` if the kernel stays narrower up to ``t_max``);
        earlier times use the Gauss–Hermite or zero-noise evaluation.

    Raises
    ------
    ValueError
        If ``d > 2``, the target has no ``log_prob``, or its density does not integrate to one
        on the grid (the box misses mass, or ``log_prob`` is not normalised).
    TypeError
        If no grid is given for a target not built from Gaussian mixtures.

    Notes
    -----
    Source: :ref:`the diffusion view <diffusion-view>` (the composed score is an
    approximation; the exact noised target can be computed by numerical convolution in 1-D/2-D), for
    the RU/LU targets of Khalafi, Ribeiro & Ding, *Unlearning in Diffusion Models* (ICML 2026,
    arXiv:2605.30825).

    Examples
    --------
    >>> from dualdiff import GaussianMixture
    >>> p = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], 0.25)
    >>> exact = ExactNoisedTarget(p)
    >>> x = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    >>> bool(torch.allclose(exact.score(x, 0.3), p.score(x, 0.3), atol=1e-8))
    True
    """

    #: The score is the exact noised score (up to quadrature / the small-t fallback).
    score_at_positive_t = "exact"

    def __init__(
        self,
        target: Any,
        schedule: NoiseSchedule | None = None,
        grid: GridQuadrature | None = None,
        *,
        min_kernel_ratio: float = 1.25,
        hermite_nodes: int = 16,
    ) -> None:
        owner = "ExactNoisedTarget"
        if not callable(getattr(target, "log_prob", None)):
            raise TypeError(
                f"{owner}: parameter 'target' must have a normalised log_prob(x), got "
                f"{type(target).__name__}"
            )
        self.min_kernel_ratio = check_positive(min_kernel_ratio, "min_kernel_ratio", owner)
        if (
            not isinstance(hermite_nodes, int)
            or isinstance(hermite_nodes, bool)
            or not 2 <= hermite_nodes <= 64
        ):
            raise ValueError(
                f"{owner}: parameter 'hermite_nodes' must be an int in [2, 64], got "
                f"{hermite_nodes!r}"
            )
        self.hermite_nodes = hermite_nodes
        mixtures = _mixtures_of(target)
        dim = getattr(target, "dim", None)
        if dim is None and mixtures:
            dim = mixtures[0].dim
        if not isinstance(dim, int) or dim not in (1, 2):
            raise ValueError(
                f"{owner}: numerical convolution is implemented for d in (1, 2), got d={dim}"
            )
        if grid is None:
            if not mixtures:
                raise TypeError(
                    f"{owner}: parameter 'grid' is required for a target of type "
                    f"{type(target).__name__} that is not built from GaussianMixture objects; "
                    "pass GridQuadrature(bounds=[(lo, hi), ...], resolution=...)"
                )
            sharpen = max(1.0, float(getattr(target, "power", 1.0)))
            grid = GridQuadrature(extent=8.0, resolution=12.0 * math.sqrt(sharpen))
        elif not isinstance(grid, GridQuadrature):
            raise TypeError(
                f"{owner}: parameter 'grid' must be a dualdiff.GridQuadrature or None, got "
                f"{type(grid).__name__}"
            )
        if not mixtures and grid.bounds is None:
            raise ValueError(
                f"{owner}: parameter 'grid' needs explicit bounds for a target that is not "
                "built from GaussianMixture objects"
            )
        self.target = target
        self.dim = dim
        if schedule is None:
            schedule = getattr(target, "schedule", None) or getattr(
                getattr(target, "p0", None), "schedule", None
            )
        self.schedule: NoiseSchedule = schedule if schedule is not None else VPSchedule()
        if not mixtures:  # explicit bounds: a placeholder fixes dim and the resolution scale
            mixtures = [GaussianMixture([1.0], [[0.0] * dim], 1.0)]
        rule = grid.prepare(mixtures)
        n_axis = round(rule.n_points ** (1.0 / dim))
        shape = (n_axis,) * dim
        pts = rule.points.to(_DTYPE).reshape(*shape, dim)
        if dim == 1:
            axes = [pts[:, 0]]
        else:
            axes = [pts[:, 0, 0], pts[0, :, 1]]
        self._axes = [a.contiguous() for a in axes]
        self.spacing = float(max(float(a[1] - a[0]) for a in axes))
        with torch.no_grad():
            device = getattr(target, "device", None) or (mixtures[0].device if mixtures else None)
            x = rule.points.to(dtype=_DTYPE, device=device)
            logp = target.log_prob(x).to(_DTYPE).cpu()
        if logp.shape != (rule.n_points,) or bool(torch.isnan(logp).any()):
            raise ValueError(
                f"{owner}: target.log_prob must map (N, {dim}) to finite-or--inf values of "
                f"shape (N,), got shape {tuple(logp.shape)}"
            )
        log_table = (logp + rule.log_weights.to(_DTYPE).cpu()).reshape(shape)
        self._log_table = log_table
        self._log_max = float(log_table.max())
        self._table = torch.exp(log_table - self._log_max)
        self.clean_mass = float(torch.logsumexp(log_table.reshape(-1), 0).exp())
        if not abs(self.clean_mass - 1.0) < 1e-3:
            raise ValueError(
                f"{owner}: the target's density integrates to {self.clean_mass:.6g} on the grid "
                f"(box {[(float(a[0]), float(a[-1])) for a in axes]}), not 1: widen the grid "
                "bounds / extent, or check that target.log_prob is normalised"
            )
        self._cache: dict[torch.device, tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}
        #: Smallest diffusion time at which the grid convolution is used (``inf`` if never).
        self.t_switch = self._switch_time()

    def __repr__(self) -> str:
        return (
            f"ExactNoisedTarget(target={type(self.target).__name__}, d={self.dim}, "
            f"grid={tuple(a.numel() for a in self._axes)}, spacing={self.spacing:.4g}, "
            f"t_switch={self.t_switch:.4g})"
        )

    # ------------------------------------------------------------------ helpers
    def _switch_time(self) -> float:
        """Smallest t with sigma_t/alpha_t >= r h (bisection; sigma/alpha is increasing)."""
        thr = self.min_kernel_ratio * self.spacing

        def ratio(t: float) -> float:
            tt = torch.tensor(t, dtype=_DTYPE)
            return float(self.schedule.sigma(tt) / self.schedule.alpha(tt))

        hi = float(self.schedule.t_max)
        if ratio(hi) < thr:
            return math.inf
        lo = 0.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if ratio(mid) >= thr:
                hi = mid
            else:
                lo = mid
        return hi

    def _tables(
        self, device: torch.device
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        if device not in self._cache:
            self._cache[device] = (
                [a.to(device) for a in self._axes],
                self._table.to(device),
                self._log_table.to(device),
            )
        return self._cache[device]

    def _prepare(
        self, x: torch.Tensor, t: torch.Tensor | float | None, method: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        owner = f"ExactNoisedTarget.{method}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{owner}: parameter 'x' must be a torch.Tensor, got {type(x).__name__}"
            )
        if x.ndim < 1 or x.shape[-1] != self.dim or not x.is_floating_point():
            raise ValueError(
                f"{owner}: parameter 'x' must be a floating tensor of shape (..., {self.dim}), "
                f"got shape {tuple(x.shape)} and dtype {x.dtype}"
            )
        batch = x.shape[:-1]
        t_t = torch.as_tensor(0.0 if t is None else t, dtype=_DTYPE, device=x.device)
        check_finite(t_t, "t", owner)
        try:
            t_b = t_t.reshape(()).expand(batch) if t_t.numel() == 1 else t_t.expand(batch)
        except RuntimeError:
            raise ValueError(
                f"{owner}: parameter 't' must be a scalar or broadcastable to {tuple(batch)}, "
                f"got shape {tuple(t_t.shape)}"
            ) from None
        if bool((t_b < 0).any()) or bool((t_b > self.schedule.t_max).any()):
            raise ValueError(
                f"{owner}: parameter 't' must lie in [0, {self.schedule.t_max}], got values in "
                f"[{float(t_b.min())}, {float(t_b.max())}]"
            )
        return x.reshape(-1, self.dim).to(_DTYPE), t_b.reshape(-1)

    def _clean_score(self, u: torch.Tensor) -> torch.Tensor:
        fn = getattr(self.target, "score", None)
        if callable(fn):
            return fn(u, 0.0).to(_DTYPE)
        with torch.enable_grad():
            u_ = u if u.requires_grad else u.detach().requires_grad_(True)
            lp = self.target.log_prob(u_).sum()
            (g,) = torch.autograd.grad(lp, u_, create_graph=u.requires_grad)
        return g.to(_DTYPE)

    def _evaluate(
        self, x: torch.Tensor, t: torch.Tensor, want_score: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-density ``(N,)`` and optionally score ``(N, d)`` for flat float64 inputs."""
        alpha = self.schedule.alpha(t).to(_DTYPE)
        sigma = self.schedule.sigma(t).to(_DTYPE)
        ratio = sigma / alpha
        regime = torch.where(
            ratio >= self.min_kernel_ratio * self.spacing,
            2,
            torch.where(ratio >= _S_MIN, 1, 0),
        )
        n = x.shape[0]
        logp = x.new_zeros(n)
        score = x.new_zeros(n, self.dim) if want_score else None
        log_alpha_d = self.dim * torch.log(alpha)
        u_all = x / alpha[:, None]
        for code, fn in ((0, self._zero_noise), (1, self._hermite), (2, self._convolve)):
            idx = torch.nonzero(regime == code).flatten()
            if idx.numel() == 0:
                continue
            s = ratio[idx]
            lp, shift = fn(u_all[idx], s, want_score)
            logp = logp.index_copy(0, idx, lp - log_alpha_d[idx])
            if score is not None:
                if code == 0:  # shift is already the clean score at u
                    assert shift is not None
                    sc = shift / alpha[idx, None]
                else:
                    # s_t = alpha (E[x0|x] - x/alpha) / sigma^2 = E[x0 - u | x] / (alpha s^2)
                    assert shift is not None
                    sc = shift / (alpha[idx] * s**2)[:, None]
                score = score.index_copy(0, idx, sc)
        return logp, score

    def _zero_noise(
        self, u: torch.Tensor, s: torch.Tensor, want_score: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Zero-noise limit: the clean ``log p(u)`` and (in place of a shift) ``s_0(u)``."""
        lp = self.target.log_prob(u).to(_DTYPE)
        return lp, (self._clean_score(u) if want_score else None)

    def _hermite(
        self, u: torch.Tensor, s: torch.Tensor, want_score: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""Gauss–Hermite: ``log E_{g~N(u, s^2 I)} p(g)`` ``(B,)`` and ``E_post[g - u]``."""
        nodes, log_w = self._gh(u.device)
        m = nodes.shape[0]
        chunk = max(1, _BLOCK // (4 * m))
        lps, shifts = [], []
        for start in range(0, u.shape[0], chunk):
            uc, sc = u[start : start + chunk], s[start : start + chunk]
            offs = math.sqrt(2.0) * sc[:, None, None] * nodes[None]  # (B, M, d)
            pts = (uc[:, None, :] + offs).reshape(-1, self.dim)
            logits = self.target.log_prob(pts).to(_DTYPE).reshape(uc.shape[0], m) + log_w
            lps.append(torch.logsumexp(logits, -1) - 0.5 * self.dim * math.log(math.pi))
            if want_score:
                shifts.append((torch.softmax(logits, -1)[..., None] * offs).sum(-2))
        return torch.cat(lps), (torch.cat(shifts) if want_score else None)

    def _gh(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        z, w = np.polynomial.hermite.hermgauss(self.hermite_nodes)
        zt = torch.as_tensor(z, dtype=_DTYPE, device=device)
        lw = torch.log(torch.as_tensor(w, dtype=_DTYPE, device=device))
        if self.dim == 1:
            return zt[:, None], lw
        z0, z1 = torch.meshgrid(zt, zt, indexing="ij")
        w0, w1 = torch.meshgrid(lw, lw, indexing="ij")
        return torch.stack([z0.reshape(-1), z1.reshape(-1)], -1), (w0 + w1).reshape(-1)

    def _convolve(
        self, u: torch.Tensor, s: torch.Tensor, want_score: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""``log sum_g w p(g) N(g; u, s^2 I)`` ``(B,)`` and ``E[g - u]`` ``(B, d)``."""
        axes, table, log_table = self._tables(u.device)
        n_max = max(a.numel() for a in axes)
        chunk = max(1, _BLOCK // n_max)
        out_lp, out_m = [], []
        for start in range(0, u.shape[0], chunk):
            uc, sc = u[start : start + chunk], s[start : start + chunk]
            lp, m = self._convolve_block(uc, sc, axes, table, log_table, want_score)
            out_lp.append(lp)
            out_m.append(m)
        lp_all = torch.cat(out_lp)
        m_all = torch.cat([m for m in out_m if m is not None]) if want_score else None
        return lp_all, m_all

    def _convolve_block(
        self,
        u: torch.Tensor,
        s: torch.Tensor,
        axes: list[torch.Tensor],
        table: torch.Tensor,
        log_table: torch.Tensor,
        want_score: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        d = self.dim
        diffs, log_k, kern = [], [], []
        for c in range(d):
            diff = axes[c][None, :] - u[:, c : c + 1]  # (B, n_c)
            lk = -0.5 * (diff / s[:, None]) ** 2 - 0.5 * (_LOG_2PI + 2 * torch.log(s))[:, None]
            row_max = lk.detach().max(-1, keepdim=True).values
            diffs.append(diff)
            log_k.append((lk, row_max))
            kern.append(torch.exp(lk - row_max))
        shift = sum(rm.squeeze(-1) for _, rm in log_k) + self._log_max
        if d == 1:
            total = kern[0] @ table
            means = [(kern[0] * diffs[0]) @ table] if want_score else []
        else:
            a = kern[0] @ table  # (B, n_2)
            total = (a * kern[1]).sum(-1)
            means = []
            if want_score:
                m0 = ((kern[0] * diffs[0]) @ table * kern[1]).sum(-1)
                m1 = (a * kern[1] * diffs[1]).sum(-1)
                means = [m0, m1]
        bad = ~(total > _TINY)
        if bool(bad.any()):
            # Underflow: exact log-sum-exp over the whole grid for these rows.
            idx = torch.nonzero(bad).flatten()
            lp_b, m_b = self._log_space(u[idx], s[idx], axes, log_table, want_score)
            safe_total = torch.where(bad, torch.ones_like(total), total)
            logp = torch.log(safe_total) + shift
            logp = logp.index_copy(0, idx, lp_b)
            mean = None
            if want_score:
                mean = torch.stack(means, -1) / safe_total[:, None]
                assert m_b is not None
                mean = mean.index_copy(0, idx, m_b)
            return logp, mean
        logp = torch.log(total) + shift
        mean = torch.stack(means, -1) / total[:, None] if want_score else None
        return logp, mean

    def _log_space(
        self,
        u: torch.Tensor,
        s: torch.Tensor,
        axes: list[torch.Tensor],
        log_table: torch.Tensor,
        want_score: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        flat = log_table.reshape(-1)
        if self.dim == 1:
            grid = axes[0][:, None]
        else:
            g0, g1 = torch.meshgrid(axes[0], axes[1], indexing="ij")
            grid = torch.stack([g0.reshape(-1), g1.reshape(-1)], -1)
        chunk = max(1, _BLOCK // flat.numel())
        lps, ms = [], []
        for start in range(0, u.shape[0], chunk):
            uc, sc = u[start : start + chunk], s[start : start + chunk]
            diff = grid[None, :, :] - uc[:, None, :]  # (B, N, d)
            lk = (
                -0.5 * ((diff / sc[:, None, None]) ** 2).sum(-1)
                - 0.5 * self.dim * (_LOG_2PI + 2 * torch.log(sc))[:, None]
            )
            logits = lk + flat[None, :]
            lps.append(torch.logsumexp(logits, -1))
            if want_score:
                ms.append((torch.softmax(logits, -1)[..., None] * diff).sum(-2))
        return torch.cat(lps), (torch.cat(ms) if want_score else None)

    # ------------------------------------------------------------------ public API
    def log_prob(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        r"""Log-density :math:`\log p_t(x)` of the noised target.

        Parameters
        ----------
        x
            Points, shape ``(..., d)``.
        t
            Diffusion time: ``None`` or ``0`` (the clean target), a float, a 0-d tensor, or a
            tensor broadcastable to ``x.shape[:-1]`` (one time per point), in ``[0, t_max]``.

        Returns
        -------
        torch.Tensor
            Shape ``x.shape[:-1]``, dtype of ``x``.
        """
        xf, tf = self._prepare(x, t, "log_prob")
        lp, _ = self._evaluate(xf, tf, want_score=False)
        return lp.to(x.dtype).reshape(x.shape[:-1])

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        r"""Exact noised score :math:`\nabla_x\log p_t(x)` (posterior-mean identity).

        Parameters
        ----------
        x
            Points, shape ``(..., d)``.
        t
            Diffusion time: a float, a 0-d tensor, or a tensor broadcastable to
            ``x.shape[:-1]``, in ``[0, t_max]``.
        cond
            Ignored (accepted for :class:`~dualdiff.ScoreModel` conformity).

        Returns
        -------
        torch.Tensor
            Shape and dtype of ``x``; differentiable with respect to ``x``.
        """
        xf, tf = self._prepare(x, t, "score")
        _, sc = self._evaluate(xf, tf, want_score=True)
        assert sc is not None
        return sc.to(x.dtype).reshape(x.shape)


class ScoreErrorProfile(NamedTuple):
    r"""Error of a composed score field along diffusion time (see :func:`composed_score_error`).

    Attributes
    ----------
    times
        Diffusion times, shape ``(T,)``.
    mse
        :math:`\mathbb E_{x\sim p_{\lambda,t}}\|s^{\mathrm{comp}}_t(x) - s_{\lambda,t}(x)\|^2`,
        shape ``(T,)``.
    stderr
        Monte Carlo standard error of ``mse``, shape ``(T,)``.
    exact_sq_norm
        :math:`\mathbb E\|s_{\lambda,t}\|^2` (the scale to compare with), shape ``(T,)``.
    relative
        ``mse / exact_sq_norm``, shape ``(T,)``.
    n
        Number of samples per time.
    """

    times: torch.Tensor
    mse: torch.Tensor
    stderr: torch.Tensor
    exact_sq_norm: torch.Tensor
    relative: torch.Tensor
    n: int


def composed_score_error(
    target: Any,
    ts: Sequence[float] | torch.Tensor,
    n: int,
    *,
    exact: ExactNoisedTarget | None = None,
    generator: torch.Generator | None = None,
) -> ScoreErrorProfile:
    r"""Mean squared gap between a target's composed score and its exact noised score, per t.

    .. math::
        \mathrm{err}(t) = \mathbb E_{x_t\sim p_{\lambda,t}}
            \big\|\texttt{target.score}(x_t, t) - \nabla\log p_{\lambda,t}(x_t)\big\|^2,
        \qquad x_t = \alpha_t x_0 + \sigma_t\varepsilon,\ x_0\sim p_\lambda,

    estimated with the same ``n`` clean samples and noises at every ``t`` (common random
    numbers). For :class:`~dualdiff.GeometricTarget` (RU/LU) ``target.score`` at ``t > 0`` is
    the composed (ESD-style) field; for :class:`~dualdiff.SignedMixtureTarget` (FU) it is exact
    and the error is only quadrature error.

    Parameters
    ----------
    target
        A closed-form target with ``sample(n, generator)``, ``log_prob`` and ``score(x, t)``
        (``d <= 2``).
    ts
        Diffusion times, shape ``(T,)``, each in ``[0, t_max]``.
    n
        Samples per time (``>= 2``).
    exact
        A prepared :class:`ExactNoisedTarget` of ``target`` (built with defaults if omitted).
    generator
        Randomness of the clean samples and of the noise.

    Returns
    -------
    ScoreErrorProfile

    Notes
    -----
    Multiplied by :math:`g(t)^2/2` and integrated over ``t`` this is the path-space KL
    (Girsanov) between the reverse processes driven by the exact and the composed fields (see
    :ref:`the diffusion view <diffusion-view>`), an upper bound on the KL between their samples up
    to the terminal term.
    """
    owner = "composed_score_error"
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"{owner}: parameter 'n' must be an int >= 2, got {n!r}")
    times = torch.as_tensor(ts, dtype=_DTYPE).reshape(-1)
    check_finite(times, "ts", owner)
    if times.numel() == 0:
        raise ValueError(f"{owner}: parameter 'ts' must hold at least one time, got none")
    if exact is None:
        exact = ExactNoisedTarget(target)
    elif not isinstance(exact, ExactNoisedTarget):
        raise TypeError(
            f"{owner}: parameter 'exact' must be an ExactNoisedTarget or None, got "
            f"{type(exact).__name__}"
        )
    sched = exact.schedule
    if bool((times < 0).any()) or bool((times > sched.t_max).any()):
        raise ValueError(
            f"{owner}: parameter 'ts' must lie in [0, {sched.t_max}], got {times.tolist()}"
        )
    with torch.no_grad():
        x0 = target.sample(n, generator=generator).to(_DTYPE)
        eps = torch.randn(x0.shape, dtype=_DTYPE, device=x0.device, generator=generator)
        mse, err, norm = [], [], []
        for t in times:
            a, s = sched.alpha(t).to(_DTYPE), sched.sigma(t).to(_DTYPE)
            xt = a * x0 + s * eps
            tt = float(t)
            ref = exact.score(xt, tt)
            comp = target.score(xt, tt).to(_DTYPE)
            sq = ((comp - ref) ** 2).sum(-1)
            mse.append(sq.mean())
            err.append(sq.std(unbiased=True) / math.sqrt(n))
            norm.append((ref**2).sum(-1).mean())
    mse_t, err_t, norm_t = torch.stack(mse), torch.stack(err), torch.stack(norm)
    return ScoreErrorProfile(
        times=times,
        mse=mse_t,
        stderr=err_t,
        exact_sq_norm=norm_t,
        relative=mse_t / norm_t,
        n=n,
    )
