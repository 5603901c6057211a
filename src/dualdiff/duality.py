r"""Dual maximisation, certificates and solutions.

The dual function :math:`g(\lambda)` of each problem is concave; its Danskin gradient is the
constraint violation of the closed-form target, :math:`\nabla g(\lambda) = c(p_\lambda)` with
:math:`c_i = b_i - C_i` (KL problems) or :math:`c_i = C_i - \tau_i` (LU), and its Hessian is
minus a covariance (see each problem). :func:`maximize_dual` uses safeguarded Newton steps:
a bracketing Newton–bisection in one dimension, a projected Newton method with Armijo
backtracking (rejecting points outside the dual domain) for several constraints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

__all__ = ["Certificate", "DualEval", "DualSolution", "Status", "maximize_dual"]

Status = Literal[
    "optimal", "boundary", "infeasible", "max_iter", "inaccurate", "feasible", "unknown"
]


class DualEval(NamedTuple):
    """One evaluation of the dual: value, gradient ``(m,)``, Hessian ``(m, m)`` and error bars."""

    value: float
    grad: torch.Tensor
    hess: torch.Tensor
    value_err: float
    grad_err: torch.Tensor


@dataclass(frozen=True)
class Certificate:
    r"""Optimality certificate of a candidate distribution :math:`p` at multipliers :math:`\lambda`.

    ``gap = primal_value - dual_value``. By weak duality :math:`g(\lambda) \le P^\star`, so
    when the candidate is feasible, ``gap`` bounds its suboptimality
    :math:`f(p) - P^\star \le` ``gap``.

    Attributes
    ----------
    primal_value
        Objective :math:`f(p)` (a KL divergence to the pretrained model).
    dual_value
        :math:`g(\lambda)` as computed. ``dual_value - dual_error`` is a lower bound on the
        optimum :math:`P^\star` (weak duality); ``dual_value`` alone is one only up to its
        error bar.
    gap
        ``primal_value - dual_value``.
    constraint_values
        :math:`C_i(p)`, shape ``(m,)`` (KL divergences, or expected likelihoods for LU).
    slack
        ``(m,)``, non-negative when satisfied: :math:`C_i - b_i` (KL) or :math:`\tau_i - C_i` (LU).
    feasible
        ``True``: every slack is ``>= 3`` error bars, or ``>= -1e-9 (1 + |level|)`` with an
        error bar below ``1e-6 (1 + |level|)``; ``False``: some slack is below
        ``-(3 error bars + 1e-9 (1 + |level|))``;
        ``None``: unknown (the error bars are too large to decide). Never ``True`` on the
        strength of a large error bar.
    status
        Solve status for a dual solution's certificate (see :class:`DualSolution`);
        ``"feasible"``, ``"infeasible"`` or ``"unknown"`` (as ``feasible``) for a certificate
        of an arbitrary candidate.
    multipliers
        The :math:`\lambda` used, ``(m,)``.
    method
        ``"grid"`` or ``"monte_carlo"``: how the integrals were computed.
    primal_error
        Error bar of ``primal_value`` (grid: difference to a coarser grid plus edge mass; MC:
        standard error).
    dual_error
        Error bar of ``dual_value``: 0 up to rounding for closed forms; grid: difference to the
        coarser grid, edge mass and the bound on the target's mass outside the box (from
        Gaussian envelopes of the target); MC: standard error.
    gap_error
        Error bar of ``gap`` (same construction).
    constraint_errors
        Error bars of ``constraint_values``, ``(m,)``.
    complementary_slackness
        :math:`\lambda_i\cdot\text{slack}_i`, ``(m,)``.
    normalisation
        :math:`\int p` (should be 1 for a valid candidate). For a dual solution's target it is
        computed on a grid independent of the one that normalised it (wider box, other
        spacing), or from the exact mixture for closed forms; for other candidates on the
        problem's rule.
    """

    primal_value: float
    dual_value: float
    gap: float
    constraint_values: torch.Tensor
    slack: torch.Tensor
    feasible: bool | None
    status: str
    multipliers: torch.Tensor
    method: str
    primal_error: float
    dual_error: float
    gap_error: float
    constraint_errors: torch.Tensor
    complementary_slackness: torch.Tensor
    normalisation: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = v.tolist() if isinstance(v, torch.Tensor) else v
        return out

    def __str__(self) -> str:
        return (
            f"Certificate(status={self.status}, primal={self.primal_value:.6g}, "
            f"dual={self.dual_value:.6g}, gap={self.gap:.3g} ± {self.gap_error:.1g}, "
            f"slack={[round(s, 6) for s in self.slack.tolist()]}, feasible={self.feasible}, "
            f"method={self.method})"
        )


@dataclass
class DualSolution:
    r"""Result of ``problem.solve_dual()``.

    Attributes
    ----------
    multipliers
        Optimal dual variables, ``(m,)`` (float64).
    target
        The closed-form optimal distribution :math:`p_{\lambda^\star}`.
    certificate
        :class:`Certificate` of the target at the multipliers.
    status
        ``"optimal"`` (stationary point of the dual, integration error bars below the
        tolerance: the certificate's numbers are right to those bars), ``"boundary"`` (dual
        maximised on the domain boundary: the primal optimum is not attained and the target
        does not meet the constraint), ``"infeasible"`` (the dual is unbounded: no distribution
        meets the levels; only when that is certified), ``"max_iter"`` (iteration cap, stalled,
        or an unbounded-looking dual that is not certified) or ``"inaccurate"`` (the solver
        stopped but the integration error bars are above the tolerance: nothing is certified;
        the message says what to change).
    dual_value
        :math:`g(\lambda^\star)`.
    gradient
        Danskin gradient at the solution (the target's constraint violations).
    iterations
        Solver iterations.
    n_evaluations
        Dual-oracle evaluations.
    message
        Explanation of the status.
    history
        List of ``(lam, g)`` per iteration.
    domain
        Description of the dual domain used (e.g. ``lam_max`` and how it was found).
    """

    multipliers: torch.Tensor
    target: Any
    certificate: Certificate
    status: str
    dual_value: float
    gradient: torch.Tensor
    iterations: int
    n_evaluations: int
    message: str
    history: list[tuple[list[float], float]] = field(default_factory=list)
    domain: dict[str, Any] = field(default_factory=dict)


class _Counter:
    def __init__(self, oracle: Callable[[torch.Tensor], DualEval]):
        self.oracle = oracle
        self.n = 0

    def __call__(self, lam: torch.Tensor) -> DualEval | None:
        self.n += 1
        try:
            ev = self.oracle(lam)
        except (ValueError, RuntimeError):
            return None
        if not (math.isfinite(ev.value) and bool(torch.isfinite(ev.grad).all())):
            return None
        return ev


def maximize_dual(
    oracle: Callable[[torch.Tensor], DualEval],
    m: int,
    *,
    upper: float | torch.Tensor = math.inf,
    upper_closed: bool = False,
    in_domain: Callable[[torch.Tensor], bool] | None = None,
    gtol: float = 1e-10,
    xtol: float = 1e-12,
    max_iter: int = 100,
    infeasible_at: float = 1e8,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, str, int, int, list[tuple[list[float], float]], str]:
    """Maximise a concave dual over ``0 <= lam <= upper`` intersected with a domain.

    Parameters
    ----------
    oracle
        ``lam -> DualEval``; may raise ``ValueError`` or return non-finite values outside the
        domain.
    m
        Number of multipliers.
    upper
        Per-coordinate bounds (a float, or a tensor ``(m,)``; ``inf`` for none). A coordinate
        pinned at its bound with an ascending gradient makes the status ``"boundary"``.
    upper_closed
        Whether the box is ``[0, upper]`` (``True``) or ``[0, upper)`` (``False``).
    in_domain
        Several constraints: membership test of the rest of the convex domain (coupled
        conditions such as ``sum(lam) < 1``).
    gtol
        Tolerance on the projected gradient.
    xtol
        Tolerance on the step / bracket width.
    max_iter
        Iteration cap (status ``"max_iter"``).
    infeasible_at
        Multipliers beyond this norm with an ascending dual mean the dual is unbounded.
    start
        Several constraints: a starting point (e.g. the solution on a coarser rule); ignored
        when it is outside ``[0, upper]``, fails ``in_domain`` or its dual is not finite
        (the solve then starts at 0).

    Returns
    -------
    lam : torch.Tensor
        The maximiser, shape ``(m,)``, float64.
    status : str
        ``"optimal"``, ``"boundary"``, ``"infeasible"`` or ``"max_iter"``.
    iterations : int
        Solver iterations.
    n_evaluations : int
        Oracle calls.
    history : list of tuple
        ``(lam, g)`` per iteration, ``lam`` as a list of floats.
    message : str
        Explanation of the status.
    """
    f = _Counter(oracle)
    up = torch.as_tensor(upper, dtype=torch.float64).reshape(-1).expand(m).clone()
    if m == 1:
        return (*_maximize_1d(f, float(up[0]), upper_closed, gtol, xtol, max_iter, infeasible_at),)
    if not upper_closed:  # stay strictly inside open bounds
        up = torch.where(torch.isfinite(up), up * (1 - 1e-10), up)
    return (*_maximize_nd(f, m, up, in_domain, gtol, xtol, max_iter, infeasible_at, start),)


def _maximize_1d(
    f: _Counter,
    upper: float,
    upper_closed: bool,
    gtol: float,
    xtol: float,
    max_iter: int,
    infeasible_at: float,
) -> tuple[torch.Tensor, str, int, int, list[tuple[list[float], float]], str]:
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    hist: list[tuple[list[float], float]] = []
    ev = f(t(0.0))
    if ev is None:
        raise ValueError("solve_dual: the dual is not finite at lam = 0 (check the problem data)")
    hist.append(([0.0], ev.value))
    if float(ev.grad[0]) <= gtol:
        return t(0.0), "optimal", 0, f.n, hist, "constraint inactive at the pretrained model"
    lo, hi = 0.0, upper
    x, cur = 0.0, ev
    if math.isfinite(upper) and upper_closed:
        evu = f(t(upper))
        if evu is not None and abs(float(evu.grad[0])) <= gtol:
            hist.append(([upper], evu.value))
            return t(upper), "optimal", 1, f.n, hist, "stationary at the domain bound lam_max"
        if evu is not None and float(evu.grad[0]) > 0:
            hist.append(([upper], evu.value))
            return (
                t(upper),
                "boundary",
                1,
                f.n,
                hist,
                "dual maximised at the domain bound lam_max: the primal optimum is not attained",
            )
    for it in range(1, max_iter + 1):
        g1, h1 = float(cur.grad[0]), float(cur.hess[0, 0])
        step = x - g1 / h1 if h1 < 0 else math.nan
        if math.isfinite(hi):
            if not (lo < step < hi):
                step = 0.5 * (lo + hi)
        elif not (lo < step) or not math.isfinite(step):
            step = max(2.0 * x, 1.0)
        new = f(t(step))
        if new is None:
            hi = step
            if not upper_closed and abs(hi - lo) <= xtol * (1 + hi):
                return t(lo), "boundary", it, f.n, hist, "dual increases up to the domain boundary"
            continue
        hist.append(([step], new.value))
        x, cur = step, new
        gv = float(new.grad[0])
        if gv > 0:
            lo = step
        else:
            hi = step
        if abs(gv) <= gtol:
            return t(x), "optimal", it, f.n, hist, "stationary point of the dual"
        if math.isfinite(hi) and (hi - lo) <= xtol * (1 + hi):
            if hi == upper and gv > 0:
                return (
                    t(x),
                    "boundary",
                    it,
                    f.n,
                    hist,
                    "dual increases up to the open domain boundary: the primal optimum is not "
                    "attained",
                )
            return t(x), "optimal", it, f.n, hist, "bracket converged"
        if x > infeasible_at:
            return (
                t(x),
                "infeasible",
                it,
                f.n,
                hist,
                "the dual keeps increasing: no distribution satisfies the constraint level",
            )
    return t(x), "max_iter", max_iter, f.n, hist, "iteration limit reached"


def _projected_gradient(lam: torch.Tensor, g: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Gradient with the components that point out of the box ``[0, upper]`` zeroed."""
    blocked = ((lam <= 0) & (g <= 0)) | ((lam >= upper) & (g >= 0))
    return torch.where(blocked, torch.zeros_like(g), g)


def _tangent_step(
    f: _Counter,
    lam: torch.Tensor,
    cur: DualEval,
    upper: torch.Tensor,
    in_domain: Callable[[torch.Tensor], bool] | None,
    gtol: float,
) -> tuple[torch.Tensor, DualEval] | None:
    r"""An ascent step along the domain's boundary, or ``None`` when there is none.

    Where every Newton and gradient step leaves the dual domain (not a box: RU's
    :math:`\sum\lambda < 1`, normalisability), the point is a boundary maximiser only if no
    feasible direction ascends. The candidates are :math:`e_i - e_j` (weight moved from a
    positive :math:`\lambda_j` to :math:`\lambda_i`, keeping :math:`\sum\lambda`; rate
    :math:`g_i - g_j`) and :math:`-e_j` (a positive :math:`\lambda_j` lowered, where
    :math:`g_j < 0`); each
    is tried with a halving line search from the largest step (all of :math:`\lambda_j`). A
    stalled solve on RU's face :math:`\sum\lambda = 1` with gradient (789, 3096, 811) had
    been certified ``boundary`` although the optimum was interior.
    """
    g = cur.grad
    m = lam.numel()
    cands: list[tuple[float, int | None, int]] = []
    for j in range(m):
        if float(lam[j]) <= 0:
            continue
        cands += [(float(g[i] - g[j]), i, j) for i in range(m) if i != j]
        cands.append((-float(g[j]), None, j))
    for rate, i, j in sorted((c for c in cands if c[0] > gtol), reverse=True):
        d = torch.zeros_like(lam)
        d[j] = -1.0
        if i is not None:
            d[i] = 1.0
        step = float(lam[j])
        for _ in range(40):
            trial = torch.minimum(torch.clamp(lam + step * d, min=0.0), upper)
            if in_domain is None or in_domain(trial):
                ev = f(trial)
                if ev is not None and ev.value > cur.value + 1e-4 * rate * step:
                    return trial, ev
            step *= 0.5
    return None


def _maximize_nd(
    f: _Counter,
    m: int,
    upper: torch.Tensor,
    in_domain: Callable[[torch.Tensor], bool] | None,
    gtol: float,
    xtol: float,
    max_iter: int,
    infeasible_at: float,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, str, int, int, list[tuple[list[float], float]], str]:
    lam = torch.zeros(m, dtype=torch.float64)
    cur = None
    if start is not None:
        x0 = start.detach().to(torch.float64).reshape(-1)
        inside = bool((x0 >= 0).all()) and bool((x0 <= upper).all())
        if x0.numel() == m and inside and (in_domain is None or in_domain(x0)):
            cur = f(x0)
            if cur is not None:
                lam = x0.clone()
    if cur is None:
        lam = torch.zeros(m, dtype=torch.float64)
        cur = f(lam)
    if cur is None:
        raise ValueError("solve_dual: the dual is not finite at lam = 0 (check the problem data)")
    hist = [(lam.tolist(), cur.value)]
    Result = tuple[torch.Tensor, str, int, int, list[tuple[list[float], float]], str]

    def finish(it: int, status: str, msg: str) -> Result:
        assert cur is not None
        pinned = (lam >= upper) & (cur.grad > gtol)
        if status == "optimal" and bool(pinned.any()):
            status = "boundary"
            msg = (
                f"multiplier(s) {torch.nonzero(pinned).flatten().tolist()} pinned at the domain "
                "bound with the constraint still violated: the primal optimum is not attained"
            )
        return lam, status, it, f.n, hist, msg

    for it in range(1, max_iter + 1):
        g, h = cur.grad, cur.hess
        pg = _projected_gradient(lam, g, upper)
        if float(pg.abs().max()) <= gtol:
            return finish(it - 1, "optimal", "projected gradient vanishes")
        d = torch.zeros_like(lam)
        idx = torch.nonzero(pg != 0).flatten()
        hff = -h[idx][:, idx]
        ridge = 1e-12 * (1 + float(hff.diagonal().abs().max()))
        try:
            d[idx] = torch.linalg.solve(hff + ridge * torch.eye(len(idx), dtype=h.dtype), g[idx])
        except RuntimeError:
            d[idx] = g[idx]
        if float(d @ pg) <= 0:  # not an ascent direction: fall back to the gradient
            d = pg
        decrement = float(d @ pg)  # Newton decrement: predicted ascent is half of it
        noise = 1e-12 * (1.0 + abs(cur.value))
        if decrement <= noise:
            # The value no longer resolves progress: take full Newton steps while they shrink
            # the projected gradient (the constraint violations), then stop.
            trial = torch.minimum(torch.clamp(lam + d, min=0.0), upper)
            ev = f(trial) if (in_domain is None or in_domain(trial)) else None
            if ev is not None:
                pg_new = _projected_gradient(trial, ev.grad, upper)
                if float(pg_new.abs().max()) < 0.5 * float(pg.abs().max()):
                    lam, cur = trial, ev
                    hist.append((lam.tolist(), cur.value))
                    continue
            return finish(
                it - 1,
                "optimal",
                "Newton decrement at rounding level: the dual value cannot increase further",
            )
        pg_norm = float(pg.abs().max())
        # Fraction to the boundary: never jump more than halfway to an upper bound in one
        # step (the dual's curvature can explode there, e.g. FU near lam_max).
        ahead = (d > 0) & torch.isfinite(upper)
        t_max = float(((upper - lam)[ahead] / d[ahead]).min()) if bool(ahead.any()) else math.inf
        step = 1.0 if t_max > 1.0 else 0.5 * t_max
        accepted, domain_rejected = None, False
        first = step
        for _ in range(60):
            trial = torch.minimum(torch.clamp(lam + step * d, min=0.0), upper)
            if in_domain is None or in_domain(trial):
                ev = f(trial)
                if ev is not None:
                    sufficient = ev.value >= cur.value + 1e-4 * float(g @ (trial - lam))
                    # within rounding of the current value, accept if the gradient shrinks
                    flat = (
                        abs(ev.value - cur.value) <= noise
                        and float(_projected_gradient(trial, ev.grad, upper).abs().max()) < pg_norm
                    )
                    if sufficient or flat:
                        accepted = (trial, ev)
                        break
            elif step == first:
                domain_rejected = True
            step *= 0.5
        if accepted is None and domain_rejected:
            accepted = _tangent_step(f, lam, cur, upper, in_domain, gtol)
        if accepted is None:
            if domain_rejected:
                return finish(
                    it,
                    "boundary",
                    "no ascent step stays inside the dual domain: the maximum is on its boundary",
                )
            return finish(
                it,
                "max_iter",
                "line search failed without leaving the domain (numerical noise in the dual)",
            )
        moved = float((accepted[0] - lam).abs().max())
        lam, cur = accepted
        near = (upper - lam <= 1e-9 * (1 + upper)) & (cur.grad > 0)
        if bool(near.any()):  # close enough to a bound the dual pushes against: snap to it
            snapped = torch.where(near, upper, lam)
            ev_snap = f(snapped) if (in_domain is None or in_domain(snapped)) else None
            if ev_snap is not None:
                lam, cur = snapped, ev_snap
        hist.append((lam.tolist(), cur.value))
        if float(lam.sum()) > infeasible_at:
            return finish(it, "infeasible", "the dual is unbounded: levels infeasible")
        if moved <= xtol * (1 + float(lam.abs().max())):
            pg = _projected_gradient(lam, cur.grad, upper)
            if float(pg.abs().max()) <= max(gtol, 1e-7):
                return finish(it, "optimal", "step and projected gradient vanish")
            if domain_rejected:
                escape = _tangent_step(f, lam, cur, upper, in_domain, gtol)
                if escape is not None:
                    lam, cur = escape
                    hist.append((lam.tolist(), cur.value))
                    continue
                return finish(it, "boundary", "iterates stalled on the domain boundary")
            # tiny accepted steps against a gradient that does not vanish: the iterates may be
            # converging to the domain's edge (FU: p0 - sum lam_i q_i -> 0 everywhere), where
            # the dual's curvature explodes; it is the edge if a point 1e3 such steps further
            # along the ascent direction is outside the domain
            reach = 1e3 * max(moved, 1e-12) / float(pg.abs().max())
            probe = torch.minimum(torch.clamp(lam + reach * pg, min=0.0), upper)
            if in_domain is not None and not in_domain(probe):
                return finish(
                    it,
                    "boundary",
                    "iterates converge to the domain boundary with the gradient pushing out",
                )
            return finish(it, "max_iter", "iterates stalled inside the domain")
    return finish(max_iter, "max_iter", "iteration limit reached")
