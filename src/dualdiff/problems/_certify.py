r"""What a certificate may claim: feasibility verdicts, accuracy checks, solver options.

* :func:`feasibility` — ``True`` only when every slack is non-negative beyond its error bar,
  or within a tiny tolerance *and* the error bar itself is tiny; ``False`` when some slack is
  negative beyond three error bars; ``None`` ("unknown") otherwise. A large error bar never
  yields ``True``.
* :func:`integration_issue` — why a dual solution must not be called ``optimal`` (integration
  error bars above the tolerance), or ``None``.
* :func:`independent_grid` — a second grid (other box, other spacing) on which a candidate's
  normalisation is checked: on the problem's own rule the closed-form target integrates to
  one by construction, whatever the truncation.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..duality import DualEval
from ..integration import GridQuadrature, IntegrationRule

__all__ = ["check_solver_options", "feasibility", "independent_grid", "integration_issue"]

#: Slack tolerance (nats, or likelihood units) within which a tiny-error constraint is met.
FEASIBILITY_ATOL = 1e-9
#: Relative size of an error bar below which a constraint value is trusted to the tolerance.
SMALL_ERROR_RTOL = 1e-6


def feasibility(slack: torch.Tensor, err: torch.Tensor, levels: torch.Tensor) -> bool | None:
    r"""Feasibility verdict from slacks ``(m,)`` and their error bars ``(m,)``.

    Returns
    -------
    bool or None
        ``True`` if every :math:`s_i \ge 3e_i`, or :math:`s_i \ge -10^{-9}(1+|b_i|)` with
        :math:`e_i \le 10^{-6}(1+|b_i|)`; ``False`` if some
        :math:`s_i < -3e_i - 10^{-9}(1+|b_i|)`;
        ``None`` otherwise (the error bars are too large to tell).
    """
    err = err.abs()
    if bool((~torch.isfinite(slack)).any()) or bool((~torch.isfinite(err)).any()):
        return None
    atol = FEASIBILITY_ATOL * (1.0 + levels.abs())
    violated = slack < -(3.0 * err + atol)
    if bool(violated.any()):
        return False
    small = err <= SMALL_ERROR_RTOL * (1.0 + levels.abs())
    met = (slack >= 3.0 * err) | ((slack >= -atol) & small)
    return True if bool(met.all()) else None


def integration_issue(
    ev: DualEval, levels: torch.Tensor, atol: float, integration: Any, status: str = "optimal"
) -> str | None:
    """Why a solution with these error bars must not keep its ``status``, or ``None``.

    ``"optimal"`` needs every error bar below ``atol`` (relative to ``1 + |value|``). A
    ``"boundary"`` verdict needs the dual value's bar below ``atol`` and each constraint
    value's bar below the larger of ``atol (1 + |level|)`` and ``|gradient|`` (the sign of the
    violation, which pins the multiplier, is then certain).
    """
    problems = []
    if not math.isfinite(ev.value_err) or ev.value_err > atol * (1.0 + abs(ev.value)):
        problems.append(
            f"the dual value's integration error bar {ev.value_err:.3g} exceeds "
            f"{atol:g} * (1 + |g| = {abs(ev.value):.6g})"
        )
    scale = atol * (1.0 + levels.abs())
    if status == "boundary":
        scale = torch.maximum(scale, ev.grad.abs())
    bad = ~(ev.grad_err <= scale)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten().tolist()
        problems.append(
            f"the constraint values' error bars {[f'{float(ev.grad_err[i]):.3g}' for i in idx]} "
            f"(constraints {idx}) exceed {atol:g} * (1 + |level|)"
        )
    if not problems:
        return None
    if getattr(integration, "method", "") == "monte_carlo":
        hint = "use MonteCarlo(n=...) with more samples, or a larger atol_integration"
    elif isinstance(integration, GridQuadrature) and (
        integration.points_per_dim is not None or integration.bounds is not None
    ):
        hint = "the grid is fixed by the user: widen 'bounds' or raise 'points_per_dim'"
    else:
        hint = (
            "the automatic grid reached its point cap or refinement limit: raise "
            "GridQuadrature(max_points=...) / resolution, or pass atol_integration"
        )
    return "; ".join(problems) + f" ({hint})"


def independent_grid(
    integration: Any, rule: IntegrationRule | None = None
) -> GridQuadrature | None:
    """An automatic grid with a 1.5x wider box and a finer spacing (``None`` for fixed grids)."""
    if not isinstance(integration, GridQuadrature):
        return None
    if integration.points_per_dim is not None or integration.bounds is not None:
        return None  # a user-fixed grid: the user chose the box
    return GridQuadrature(
        extent=1.5 * integration.extent,
        resolution=1.3 * integration.resolution,
        max_points=integration.max_points,
    )


def check_solver_options(
    gtol: Any, max_iter: Any, rtol_integration: Any, atol_integration: Any, owner: str
) -> None:
    """Typed errors for :meth:`solve_dual`'s options."""
    where = f"{owner}.solve_dual"
    for name, value in (("gtol", gtol), ("rtol_integration", rtol_integration)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{where}: parameter '{name}' must be a float, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}: parameter '{name}' must be finite and >= 0, got {value!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int):
        raise TypeError(f"{where}: parameter 'max_iter' must be an int >= 1, got {max_iter!r}")
    if max_iter < 1:
        raise ValueError(f"{where}: parameter 'max_iter' must be an int >= 1, got {max_iter!r}")
    if atol_integration is not None:
        if isinstance(atol_integration, bool) or not isinstance(atol_integration, int | float):
            raise TypeError(
                f"{where}: parameter 'atol_integration' must be a float or None, got "
                f"{atol_integration!r}"
            )
        if not (math.isfinite(atol_integration) and atol_integration > 0):
            raise ValueError(
                f"{where}: parameter 'atol_integration' must be finite and > 0, got "
                f"{atol_integration!r}"
            )
