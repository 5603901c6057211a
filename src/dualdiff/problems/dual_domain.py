r"""Dual domains of the unlearning problems, owned by the problems.

Each problem states its domain as a :class:`DualDomain` (:attr:`UnlearningProblem.domain
<dualdiff.problems.UnlearningProblem.domain>`): box upper bounds :math:`u`, a sum cap
:math:`s` and, for coupled conditions, an exact membership test. The dual domains of
:doc:`/mathematics`:

* RU: :math:`\lambda \ge 0`, :math:`\Lambda = \sum_i\lambda_i < 1` (and the geometric tilt
  normalisable);
* FU: :math:`\lambda \ge 0`, :math:`p_0 - \sum_i\lambda_i q_i \ge 0`, in particular
  :math:`\lambda_i \le \lambda_{\max,i} = \operatorname{ess\,inf} p_0/q_i` (for an empirical
  forget set inside a training set of size :math:`N`, :math:`\lambda_{\max} = |A|/N`);
* LU: :math:`\lambda \ge 0` with a finite normaliser :math:`E_{p_0}[e^{-\sum_i\lambda_i\ell_i}]`.

:meth:`DualDomain.project` maps any vector into a closed subset of the domain kept a relative
``margin`` away from its open boundary; :class:`DualDomainProjection` is that map with optional
user bounds, as the engine's multipliers apply it after every dual step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._constants import FLOAT64 as _DTYPE
from .._errors import DualDomainError
from .._validation import as_tensor, check_positive

__all__ = ["DualDomain", "DualDomainProjection", "project_capped_box"]



def project_capped_box(lam: torch.Tensor, upper: torch.Tensor, cap: float) -> torch.Tensor:
    r"""Euclidean projection onto :math:`\{0 \le \lambda \le u,\ \sum_i\lambda_i \le s\}`.

    .. math::
        \Pi(\lambda) = \operatorname{clip}(\lambda - \tau, 0, u),

    with :math:`\tau = 0` when the clipped vector already satisfies the sum constraint and
    otherwise the unique :math:`\tau > 0` with :math:`S(\tau) = \sum_i\operatorname{clip}
    (\lambda_i-\tau, 0, u_i) = s` (KKT conditions of the projection). :math:`S` is piecewise
    linear and non-increasing with breakpoints :math:`\lambda_i` and :math:`\lambda_i - u_i`;
    the crossing segment is found exactly and the free coordinates are evaluated as
    :math:`(\lambda_i - \bar\lambda_F) + (s - \sum_{U} u_j)/|F|` (free set :math:`F`, set
    :math:`U` at the upper bound), which stays accurate for huge :math:`\lambda` (a dual step
    with a huge step size).

    Parameters
    ----------
    lam
        Point to project, shape ``(m,)``.
    upper
        Box upper bounds :math:`u \ge 0`, shape ``(m,)`` (``inf`` allowed).
    cap
        Sum bound :math:`s \ge 0` (``inf`` for none).

    Returns
    -------
    torch.Tensor
        Shape ``(m,)``, dtype and device of ``lam``.
    """
    out = torch.minimum(lam.clamp_min(0.0), upper.to(lam))
    if not math.isfinite(cap) or float(out.sum()) <= cap:
        return out
    if cap < 0:
        raise ValueError(f"project_capped_box: parameter 'cap' must be >= 0, got {cap}")
    lv, uv = lam.tolist(), upper.tolist()
    m = len(lv)

    def total(tau: float) -> float:
        return sum(min(max(li - tau, 0.0), ui) for li, ui in zip(lv, uv, strict=True))

    breaks = {0.0, *(li for li in lv if li > 0)}
    breaks |= {li - ui for li, ui in zip(lv, uv, strict=True) if math.isfinite(ui) and li > ui}
    points = sorted(breaks)
    # S(0) > cap >= 0 = S(max lam): the first breakpoint with S <= cap closes the segment.
    k = next(i for i, b in enumerate(points) if total(b) <= cap)
    mid = 0.5 * (points[k - 1] + points[k])
    free = [i for i in range(m) if lv[i] - uv[i] < mid < lv[i]]
    at_upper = [i for i in range(m) if mid <= lv[i] - uv[i]]
    res = [min(max(li - mid, 0.0), ui) for li, ui in zip(lv, uv, strict=True)]
    if free:
        rest = cap - sum(uv[i] for i in at_upper)
        mean_free = sum(lv[i] for i in free) / len(free)
        for i in free:
            res[i] = min(max((lv[i] - mean_free) + rest / len(free), 0.0), uv[i])
    # else: S is flat on the segment (rounding of lam_i - u_i put the crossing there), so every
    # tau in it solves S(tau) = cap up to rounding; the clip at its midpoint is the projection.
    total_res = sum(res)
    if total_res > cap > 0:  # rounding: never return a point outside the capped box
        res = [r * (cap / total_res) for r in res]
    return torch.tensor(res, dtype=lam.dtype, device=lam.device)


def _always(lam: torch.Tensor) -> bool:
    return True


@dataclass(frozen=True)
class DualDomain:
    r"""The dual domain of a problem.

    :math:`\{\lambda\ge0,\ \lambda\le u,\ \sum_i\lambda_i<s\}` intersected with an exact
    membership condition.

    Attributes
    ----------
    upper
        Box upper bounds :math:`u`, shape ``(m,)``, float64 (``inf`` for none). The bound is
        attained (closed) when ``upper_closed``.
    cap
        Bound :math:`s` on :math:`\Lambda = \sum_i\lambda_i` (``inf`` for none; always open).
    description
        Human-readable statement of the domain (used in error messages and reports).
    membership
        ``membership(lam) -> bool`` for ``lam >= 0`` inside the box and the cap: the coupled
        conditions (normalisability of a tilt, :math:`p_0 - \sum_i\lambda_iq_i\ge0`). The
        domain is convex and contains 0.
    upper_closed
        Whether :math:`\lambda_i = u_i` belongs to the domain (FU's :math:`\lambda_{\max}`).
    """

    upper: torch.Tensor
    cap: float
    description: str
    membership: Callable[[torch.Tensor], bool] = _always
    upper_closed: bool = False

    @property
    def m(self) -> int:
        """Number of multipliers."""
        return int(self.upper.numel())

    def contains(self, lam: Any) -> bool:
        """Whether ``lam`` ``(m,)`` lies in the domain (finite, ``>= 0``, box, cap, membership)."""
        t = torch.as_tensor(lam, dtype=_DTYPE).detach().reshape(-1).cpu()
        if t.numel() != self.m or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            return False
        up = self.upper
        if self.upper_closed:
            if bool((t > up * (1 + 1e-12)).any()):
                return False
        elif bool(((t >= up) & torch.isfinite(up)).any()):
            return False
        if math.isfinite(self.cap) and not float(t.sum()) < self.cap:
            return False
        return bool(self.membership(t))

    def project(self, lam: torch.Tensor, margin: float = 1e-3, upper: Any = None) -> torch.Tensor:
        r"""Map ``lam`` ``(m,)`` into the domain shrunk by a relative ``margin``.

        (1) The Euclidean projection :func:`project_capped_box` onto
        :math:`\{0\le\lambda\le(1-\text{margin})u,\ \sum_i\lambda_i\le(1-\text{margin})s\}`
        (``upper`` further caps :math:`u`); (2) if the result fails :attr:`membership`, it is
        pulled back along the ray to the origin, :math:`\lambda\mapsto(1-\text{margin})\,s^\star
        \lambda` with :math:`s^\star = \max\{s\in[0,1]: s\lambda\in\text{domain}\}` by
        bisection. The result is in the domain; it is the exact Euclidean projection whenever
        step (2) is not needed (always for one constraint).

        Parameters
        ----------
        lam
            Shape ``(m,)``.
        margin
            Relative distance kept from the boundary, in ``(0, 1)``.
        upper
            Optional extra upper bounds ``(m,)`` (e.g. a user ``lam_max``).

        Returns
        -------
        torch.Tensor
            Float64, shape ``(m,)``.

        Raises
        ------
        DualDomainError
            If ``lam`` contains NaN (a projection cannot repair it).
        """
        lam64 = lam.detach().to(_DTYPE).reshape(-1).cpu()
        if bool(torch.isnan(lam64).any()):
            raise DualDomainError(
                f"DualDomain.project: cannot project multipliers containing NaN: "
                f"{lam64.tolist()}"
            )
        up = (1.0 - margin) * self.upper
        if upper is not None:
            up = torch.minimum(up, torch.as_tensor(upper, dtype=_DTYPE).reshape(-1))
        cap = (1.0 - margin) * self.cap if math.isfinite(self.cap) else math.inf
        out = project_capped_box(lam64, up, cap)
        if bool((out == 0).all()) or self.membership(out):
            return out
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.membership(mid * out):
                lo = mid
            else:
                hi = mid
        return (1.0 - margin) * lo * out


class DualDomainProjection:
    r"""Map multipliers into the dual domain of an unlearning problem, with a safety margin.

    The map is :meth:`DualDomain.project` of ``problem.domain`` with the margin and the optional
    user bounds ``lam_max``; its image is the margin-shrunk domain :meth:`contains` tests.

    Parameters
    ----------
    problem
        An :class:`~dualdiff.UnlearningProblem` (anything with ``m`` and a ``domain``).
    margin
        Relative distance kept from the open boundary, in ``(0, 1)``.
    lam_max
        Optional user upper bounds, a float or shape ``(m,)`` (e.g. an estimated
        :math:`\lambda_{\max}` when the problem's own value is not trusted).
    """

    def __init__(self, problem: Any, *, margin: float = 1e-3, lam_max: Any = None) -> None:
        owner = "DualDomainProjection"
        domain = getattr(problem, "domain", None)
        if not isinstance(domain, DualDomain):
            raise TypeError(
                f"{owner}: parameter 'problem' must be an unlearning problem with a DualDomain "
                f"'domain', got {type(problem).__name__}"
            )
        self.problem = problem
        self.domain = domain
        self.m = int(problem.m)
        margin = check_positive(margin, "margin", owner)
        if not margin < 1.0:
            raise ValueError(f"{owner}: parameter 'margin' must be in (0, 1), got {margin}")
        self.margin = margin
        upper = (1.0 - margin) * domain.upper.to(_DTYPE)
        if lam_max is not None:
            user = as_tensor(lam_max, "lam_max", owner, dtype=_DTYPE).reshape(-1)
            if user.numel() == 1:
                user = user.expand(self.m)
            if user.numel() != self.m or bool((user < 0).any()):
                raise ValueError(
                    f"{owner}: parameter 'lam_max' must be >= 0 with one value per constraint "
                    f"(m={self.m}), got {user.tolist()}"
                )
            upper = torch.minimum(upper, user)
        self.upper = upper
        self.cap = (1.0 - margin) * domain.cap if math.isfinite(domain.cap) else math.inf

    def __repr__(self) -> str:
        return (
            f"DualDomainProjection(problem={type(self.problem).__name__}, "
            f"upper={self.upper.tolist()}, cap={self.cap}, margin={self.margin})"
        )

    def contains(self, lam: torch.Tensor) -> bool:
        """Whether ``lam`` ``(m,)`` lies in the margin-shrunk domain this map projects onto."""
        lam = torch.as_tensor(lam).detach().to(_DTYPE).reshape(-1).cpu()
        if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
            return False
        if lam.numel() != self.m:
            return False
        if bool((lam > self.upper * (1 + 1e-12)).any()):
            return False
        if float(lam.sum()) > self.cap * (1 + 1e-12):
            return False
        return bool(self.domain.contains(lam))

    def __call__(self, lam: torch.Tensor) -> torch.Tensor:
        """Project ``lam`` ``(m,)``; returns a float64 tensor ``(m,)`` inside the domain.

        Raises
        ------
        DualDomainError
            If ``lam`` contains NaN (a projection cannot repair it; the engine never
            passes one).
        """
        lam64 = lam.detach().to(_DTYPE).reshape(-1)
        if bool(torch.isnan(lam64).any()):
            raise DualDomainError(
                f"DualDomainProjection: cannot project multipliers containing NaN: "
                f"{lam64.tolist()}"
            )
        return self.domain.project(lam64, self.margin, upper=self.upper)
