r"""Certificate checks of ``dualdiff verify`` on the built-in suite.

``dualdiff verify`` solves the dual of every problem of
:func:`dualdiff.testing.standard_suite` (RU, FU and LU; ``m = 1, 2``; ``d = 1, 2``) and checks
each solution's certificate (Khalafi, Ribeiro & Ding, ICML 2026; see :ref:`certificates`):
with :math:`\lambda^\star` the dual maximiser and :math:`p_{\lambda^\star}` the closed-form
target,

.. math::
    |f(p_{\lambda^\star}) - g(\lambda^\star)| \le \varepsilon,\qquad
    |\lambda_i^\star\,s_i| \le \varepsilon,\qquad s_i \ge -\varepsilon,\qquad
    \Big|\int p_{\lambda^\star} - 1\Big| \le \varepsilon,\qquad
    \lambda^\star \in \operatorname{dom} g,

where :math:`s_i` is the slack of constraint ``i`` (non-negative when satisfied) and
:math:`\varepsilon` the case's tolerance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .experiments.runtime import format_table

__all__ = ["VerifyRow", "expected_statuses", "verification_suite", "verify_case", "verify_table"]


@dataclass
class VerifyRow:
    """One verified case: the certificate's numbers and the checks it failed (a JSON row)."""

    name: str
    problem: str
    m: int
    d: int
    method: str
    n_points: int
    multipliers: list[float]
    primal: float
    dual: float
    gap: float
    gap_error: float
    slack: list[float]
    constraint_values: list[float]
    complementary_slackness: list[float]
    normalisation: float
    in_domain: bool
    status: str
    expected_status: list[str]
    tolerance: float
    iterations: int
    n_evaluations: int
    time_s: float
    passed: bool
    failures: list[str]
    message: str


def verification_suite() -> tuple[list[Any], str]:
    """The verification cases and where they come from."""
    from .testing import standard_suite

    return list(standard_suite()), "dualdiff.testing.standard_suite"


def expected_statuses(case: Any) -> list[str]:
    """The statuses a suite case accepts (``case.expected_status``, default ``["optimal"]``)."""
    exp = getattr(case, "expected_status", None)
    if exp is None:
        return ["optimal"]
    return [exp] if isinstance(exp, str) else list(exp)


def verify_case(case: Any, tolerance: float | None) -> VerifyRow:
    """Solve one case's dual and check its certificate (see the module docstring)."""
    prob = case.problem
    tol = float(case.tolerance if tolerance is None else tolerance)
    expected = expected_statuses(case)
    base: dict[str, Any] = {
        "name": str(case.name), "problem": str(prob.kind), "m": int(prob.m), "d": int(prob.dim),
        "expected_status": expected, "tolerance": tol,
    }
    t0 = time.perf_counter()
    try:
        sol = prob.solve_dual()
    except Exception as exc:  # a crash is a failed check, reported, not a traceback
        return VerifyRow(
            **base, method="?", n_points=0, multipliers=[], primal=math.nan, dual=math.nan,
            gap=math.nan, gap_error=math.nan, slack=[], constraint_values=[],
            complementary_slackness=[], normalisation=math.nan, in_domain=False,
            status="error", iterations=0, n_evaluations=0, time_s=time.perf_counter() - t0,
            passed=False, failures=[f"solve_dual raised {type(exc).__name__}: {exc}"],
            message=str(exc),
        )
    elapsed = time.perf_counter() - t0
    cert = sol.certificate
    lam = sol.multipliers
    in_dom = bool(prob.in_domain(lam))
    slack = [float(s) for s in cert.slack]
    cs = [float(v) for v in cert.complementary_slackness]
    failures: list[str] = []
    if sol.status not in expected:
        failures.append(f"status {sol.status!r} not in {expected}")
    if not abs(cert.gap) <= tol:
        failures.append(f"|gap| = {abs(cert.gap):.3g} > {tol:.3g}")
    if not in_dom:
        failures.append("multipliers outside the dual domain")
    if sol.status == "optimal":
        # At an interior optimum the target is feasible and complementary slackness holds;
        # at a domain boundary (FU lam_max) neither is expected.
        if not max((abs(v) for v in cs), default=0.0) <= tol:
            failures.append(f"complementary slackness max|lam*slack| = {max(map(abs, cs)):.3g}")
        if not min(slack, default=0.0) >= -tol:
            failures.append(f"infeasible target: min slack = {min(slack):.3g}")
    if not abs(cert.normalisation - 1.0) <= tol:
        failures.append(f"target mass {cert.normalisation:.12g} != 1")
    return VerifyRow(
        **base,
        method=str(cert.method),
        n_points=int(prob.rule.n_points),
        multipliers=[float(v) for v in lam],
        primal=float(cert.primal_value),
        dual=float(cert.dual_value),
        gap=float(cert.gap),
        gap_error=float(cert.gap_error),
        slack=slack,
        constraint_values=[float(v) for v in cert.constraint_values],
        complementary_slackness=cs,
        normalisation=float(cert.normalisation),
        in_domain=in_dom,
        status=str(sol.status),
        iterations=int(sol.iterations),
        n_evaluations=int(sol.n_evaluations),
        time_s=elapsed,
        passed=not failures,
        failures=failures,
        message=str(sol.message),
    )


def _fmt_list(values: Sequence[float], spec: str) -> str:
    return "[" + ", ".join(format(v, spec) for v in values) + "]"


def verify_table(rows: Sequence[VerifyRow]) -> str:
    """The console table of ``dualdiff verify``, one line per case."""
    headers = [
        "case", "problem", "m", "d", "multipliers", "primal", "dual", "gap", "slack",
        "status", "time[s]", "check",
    ]
    cells = [
        [
            r.name, r.problem, str(r.m), str(r.d), _fmt_list(r.multipliers, ".6g"),
            format(r.primal, ".8g"), format(r.dual, ".8g"), format(r.gap, ".1e"),
            _fmt_list(r.slack, ".1e"), r.status, format(r.time_s, ".3f"),
            "ok" if r.passed else "FAIL",
        ]
        for r in rows
    ]
    return format_table(headers, cells, right={2, 3, 5, 6, 7, 10})
