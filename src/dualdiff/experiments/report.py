"""Reports of experiment runs: atomic, strict, self-describing, and one verdict.

A report folder is owned by one run at a time:

1. :func:`begin_report` writes ``report.json`` with ``"status": "incomplete"`` (and the
   arguments, seed and versions) *before* any work, and removes the outputs listed in the
   previous report's ``"outputs"`` manifest (plus files matching the experiment's own naming
   patterns). An interrupted run therefore leaves a report that says it is incomplete, never
   new figures next to an old report, and a complete run leaves no stale figure of a problem
   it did not run.
2. Figures are written with :func:`save_figure` (temporary file in the same folder, ``fsync``,
   rename) and recorded in the manifest.
3. :func:`finish_report` writes the final report atomically (``"status": "complete"``) as
   strict JSON: non-finite floats become ``null`` and are listed, with their value, under
   ``"non_finite"``.

:func:`verdict` is the single pass/fail rule that both the console and ``report.json`` print:
each check has its value, its tolerance and the rule that applied.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write, dump_strict_json

__all__ = [
    "REPORT_NAME",
    "begin_report",
    "environment",
    "finish_report",
    "results_location",
    "save_figure",
    "save_open_figures",
    "tolerance_statement",
    "verdict",
]

#: File name of the report inside the output folder.
REPORT_NAME = "report.json"


def environment(threads: int | None = None) -> dict[str, Any]:
    """Versions, platform and thread count to record next to a measurement (JSON-ready)."""
    import cooper
    import numpy
    import scipy
    import torch

    from .. import __version__

    return {
        "dualdiff": __version__,
        "torch": torch.__version__,
        "cooper": cooper.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if threads is None else threads,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _previous_outputs(folder: Path) -> list[str]:
    path = folder / REPORT_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    outputs = data.get("outputs", []) if isinstance(data, dict) else []
    return [o for o in outputs if isinstance(o, str)]


def _inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` if it stays inside ``folder`` (names from a file are not trusted)."""
    p = (folder / name).resolve()
    return p if p.parent == folder.resolve() else None


def begin_report(
    folder: str | os.PathLike[str],
    *,
    experiment: str,
    arguments: dict[str, Any],
    seed: int,
    owned_patterns: Sequence[str] = (),
) -> dict[str, Any]:
    """Claim ``folder`` for a new run; returns the report being built.

    Parameters
    ----------
    folder
        Output folder (created if missing).
    experiment
        Name of the experiment (e.g. ``"dualdiff demo"``).
    arguments
        The run's arguments, recorded verbatim (JSON-ready values).
    seed
        The run's seed.
    owned_patterns
        Glob patterns of files this experiment writes; existing matches are removed as stale
        together with the previous report's manifest.

    Returns
    -------
    dict
        ``{"experiment", "status": "incomplete", "arguments", "seed", "environment",
        "outputs": [], "removed_stale_outputs": [...]}``, already written to
        ``folder/report.json``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stale = set(_previous_outputs(out))
    for pattern in owned_patterns:
        stale.update(p.name for p in out.glob(pattern) if p.is_file())
    removed = []
    for name in sorted(stale):
        p = _inside(out, name)
        if p is not None and p.is_file() and p.name != REPORT_NAME:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(name)
    report: dict[str, Any] = {
        "experiment": experiment,
        "status": "incomplete",
        "status_note": "written when the run started; replaced when it completes",
        "arguments": arguments,
        "seed": seed,
        "environment": environment(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "outputs": [],
        "removed_stale_outputs": removed,
    }
    dump_strict_json(report, out / REPORT_NAME, indent=1)
    return report


def save_figure(fig: Any, path: str | os.PathLike[str], report: dict[str, Any] | None = None,
                **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (format from the suffix); record it in ``report``."""
    p = Path(path)
    fmt = p.suffix.lstrip(".") or "png"
    atomic_write(p, lambda fh: fig.savefig(fh, format=fmt, **savefig_kwargs))
    if report is not None and p.name not in report["outputs"]:
        report["outputs"].append(p.name)
    return p


def finish_report(folder: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write the completed ``report`` to ``folder/report.json`` (atomic, strict JSON)."""
    report["status"] = "complete"
    report.pop("status_note", None)
    report["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(folder) / REPORT_NAME
    dump_strict_json(report, path, indent=1)
    return path


def _check(name: str, value: float, tolerance: float, rule: str, ok: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "tolerance": tolerance, "rule": rule, "ok": ok}


def verdict(
    relative_errors: dict[str, Any],
    tolerances: dict[str, float],
    certificate: dict[str, Any] | None = None,
    *,
    sigmas: float = 3.0,
) -> dict[str, Any]:
    r"""The pass/fail verdict of one run, with every check, its tolerance and its rule.

    Parameters
    ----------
    relative_errors
        ``{"multipliers": [...], "constraints": [...], "objective": float}``: relative errors
        of the trained multipliers (vs the closed form), constraint values (vs their levels)
        and objective (vs the optimum :math:`P^\star = D^\star`).
    tolerances
        ``{"multipliers", "constraints", "objective"}`` relative tolerances.
    certificate
        :meth:`~dualdiff.Certificate.to_dict` of the trained model's estimated certificate;
        adds two statistical checks: every slack :math:`s_i \ge -k\,\mathrm{se}_i`
        (infeasibility not shown at ``k = sigmas`` standard errors; the certificate's own
        ``feasible`` is ``True`` only when every :math:`s_i \ge k\,\mathrm{se}_i` and
        ``None``, unknown, in between) and weak duality
        :math:`f - g(\lambda) \ge -k\,\mathrm{se}`.
    sigmas
        ``k`` above (3 standard errors, the certificate's threshold).

    Returns
    -------
    dict
        ``{"passed": bool, "label": "ok" | "MISSED", "failed": [names], "checks": [...]}``.
    """
    checks = []
    for key, rule in (
        ("multipliers", "max relative error of the trained multipliers vs the closed form"),
        ("constraints", "max relative error of the trained constraint values vs their levels"),
        ("objective", "relative error of the trained objective vs P* = D*"),
    ):
        raw = relative_errors[key]
        value = max(raw) if isinstance(raw, (list, tuple)) else float(raw)
        tol = float(tolerances[key])
        checks.append(_check(key, value, tol, rule, math.isfinite(value) and value <= tol))
    if certificate is not None:
        slack = list(certificate.get("slack", []))
        errs = list(certificate.get("constraint_errors", [0.0] * len(slack)))
        z = [s / e if e > 0 else (math.inf if s >= 0 else -math.inf)
             for s, e in zip(slack, errs, strict=True)]
        worst = min(z, default=math.inf)
        checks.append(_check(
            "feasibility", worst, -sigmas,
            f"min over constraints of slack / standard error >= -{sigmas:g} (feasibility not "
            f"rejected at {sigmas:g} standard errors; the certificate's 'feasible' is True only "
            f"from +{sigmas:g})",
            worst >= -sigmas,
        ))
        gap, gap_err = float(certificate["gap"]), float(certificate.get("gap_error", 0.0))
        zg = gap / gap_err if gap_err > 0 else (math.inf if gap >= 0 else -math.inf)
        checks.append(_check(
            "weak_duality", zg, -sigmas,
            f"(f - g(lam)) / standard error >= -{sigmas:g}: a feasible model's objective is not "
            "below the dual value",
            zg >= -sigmas,
        ))
    failed = [c["name"] for c in checks if not c["ok"]]
    return {"passed": not failed, "label": "ok" if not failed else "MISSED", "failed": failed,
            "checks": checks}


def tolerance_statement(tolerances: dict[str, float], sigmas: float = 3.0) -> str:
    """One sentence stating the tolerances :func:`verdict` applies (console and report)."""
    return (
        f"verdict 'ok' needs: multipliers within {tolerances['multipliers']:.0%} of the closed "
        f"form, constraint values within {tolerances['constraints']:.0%} of their levels, "
        f"objective within {tolerances['objective']:.0%} of P* = D*, every estimated slack "
        f">= -{sigmas:g} standard errors and the estimated duality gap >= -{sigmas:g} standard "
        "errors"
    )


def outputs_of(report: dict[str, Any]) -> Iterable[str]:
    """Names of the files the run wrote (its manifest)."""
    return tuple(report.get("outputs", ()))


def save_open_figures(name: str, folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """Save every open matplotlib figure as ``folder/{name}_{k}.png`` (atomic writes).

    For scripts run headless (``MPLBACKEND=Agg``, CI, ssh), where ``plt.show()`` displays
    nothing and the figures would be lost. ``folder`` defaults to ``$DUALDIFF_FIGURES`` or
    ``./figures``. The figures stay open (sphinx-gallery still collects them).

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib.pyplot as plt

    out = Path(folder or os.environ.get("DUALDIFF_FIGURES", "figures"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in plt.get_fignums():
        written.append(save_figure(plt.figure(k), out / f"{name}_{k}.png", dpi=110))
    return written


def results_location(
    given: str | os.PathLike[str] | None, default: Path, *, quick: bool, name: str
) -> Path:
    """Output of a benchmark: ``given``, else a temporary folder for ``--quick``, else ``default``.

    Smoke runs (``--quick``) must not overwrite the tracked reference results; they go to a new
    ``dualdiff-{name}-quick-*`` folder under the system's temporary directory. ``default`` may
    be a folder or a file path (a file keeps its name inside the temporary folder).
    """
    import tempfile

    if given is not None:
        return Path(given)
    if not quick:
        return default
    tmp = Path(tempfile.mkdtemp(prefix=f"dualdiff-{name}-quick-"))
    return tmp / default.name if default.suffix else tmp
