r"""The ``dualdiff`` command line (also ``python -m dualdiff``).

Subcommands live in a registry, :data:`COMMANDS`: each :class:`Command` pairs a name and help
text with a function adding its arguments to an :class:`argparse.ArgumentParser` and a
function running it (returning the exit code). A new subcommand is one
:func:`register_command` call; the ``demo`` entry is a placeholder that later work replaces
(``register_command(..., replace=True)``).

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
:math:`\varepsilon` the case's tolerance. Exit codes: 0 every check passed, 1 a check failed,
2 usage error (argparse) or an unavailable subcommand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMMANDS",
    "Command",
    "build_parser",
    "environment",
    "format_table",
    "limit_threads",
    "main",
    "register_command",
]

#: Exit codes.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Command:
    """One ``dualdiff`` subcommand.

    Attributes
    ----------
    name
        Subcommand name (``dualdiff NAME ...``).
    help
        One-line description shown by ``dualdiff --help``.
    configure
        Adds the subcommand's arguments to its parser.
    run
        Runs it from the parsed arguments; returns the process exit code.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: Registry of subcommands, in the order they appear in ``--help``.
COMMANDS: dict[str, Command] = {}


def register_command(
    name: str,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    *,
    replace: bool = False,
) -> Command:
    """Add a subcommand to :data:`COMMANDS`.

    Parameters
    ----------
    name
        Subcommand name (``dualdiff NAME ...``).
    help
        One-line description shown by ``dualdiff --help``.
    configure
        Adds the subcommand's arguments to its parser.
    run
        Runs it from the parsed arguments; returns the process exit code.
    replace
        Allow replacing an existing entry (e.g. the ``demo`` placeholder).

    Returns
    -------
    Command
        The registered command.
    """
    if name in COMMANDS and not replace:
        raise ValueError(
            f"register_command: parameter 'name'={name!r} is already registered; pass "
            "replace=True to replace it"
        )
    cmd = Command(name=name, help=help, configure=configure, run=run)
    COMMANDS[name] = cmd
    return cmd


def _version_string() -> str:
    import torch

    from . import __version__

    return f"dualdiff {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="dualdiff",
        description=(
            "Constrained unlearning in diffusion models with closed-form targets and duality "
            "certificates (Khalafi, Ribeiro & Ding, ICML 2026)."
        ),
    )
    parser.add_argument("--version", action="version", version=_version_string())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dualdiff`` command line and return its exit code (never raises SystemExit).

    Parameters
    ----------
    argv
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 when a verification failed, 2 on a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return int(args._run(args))


# =====================================================================================
# verify
# =====================================================================================
def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _configure_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", metavar="PATH", type=Path, default=None,
        help="write every row, the environment and the timings to this JSON file",
    )
    p.add_argument(
        "--tolerance", metavar="T", type=_positive_float, default=None,
        help="tolerance (nats) for every check, overriding each case's own (default: per case)",
    )
    p.add_argument(
        "--threads", metavar="N", type=_positive_int, default=1,
        help=(
            "torch intra-op threads (default 1: the problems have at most ~1e5 points, where "
            "threading costs more than it saves and slows badly on a busy machine); BLAS pools "
            "too when threadpoolctl is installed"
        ),
    )


@dataclass
class _Row:
    """One verified case (the JSON row)."""

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


def _suite() -> tuple[list[Any], str]:
    """The verification cases and where they come from."""
    from .testing import standard_suite

    return list(standard_suite()), "dualdiff.testing.standard_suite"


def _expected_statuses(case: Any) -> list[str]:
    exp = getattr(case, "expected_status", None)
    if exp is None:
        return ["optimal"]
    return [exp] if isinstance(exp, str) else list(exp)


def _verify_case(case: Any, tolerance: float | None) -> _Row:
    """Solve one case's dual and check its certificate (see the module docstring)."""
    prob = case.problem
    tol = float(case.tolerance if tolerance is None else tolerance)
    expected = _expected_statuses(case)
    base: dict[str, Any] = {
        "name": str(case.name), "problem": str(prob.kind), "m": int(prob.m), "d": int(prob.dim),
        "expected_status": expected, "tolerance": tol,
    }
    t0 = time.perf_counter()
    try:
        sol = prob.solve_dual()
    except Exception as exc:  # a crash is a failed check, reported, not a traceback
        return _Row(
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
    return _Row(
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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Plain-text table with aligned columns (``right``: indices of right-aligned columns)."""
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _verify_table(rows: Sequence[_Row]) -> str:
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


def environment(threads: int) -> dict[str, Any]:
    """Versions, platform and thread count to record next to a measurement (JSON-ready)."""
    import cooper
    import numpy
    import scipy
    import torch

    from . import __version__

    return {
        "dualdiff": __version__,
        "torch": torch.__version__,
        "cooper": cooper.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Limit torch's intra-op threads (and BLAS/OpenMP pools, if threadpoolctl is installed).

    The previous torch setting is restored on exit. On small problems a busy machine's
    OpenMP/BLAS spin-waits can make every tensor operation ~100x slower than one thread.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: only torch's own pool is limited then
            yield
        else:
            with threadpool_limits(limits=n):
                yield
    finally:
        torch.set_num_threads(previous)


def _run_verify(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    with limit_threads(args.threads):
        t0 = time.perf_counter()
        cases, source = _suite()
        t_suite = time.perf_counter() - t0
        rows = [_verify_case(c, args.tolerance) for c in cases]
    total = time.perf_counter() - t_start
    passed = all(r.passed for r in rows)
    print(_verify_table(rows))
    for r in rows:
        for f in r.failures:
            print(f"FAIL {r.name}: {f}", file=sys.stderr)
    solve = sum(r.time_s for r in rows)
    n_ok = sum(r.passed for r in rows)
    print(
        f"\n{n_ok}/{len(rows)} cases passed; suite built in {t_suite:.2f} s, solves and "
        f"certificates {solve:.2f} s, total {total:.2f} s ({args.threads} torch thread(s))"
    )
    if args.json is not None:
        report = {
            "command": "verify",
            "passed": passed,
            "suite": source,
            "tolerance_override": args.tolerance,
            "environment": environment(args.threads),
            "timings": {"suite_build_s": t_suite, "solve_total_s": solve, "total_s": total},
            "cases": [r.__dict__ for r in rows],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        print(f"wrote {args.json}")
    return EXIT_OK if passed and rows else EXIT_FAILED


register_command(
    "verify",
    "solve the built-in RU/FU/LU suite (m = 1, 2; d = 1, 2) and check every certificate",
    _configure_verify,
    _run_verify,
)


# =====================================================================================
# demo: primal-dual fine-tuning of the shipped ring model vs the closed-form optimum
# =====================================================================================
def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="folder for report.json and the figures")
    p.add_argument(
        "--problems",
        nargs="+",
        choices=["RU", "FU", "LU"],
        default=["RU", "FU", "LU"],
        help="problems to run (default: all three)",
    )
    p.add_argument("--steps", type=_positive_int, default=None, help="primal steps per run")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--dual-update",
        choices=["every", "settled"],
        default=None,
        help="dual-update rule of the trainer (default 'every'; 'settled' wants --dual-step 1)",
    )
    p.add_argument(
        "--dual-step",
        type=_positive_float,
        default=None,
        help="dual step size in units of 1/|g''(lam*)| (default 0.5)",
    )
    p.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_demo(args: argparse.Namespace) -> int:
    from .experiments.ring import TOLERANCES, run_demo

    with limit_threads(args.threads):
        report = run_demo(
            args.output,
            problems=tuple(args.problems),
            seed=args.seed,
            steps=args.steps,
            progress=not args.no_progress,
            overrides={
                k: v
                for k, v in (("dual_update", args.dual_update), ("dual_step", args.dual_step))
                if v is not None
            },
        )
    header = [
        "problem", "level", "lam*", "lam trained", "C trained ± se", "f trained ± se",
        "P* = D*", "ESS", "time[s]", "check",
    ]
    rows = []
    for r in report["runs"]:
        rows.append([
            r["problem"],
            f"{r['bounds'][0]:.4g}",
            f"{r['multipliers_closed_form'][0]:.4g}",
            f"{r['multipliers_trained'][0]:.4g}",
            f"{r['constraint_values_trained'][0]:.4g} ± {r['constraint_stderr_trained'][0]:.2g}",
            f"{r['objective_trained']:.4g} ± {r['objective_stderr_trained']:.2g}",
            f"{r['dual_optimum']:.4g}",
            f"{r['population_ess']:.3f}",
            f"{r['wall_time_s']:.1f}",
            "ok" if r["passed"] else "MISSED",
        ])
    print(format_table(header, rows, right=set(range(1, len(header) - 1))))
    tol = TOLERANCES
    print(
        f"targets: multipliers within {tol['multipliers']:.0%} of the closed form, constraint "
        f"values within {tol['constraints']:.0%} of their levels, objective within "
        f"{tol['objective']:.0%} of the dual optimum"
    )
    print(f"report: {args.output}/report.json; total {report['wall_time_s']:.1f} s")
    return EXIT_OK if report["passed"] else EXIT_FAILED


register_command(
    "demo",
    "fine-tune the shipped ring diffusion model for RU/FU/LU by primal-dual training and "
    "compare with the closed-form optimum",
    _configure_demo,
    _run_demo,
)


# =====================================================================================
# digits: class removal and data unlearning of the shipped digits DDPM
# =====================================================================================
def _output_folder(text: str) -> Path:
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"--output must be a folder, {text!r} is a file")
    return p


def _digit(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a digit 0..9, got {text!r}") from None
    if not 0 <= v <= 9:
        raise argparse.ArgumentTypeError(f"expected a digit 0..9, got {text!r}")
    return v


def _configure_digits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, type=_output_folder,
                   help="folder for report.json and the figures")
    p.add_argument("--quick", action="store_true",
                   help="the quick budget (the default; kept for the documented command)")
    p.add_argument("--full", action="store_true", help="a larger budget (not timed)")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny budget for tests (seconds; the numbers mean nothing)")
    p.add_argument("--methods", nargs="+", choices=["RU", "LU", "FU", "ESD", "SISS", "NegGrad"],
                   default=None, help="methods to run (default: all)")
    p.add_argument("--forget-class", type=_digit, default=None,
                   help="digit removed by RU/LU/ESD (default 0)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="primal steps per method (same for all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_digits(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .experiments.digits import DigitsConfig, run_digits, smoke_config

    if args.quick + args.full + args.smoke > 1:
        print("dualdiff digits: --quick, --full and --smoke exclude each other", file=sys.stderr)
        return EXIT_USAGE
    cfg = (DigitsConfig.full() if args.full else smoke_config() if args.smoke
           else DigitsConfig.quick())
    changes: dict[str, Any] = {"seed": args.seed}
    if args.methods is not None:
        changes["methods"] = tuple(args.methods)
    if args.forget_class is not None:
        changes["forget_class"] = args.forget_class
    if args.steps is not None:
        changes["steps"] = args.steps
    cfg = replace(cfg, **changes)
    with limit_threads(args.threads):
        report = run_digits(
            args.output, cfg, progress=None if not args.no_progress else False
        )
    pre = report["pretrained"]
    header = ["method", "forget acc", "retained acc", "FD", "NLL forget/retain/held",
              "deviation", "lam", "time[s]"]
    rows = [["pretrained", f"{pre['forget_accuracy']:.3f}", f"{pre['retained_accuracy']:.3f}",
             f"{pre['fd_retained']:.3g}" if pre["fd_retained"] is not None else "-",
             f"{pre['forget_nll']:.1f}/{pre['retain_nll']:.1f}/{pre['heldout_nll']:.1f}",
             "0", "-", "-"]]
    for r in report["methods"]:
        anchor = r["setting"].get("anchor")
        rows.append([
            r["method"] + (f" ({anchor})" if anchor else ""),
            f"{r['forget_accuracy']:.3f}", f"{r['retained_accuracy']:.3f}",
            f"{r['fd_retained']:.3g}" if r["fd_retained"] is not None else "-",
            f"{r['forget_nll']:.1f}/{r['retain_nll']:.1f}/{r['heldout_nll']:.1f}",
            f"{r['deviation']:.3g}" if r["deviation"] is not None else "-",
            ",".join(f"{v:.3g}" for v in r["multipliers"]) or "-",
            f"{r['wall_s']:.1f}",
        ])
    print(format_table(header, rows, right=set(range(1, len(header)))))
    for name, t in report["targets"].items():
        print(f"target {name}: {'met' if t['passed'] else 'MISSED'} ({t['rule']})")
    print(f"report: {args.output}/report.json; total {report['wall_s']:.1f} s")
    return EXIT_OK


register_command(
    "digits",
    "unlearn a digit class (RU, LU, ESD) and 30 training images (FU, SISS, NegGrad) from the "
    "shipped digits DDPM; writes report.json and figures",
    _configure_digits,
    _run_digits,
)
