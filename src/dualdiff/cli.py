r"""The ``dualdiff`` command line (also ``python -m dualdiff``).

Subcommands live in a registry, :data:`COMMANDS`: each :class:`Command` pairs a name and help
text with a function adding its arguments to an :class:`argparse.ArgumentParser` and a
function running it (returning the exit code). A new subcommand is one
:func:`register_command` call; the ``demo`` entry is a placeholder that later work replaces
(``register_command(..., replace=True)``).

``dualdiff verify`` runs the certificate checks of :mod:`dualdiff.verify`.

Exit codes: 0 every check passed, 1 a check failed, 2 usage error (argparse, or a path/value
checked before any work starts: an unwritable ``--json`` file, an ``--output`` that is a file)
or an unavailable subcommand. Every report is written atomically as strict JSON
(:mod:`dualdiff._io`).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .experiments.runtime import format_table, limit_threads

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


def _nonnegative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
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


def environment(threads: int) -> dict[str, Any]:
    """Versions, platform and thread count to record next to a measurement (JSON-ready).

    See :func:`dualdiff.experiments.report.environment`.
    """
    from .experiments.report import environment as _environment

    return _environment(threads)


def _usage_error(command: str, message: str) -> int:
    """Print an argparse-style usage error for ``dualdiff COMMAND`` and return exit code 2."""
    print(f"dualdiff {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _run_verify(args: argparse.Namespace) -> int:
    from ._io import check_writable_file

    if args.json is not None:  # checked before the suite runs, not after
        try:
            check_writable_file(args.json, "verify", "--json")
        except ValueError as exc:
            return _usage_error("verify", str(exc).removeprefix("verify: "))
    t_start = time.perf_counter()
    from .verify import verification_suite, verify_case, verify_table

    with limit_threads(args.threads):
        t0 = time.perf_counter()
        cases, source = verification_suite()
        t_suite = time.perf_counter() - t0
        rows = [verify_case(c, args.tolerance) for c in cases]
    total = time.perf_counter() - t_start
    passed = all(r.passed for r in rows)
    print(verify_table(rows))
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
        from ._io import dump_strict_json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        dump_strict_json(report, args.json, indent=2)  # atomic; NaN -> null + reason
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
    p.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="random seed, an integer >= 0 (default 0)"
    )
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
        help="dual step size in units of 1/|g''| of the estimated dual (RU, LU; default 0.5)",
    )
    p.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_demo(args: argparse.Namespace) -> int:
    from ._io import check_writable_folder

    try:
        check_writable_folder(args.output, "demo", "--output")
    except ValueError as exc:
        return _usage_error("demo", str(exc).removeprefix("demo: "))
    problems = tuple(dict.fromkeys(args.problems))
    if len(problems) < len(args.problems):
        print(f"dualdiff demo: note: --problems repeated; running {' '.join(problems)} once each",
              file=sys.stderr)
    from .experiments.ring import run_demo

    with limit_threads(args.threads):
        report = run_demo(
            args.output,
            problems=problems,
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
        "P* = D*", "ESS", "time[s]", "verdict",
    ]
    rows = []
    for r in report["runs"]:
        v = r["verdict"]
        label = v["label"] + ("" if v["passed"] else f" ({', '.join(v['failed'])})")
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
            label,
        ])
    print(format_table(header, rows, right=set(range(1, len(header) - 1))))
    print(report.get("verdict", ""))
    print(f"report: {Path(args.output) / 'report.json'}; total {report['wall_time_s']:.1f} s")
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
    p.add_argument("--methods", nargs="+",
                   choices=["RU", "LU", "FU", "ESD", "SISS", "NegGrad", "RU2", "LU2"],
                   default=None,
                   help="methods to run (default: all; RU2/LU2 remove two digits at once)")
    p.add_argument("--forget-class", type=_digit, default=None,
                   help="digit removed by RU/LU/ESD (default 0)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="primal steps of each class-removal method, RU/LU/ESD/RU2/LU2 "
                        "(default 40)")
    p.add_argument("--data-steps", type=_positive_int, default=None,
                   help="primal steps of each data-unlearning method, FU/SISS/NegGrad "
                        "(default 640)")
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
    if args.data_steps is not None:
        changes["data_steps"] = args.data_steps
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
