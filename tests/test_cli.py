"""The ``dualdiff`` command line: ``verify`` end to end, argument errors, the command registry.

The end-to-end test runs ``python -m dualdiff verify --json`` in a subprocess and then checks
the reported numbers *independently*: for every 1-D case the closed-form target at the reported
multipliers is rebuilt with scipy densities on a fine numpy grid, and its objective, constraint
values and dual value (MATH.md §1 formulas) are compared with the JSON.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.special

import dualdiff
from dualdiff import cli, verify
from dualdiff.testing import gaussian_reference, mixture_log_pdf, standard_suite

# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def verify_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    out = tmp_path_factory.mktemp("cli") / "verify.json"
    proc = subprocess.run(
        [sys.executable, "-m", "dualdiff", "verify", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,  # generous: ~10 s on 2 idle cores, slower on a shared CI machine
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_verify_covers_every_kind_m_and_d(verify_report: tuple[Any, str]) -> None:
    report, _ = verify_report
    combos = {(c["problem"], c["m"], c["d"]) for c in report["cases"]}
    expected = {(k, m, d) for k in ("RU", "FU", "LU") for m in (1, 2) for d in (1, 2)}
    assert expected <= combos
    assert report["passed"] is True
    for c in report["cases"]:
        assert c["passed"], c
        assert abs(c["gap"]) <= c["tolerance"], c
        assert c["in_domain"] is True
        assert len(c["multipliers"]) == len(c["slack"]) == c["m"]
        assert c["status"] in c["expected_status"]
    env = report["environment"]
    assert env["dualdiff"] == dualdiff.__version__
    assert {"torch", "python", "torch_threads"} <= set(env)
    assert report["timings"]["total_s"] > 0


def test_verify_prints_aligned_table(verify_report: tuple[Any, str]) -> None:
    report, stdout = verify_report
    lines = stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("case"))
    table = lines[header : header + 2 + len(report["cases"])]
    # every column starts at the same offset on every row: the separator row's dashes
    sep = table[1]
    starts = [i for i, ch in enumerate(sep) if ch == "-" and (i == 0 or sep[i - 1] == " ")]
    for col in ("problem", "multipliers", "primal", "gap", "status", "check"):
        assert col in table[0]
    assert len(starts) == 12
    for row in table[2:]:
        for s in starts[1:]:
            assert row[s - 1] == " ", (row, s)
    assert "total" in stdout and "12/12 cases passed" in stdout


def _grid_1d(prob: Any) -> tuple[np.ndarray, float]:
    """Uniform grid covering every mixture of ``prob`` to 20 standard deviations.

    The mass outside is < e^-200; spacing = smallest std / 40 makes the plain-sum (trapezoid)
    error on these smooth Gaussian integrands ~exp(-2 pi^2 40^2): far below 1e-12.
    """
    mus = np.concatenate([p.means.numpy().ravel() for p in (prob.pretrained, *prob.unlearn)])
    sds = np.sqrt(
        np.concatenate([p.covariances.numpy().ravel() for p in (prob.pretrained, *prob.unlearn)])
    )
    lo, hi = float(np.min(mus - 20 * sds.max())), float(np.max(mus + 20 * sds.max()))
    h = float(sds.min()) / 40.0
    x = np.linspace(lo, hi, math.ceil((hi - lo) / h) + 1)
    return x, float(x[1] - x[0])


def _reference_1d(prob: Any, lam: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Objective, constraint values and dual value of the closed-form target, with scipy."""
    x, h = _grid_1d(prob)
    lp0 = mixture_log_pdf(prob.pretrained, x)
    lq = np.stack([mixture_log_pdf(q, x) for q in prob.unlearn])
    b = prob.bounds.numpy()
    lam_sum = float(lam.sum())
    if prob.kind in ("RU", "LU"):
        beta = 1.0 / (1.0 - lam_sum) if prob.kind == "RU" else 1.0
        log_u = beta * lp0 - beta * (lam @ lq) if prob.kind == "RU" else lp0 - lam @ lq
        log_z = float(scipy.special.logsumexp(log_u) + math.log(h))
        log_p = log_u - log_z
        p = np.exp(log_p)
        primal = float(np.sum(p * (log_p - lp0)) * h)
        if prob.kind == "RU":
            cons = np.sum(p[None] * (log_p[None] - lq), axis=1) * h
            dual = -(1.0 - lam_sum) * log_z + float(lam @ b)
        else:
            cons = np.sum(p[None] * lq, axis=1) * h
            dual = -log_z - float(lam @ b)
        return primal, cons, dual
    # FU: p = (p0 - sum lam_i q_i) / (1 - Lam)
    w = np.exp(lp0) - lam @ np.exp(lq)
    assert np.all(w >= -1e-300)
    with np.errstate(divide="ignore"):
        log_w = np.log(np.maximum(w, 0.0))
    log_p = log_w - math.log(1.0 - lam_sum)
    p0, q = np.exp(lp0), np.exp(lq)
    primal = float(np.sum(p0 * (lp0 - log_p)) * h)
    cons = np.sum(q * (lq - log_p[None]), axis=1) * h
    neg_h0 = float(np.sum(p0 * lp0) * h)
    neg_hq = np.sum(q * lq, axis=1) * h
    wlogw = float(np.sum(scipy.special.xlogy(w, np.maximum(w, 0.0))) * h)
    one_m = 1.0 - lam_sum
    dual = neg_h0 - float(lam @ neg_hq) - wlogw + one_m * math.log(one_m) + float(lam @ b)
    return primal, cons, dual


def test_verify_numbers_match_independent_quadrature(verify_report: tuple[Any, str]) -> None:
    """Rebuild each 1-D target from the reported multipliers; it must be optimal.

    Weak duality makes (feasible target, complementary slackness, primal == dual) a proof of
    optimality; all three are checked with densities from scipy, not the library.
    """
    report, _ = verify_report
    problems = {c.name: c.problem for c in standard_suite() if c.problem.dim == 1}
    rows = [c for c in report["cases"] if c["d"] == 1]
    assert {r["name"] for r in rows} == set(problems)
    for row in rows:
        prob = problems[row["name"]]
        lam = np.asarray(row["multipliers"])
        primal, cons, dual = _reference_1d(prob, lam)
        # 1e-8: the library's grid (~195 points) and ours (24001) both integrate smooth,
        # rapidly decaying integrands to ~1e-12; 1e-8 leaves room without hiding a wrong formula
        assert row["primal"] == pytest.approx(primal, abs=1e-8), row["name"]
        assert row["dual"] == pytest.approx(dual, abs=1e-8), row["name"]
        np.testing.assert_allclose(row["constraint_values"], cons, atol=1e-8, rtol=0)
        assert primal == pytest.approx(dual, abs=1e-8)  # strong duality, independently
        b = prob.bounds.numpy()
        slack = b - cons if prob.kind == "LU" else cons - b
        assert np.all(slack >= -1e-8), (row["name"], slack)
        assert np.all(np.abs(lam * slack) <= 1e-8), (row["name"], lam, slack)
        assert np.all(lam > 0) or np.any(slack > 1e-6)  # lam = 0 only for inactive ones


# ----------------------------------------------------------------------------- verify paths


@dataclass(frozen=True)
class _Case:
    name: str
    problem: Any
    tolerance: float
    expected_status: str | tuple[str, ...] = "optimal"


class _Exploding:
    kind, m, dim = "RU", 1, 1

    def solve_dual(self) -> None:
        raise ValueError("boom")


def test_verify_in_process_against_closed_form(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = gaussian_reference("RU")
    monkeypatch.setattr(
        verify, "verification_suite", lambda: ([_Case("gauss-RU", ref.problem, 1e-8)], "test")
    )
    out = tmp_path / "sub" / "v.json"
    assert cli.main(["verify", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["cases"][0]
    # Closed-form multiplier (Brent root of the hand-written gradient) and optimal value;
    # 1e-8: the solver's gtol is 1e-10 nats and the Hessian is O(1), grid error ~1e-12.
    assert row["multipliers"][0] == pytest.approx(ref.multiplier, abs=1e-8)
    assert row["primal"] == pytest.approx(ref.optimal_value, abs=1e-8)
    assert "1/1 cases passed" in capsys.readouterr().out


def test_verify_reports_failures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = gaussian_reference("LU")
    cases = [
        _Case("tight", ref.problem, 1e-300),  # any rounding in the gap exceeds this
        _Case("wrong-status", ref.problem, 1e-6, expected_status="boundary"),
        _Case("crash", _Exploding(), 1e-6),
    ]
    monkeypatch.setattr(verify, "verification_suite", lambda: (cases, "test"))
    out = tmp_path / "v.json"
    assert cli.main(["verify", "--json", str(out)]) == 1
    rows = {r["name"]: r for r in json.loads(out.read_text())["cases"]}
    err = capsys.readouterr().err
    assert not rows["wrong-status"]["passed"]
    assert "status 'optimal' not in ['boundary']" in err
    assert rows["crash"]["status"] == "error" and "ValueError: boom" in err
    # "tight" fails unless the gap is exactly 0.0 (then it passes honestly)
    assert rows["tight"]["passed"] == (abs(rows["tight"]["gap"]) <= 1e-300)


def test_tolerance_override_applies_to_every_case(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ref = gaussian_reference("RU")
    monkeypatch.setattr(
        verify, "verification_suite", lambda: ([_Case("c", ref.problem, 1e-300)], "test")
    )
    out = tmp_path / "v.json"
    assert cli.main(["verify", "--tolerance", "1e-6", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tolerance_override"] == 1e-6
    assert report["cases"][0]["tolerance"] == 1e-6


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["verify", "--tolerance", "-1"], "expected a positive finite number, got '-1'"),
        (["verify", "--tolerance", "abc"], "expected a positive number, got 'abc'"),
        (["verify", "--tolerance", "nan"], "expected a positive finite number, got 'nan'"),
        (["verify", "--threads", "0"], "expected a positive integer, got '0'"),
        (["verify", "--unknown"], "unrecognized arguments: --unknown"),
    ],
)
def test_argument_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: dualdiff" in err and "verify" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert f"dualdiff {dualdiff.__version__}" in capsys.readouterr().out


def test_python_dash_m_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dualdiff", "--version"], capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"dualdiff {dualdiff.__version__}")


def test_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"verify", "demo"} <= set(cli.COMMANDS)
    with pytest.raises(ValueError, match="'verify' is already registered"):
        cli.register_command("verify", "x", lambda p: None, lambda a: 0)
    saved = dict(cli.COMMANDS)
    try:
        cli.register_command(
            "hello", "say hello", lambda p: p.add_argument("--who", default="world"),
            lambda a: print(f"hello {a.who}") or 0,
        )
        assert cli.main(["hello", "--who", "lead"]) == 0
        assert "hello lead" in capsys.readouterr().out
    finally:
        cli.COMMANDS.clear()
        cli.COMMANDS.update(saved)


def test_format_table_aligns_columns() -> None:
    text = cli.format_table(["a", "bb"], [["xxx", "1"], ["y", "22"]], right={1})
    assert text.splitlines() == ["a    bb", "---  --", "xxx   1", "y    22"]
