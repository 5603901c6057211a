"""CLI misuse gives a usage error (exit 2) before any work, never a traceback (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dualdiff import cli
from dualdiff.cli import main


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "plain_file"
    f.write_text("x")
    return f


def test_verify_json_under_a_file_is_a_usage_error_before_the_suite(a_file, monkeypatch, capsys):
    def suite_must_not_run():
        raise AssertionError("the suite ran before the path was checked")

    monkeypatch.setattr(cli, "_suite", suite_must_not_run)
    assert main(["verify", "--json", str(a_file / "report.json")]) == 2
    err = capsys.readouterr().err
    assert "dualdiff verify: error: --json" in err and "is a file, not a folder" in err
    assert main(["verify", "--json", str(a_file.parent)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_demo_output_that_is_a_file_is_a_usage_error(a_file, monkeypatch, capsys):
    import dualdiff.experiments.ring as ring

    monkeypatch.setattr(ring, "run_demo", lambda *a, **k: pytest.fail("demo started"))
    assert main(["demo", "--output", str(a_file)]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["demo", "--output", str(a_file / "below")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", "1.5", "x"])
def test_demo_seed_must_be_a_non_negative_integer(seed, capsys):
    assert main(["demo", "--output", "unused", "--seed", seed]) == 2
    assert "--seed: expected an integer >= 0" in capsys.readouterr().err


def test_demo_repeated_problems_run_once(tmp_path, monkeypatch, capsys):
    import dualdiff.experiments.ring as ring

    seen = {}

    def fake(output, **kw):
        seen.update(kw)
        return {"runs": [], "passed": True, "wall_time_s": 0.0, "verdict": ""}

    monkeypatch.setattr(ring, "run_demo", fake)
    assert main(["demo", "--output", str(tmp_path), "--problems", "RU", "RU", "FU"]) == 0
    assert seen["problems"] == ("RU", "FU")
    assert "repeated" in capsys.readouterr().err


def test_usage_errors_in_a_subprocess_print_no_traceback(a_file):
    for args in (["verify", "--json", str(a_file / "r.json")],
                 ["demo", "--output", str(a_file)],
                 ["demo", "--output", "x", "--seed", "-1"]):
        proc = subprocess.run([sys.executable, "-m", "dualdiff", *args], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "ModuleNotFoundError" not in proc.stderr


def test_limit_threads_does_not_chain_errors_to_a_missing_threadpoolctl():
    with pytest.raises(RuntimeError) as info, cli.limit_threads(1):
        raise RuntimeError("inside")
    assert info.value.__context__ is None


def test_verify_json_is_strict_and_atomic(tmp_path, monkeypatch):
    class Case:
        name, tolerance, expected_status = "broken", 1e-6, "optimal"

        class problem:  # a minimal stand-in whose dual solve fails
            kind, m, dim = "RU", 1, 1

            @staticmethod
            def solve_dual():
                raise RuntimeError("no solution")

    monkeypatch.setattr(cli, "_suite", lambda: ([Case()], "test"))
    out = tmp_path / "v.json"
    assert main(["verify", "--json", str(out)]) == 1

    def refuse(name):
        raise ValueError(name)

    data = json.loads(out.read_text(), parse_constant=refuse)
    assert data["cases"][0]["primal"] is None
    assert data["non_finite"]["cases/0/primal"].startswith("nan")
