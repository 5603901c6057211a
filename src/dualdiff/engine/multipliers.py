r"""Lagrange multipliers that never leave the problem's dual domain.

Cooper's :class:`~cooper.multipliers.DenseMultiplier` only clamps inequality multipliers at
zero after each dual step. The unlearning duals have smaller domains (the dual domains of
:doc:`/mathematics` and the projected dual step of :ref:`the primal–dual algorithm <primal-dual>`):

* RU: :math:`\lambda \ge 0`, :math:`\Lambda = \sum_i\lambda_i < 1` (and the geometric tilt
  normalisable);
* FU: :math:`\lambda \ge 0`, :math:`p_0 - \sum_i\lambda_i q_i \ge 0`, in particular
  :math:`\lambda_i \le \lambda_{\max,i} = \operatorname{ess\,inf} p_0/q_i`;
* LU: :math:`\lambda \ge 0` with a finite normaliser :math:`E_{p_0}[e^{-\sum_i\lambda_i\ell_i}]`.

:class:`DualDomainProjection` maps any vector into a closed subset of the domain kept a
relative ``margin`` away from its open boundary, and :class:`ProjectedMultiplier` applies it in
Cooper's ``post_step_`` hook, which every Cooper constrained optimiser calls after every dual
(and dual extrapolation) step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from cooper.multipliers import DenseMultiplier

from .._errors import DualDomainError
from .._validation import as_tensor, check_positive
from ..domain import tilt_bound

__all__ = ["DualDomainProjection", "ProjectedMultiplier", "project_capped_box"]

_DTYPE = torch.float64


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


class DualDomainProjection:
    r"""Map multipliers into the dual domain of an unlearning problem, with a safety margin.

    The map is: (1) the Euclidean projection :func:`project_capped_box` onto
    :math:`\{0\le\lambda\le u,\ \sum_i\lambda_i\le s\}` with

    * RU: :math:`s = 1-\text{margin}`; for one constraint also
      :math:`u = (1-\text{margin})\,\bar\lambda` with :math:`\bar\lambda` the normalisability
      bound of the tilt (:func:`~dualdiff.domain.tilt_bound`) when it is below 1;
    * FU: :math:`u_i = (1-\text{margin})\lambda_{\max,i}` (``problem.lam_max[i].value`` unless
      ``lam_max`` is given) and :math:`s = 1-\text{margin}`;
    * LU: :math:`u = (1-\text{margin})\,\bar\lambda` for one log-likelihood constraint (the
      tilt bound), else :math:`u = \infty`, no sum bound;

    and a user ``lam_max`` caps :math:`u` further. (2) If the result still fails
    ``problem.in_domain`` (several constraints: the domain is the convex set
    :math:`p_0-\sum_i\lambda_iq_i\ge0` or a normalisability condition, not a box), it is pulled
    back along the ray to the origin: :math:`\lambda\mapsto(1-\text{margin})\,s^\star\lambda`,
    :math:`s^\star = \max\{s\in[0,1]: s\lambda\in\text{domain}\}` by bisection. The domains
    are convex and contain 0, so the result is in the domain; it is the exact Euclidean
    projection whenever step (2) is not needed (always for one constraint).

    Parameters
    ----------
    problem
        An :class:`~dualdiff.UnlearningProblem` (``kind`` "RU", "FU" or "LU").
    margin
        Relative distance kept from the open boundary, in ``(0, 1)``.
    lam_max
        Optional user upper bounds, a float or shape ``(m,)`` (e.g. an estimated
        :math:`\lambda_{\max}` when the problem's own value is not trusted).
    """

    def __init__(self, problem: Any, *, margin: float = 1e-3, lam_max: Any = None) -> None:
        owner = "DualDomainProjection"
        self.problem = problem
        self.m = int(problem.m)
        margin = check_positive(margin, "margin", owner)
        if not margin < 1.0:
            raise ValueError(f"{owner}: parameter 'margin' must be in (0, 1), got {margin}")
        self.margin = margin
        upper = torch.full((self.m,), math.inf, dtype=_DTYPE)
        cap = math.inf
        kind = problem.kind
        if kind == "RU":
            cap = 1.0 - margin
            if self.m == 1:
                bound = tilt_bound(problem.pretrained, problem.unlearn[0])
                if bound < 1.0:
                    upper[0] = (1.0 - margin) * bound
        elif kind == "FU":
            cap = 1.0 - margin
            upper = torch.tensor(
                [(1.0 - margin) * r.value for r in problem.lam_max], dtype=_DTYPE
            )
        elif kind == "LU":
            if self.m == 1 and getattr(problem, "likelihood_name", "") == "log":
                upper[0] = (1.0 - margin) * tilt_bound(problem.pretrained, problem.unlearn[0])
        else:
            raise TypeError(
                f"{owner}: parameter 'problem' must be an unlearning problem of kind 'RU', 'FU' "
                f"or 'LU', got {type(problem).__name__} (kind={kind!r})"
            )
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
        self.cap = cap

    def __repr__(self) -> str:
        return (
            f"DualDomainProjection(kind={self.problem.kind}, upper={self.upper.tolist()}, "
            f"cap={self.cap}, margin={self.margin})"
        )

    def contains(self, lam: torch.Tensor) -> bool:
        """Whether ``lam`` ``(m,)`` lies in the margin-shrunk domain this map projects onto."""
        lam = lam.detach().to(_DTYPE).reshape(-1)
        if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
            return False
        if bool((lam > self.upper * (1 + 1e-12)).any()):
            return False
        if float(lam.sum()) > self.cap * (1 + 1e-12):
            return False
        return bool(self.problem.in_domain(lam))

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
        out = project_capped_box(lam64, self.upper, self.cap)
        if bool((out == 0).all()) or self.problem.in_domain(out):
            return out
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.problem.in_domain(mid * out):
                lo = mid
            else:
                hi = mid
        return (1.0 - self.margin) * lo * out


class ProjectedMultiplier(DenseMultiplier):
    r"""A :class:`cooper.multipliers.DenseMultiplier` projected into the dual domain.

    After every dual step Cooper calls :meth:`post_step_`; instead of Cooper's
    :math:`\max(0,\lambda)` it applies :class:`DualDomainProjection`. A dual step therefore
    computes :math:`\lambda \leftarrow \Pi_{\mathcal D}(\lambda + \eta\,\hat c)` with
    :math:`\hat c` the estimated violations (the dual step of
    :ref:`the primal–dual algorithm <primal-dual>`), however large the step :math:`\eta` is.

    Parameters
    ----------
    projection
        The domain map.
    init
        Initial multipliers ``(m,)`` (default zeros); must lie in the domain.
    device
        Device of the multiplier (float64).
    """

    def __init__(
        self,
        projection: DualDomainProjection,
        init: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        m = projection.m
        if init is None:
            init = torch.zeros(m, dtype=_DTYPE)
        init = as_tensor(init, "init_multipliers", "ProjectedMultiplier", dtype=_DTYPE).reshape(-1)
        if init.numel() != m:
            raise ValueError(
                f"ProjectedMultiplier: parameter 'init_multipliers' must have one value per "
                f"constraint (m={m}), got {init.tolist()}"
            )
        if not projection.contains(init):
            raise DualDomainError(
                f"ProjectedMultiplier: parameter 'init_multipliers'={init.tolist()} is outside "
                f"the dual domain ({projection.problem.domain_description}; upper bounds "
                f"{projection.upper.tolist()}, sum bound {projection.cap})"
            )
        dev = None if device is None else torch.device(device)
        super().__init__(num_constraints=m, init=init.clone(), device=dev, dtype=_DTYPE)
        self.projection = projection
        self._projected: torch.Tensor | None = None

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Load the multipliers like ``torch.nn.Module.load_state_dict``; clear the cache."""
        self._projected = None
        return super().load_state_dict(*args, **kwargs)

    @torch.no_grad()
    def post_step_(self) -> None:
        """Project the multipliers in place into the dual domain (called by Cooper).

        Cooper calls this after every dual step, also when no constraint was observed; the
        projection is skipped when the multipliers did not change since the last one.
        """
        if self._projected is not None and torch.equal(self.weight.data, self._projected):
            return
        projected = self.projection(self.weight.data)
        self.weight.data.copy_(projected.to(self.weight.device))
        self._projected = self.weight.data.clone()

    def __repr__(self) -> str:
        return f"ProjectedMultiplier(num_constraints={self.weight.shape[0]}, {self.projection!r})"
