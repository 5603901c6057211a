"""Reports that lose nothing and say one thing (issue 11, "CLI and reports")."""

from __future__ import annotations

import json
import math

import pytest

from dualdiff._io import dump_strict_json
from dualdiff.cli import main
from dualdiff.experiments import report as rep
from dualdiff.experiments import ring

TINY = dict(steps=4, estimate_every=2, estimate_samples=16, final_samples=32, figure_samples=64)


def _strict_load(text):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ strict JSON
def test_strict_json_writes_null_with_the_reason():
    text = dump_strict_json({"a": float("nan"), "b": [1.0, float("-inf")], "c": {"d": math.inf}})
    data = _strict_load(text)
    assert data["a"] is None and data["b"] == [1.0, None] and data["c"]["d"] is None
    assert data["non_finite"]["a"].startswith("nan")
    assert data["non_finite"]["b/1"].startswith("-inf")
    assert data["non_finite"]["c/d"].startswith("inf")


def test_verdict_states_each_check_and_fails_on_an_infeasible_certificate():
    tol = {"multipliers": 0.1, "constraints": 0.1, "objective": 0.25}
    rel = {"multipliers": [0.02], "constraints": [0.05], "objective": 0.1}
    cert = {"slack": [-0.45], "constraint_errors": [0.1], "feasible": False,
            "gap": -0.2, "gap_error": 0.1}
    v = rep.verdict(rel, tol, cert)
    assert v["passed"] is False and v["label"] == "MISSED"
    assert v["failed"] == ["feasibility"]  # 4.5 se below the level; gap only 2 se below
    by_name = {c["name"]: c for c in v["checks"]}
    assert by_name["feasibility"]["value"] == pytest.approx(-4.5)
    assert by_name["feasibility"]["tolerance"] == -3.0
    assert "standard error" in by_name["feasibility"]["rule"]
    ok = rep.verdict(rel, tol, {**cert, "slack": [0.01], "feasible": True})
    assert ok["passed"] is True and ok["label"] == "ok"
    # a slack within its error bars is "unknown" to the certificate (feasible None), which
    # is not a rejection: the verdict's rule (>= -3 se) decides, not bool(None)
    unknown = rep.verdict(rel, tol, {**cert, "slack": [-0.1], "feasible": None})
    assert unknown["passed"] is True, unknown["checks"]


# ------------------------------------------------------------------ the demo's report
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    (out / "RU_samples.png").write_bytes(b"stale figure of an earlier run")
    (out / "notes.txt").write_text("the user's own file")
    figures = []
    real = rep.save_figure

    def recording_save_figure(fig, path, report=None, **kw):
        figures.append((path.name, fig))
        return real(fig, path, report, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(ring, "save_figure", recording_save_figure)
    # the real demo through the CLI, with tiny sample sizes (~10 s)
    mp.setitem(ring.DEFAULTS, "FU", ring.DemoConfig("FU", delta=2.0, **TINY))
    code = main(["demo", "--output", str(out), "--problems", "FU", "FU", "--seed", "5",
                 "--no-progress"])
    mp.undo()
    return out, code, figures


def test_demo_report_is_strict_complete_and_self_describing(demo_run, capsys):
    out, code, _ = demo_run
    data = _strict_load((out / "report.json").read_text())
    assert data["status"] == "complete"
    assert [r["problem"] for r in data["runs"]] == ["FU"]  # --problems FU FU ran once
    assert data["arguments"]["problems"] == ["FU"] and data["seed"] == 5
    assert {"dualdiff", "torch", "cooper", "python"} <= set(data["environment"])
    # the estimated certificate has no normalisation: null, with the reason
    assert data["runs"][0]["certificate"]["normalisation"] is None
    assert data["non_finite"]["runs/0/certificate/normalisation"].startswith("nan")
    assert sorted(data["outputs"]) == ["FU_samples.png", "FU_trajectories.png"]
    assert code == (0 if data["passed"] else 1)


def test_demo_removes_stale_outputs_and_keeps_foreign_files(demo_run):
    out, _, _ = demo_run
    assert not (out / "RU_samples.png").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"
    data = json.loads((out / "report.json").read_text())
    assert "RU_samples.png" in data["removed_stale_outputs"]
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_console_verdict_is_the_report_verdict(tmp_path, monkeypatch, capsys):
    # a run of the real demo is in demo_run; here the console rendering of a saved report
    fake = {"runs": [], "passed": False, "wall_time_s": 0.0, "verdict": "VERDICT SENTENCE"}
    monkeypatch.setattr(ring, "run_demo", lambda output, **kw: fake)
    assert main(["demo", "--output", str(tmp_path), "--no-progress"]) == 1
    assert "VERDICT SENTENCE" in capsys.readouterr().out


def test_demo_console_table_prints_each_run_verdict(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(ring.DEFAULTS, "LU", ring.DemoConfig("LU", delta=32.0, **TINY))
    code = main(["demo", "--output", str(tmp_path), "--problems", "LU", "--no-progress"])
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "report.json").read_text())
    run = data["runs"][0]
    row = next(line for line in out.splitlines() if line.startswith("LU"))
    assert run["verdict"]["label"] in row
    assert ("MISSED" in row) == (not run["passed"])
    for name in run["verdict"]["failed"]:
        assert name in row
    assert data["verdict"] in out  # the tolerance sentence, verbatim
    assert code == (0 if data["passed"] else 1)


def test_demo_figures_have_labels_colour_bars_and_legends(demo_run):
    _, _, figures = demo_run
    names = [n for n, _ in figures]
    assert names == ["FU_samples.png", "FU_trajectories.png"]
    samples, traj = figures[0][1], figures[1][1]
    panels = [a for a in samples.axes if a.get_label() != "<colorbar>"]
    bars = [a for a in samples.axes if a.get_label() == "<colorbar>"]
    assert len(panels) == 2 and len(bars) == 2
    for ax in panels:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None
    assert all(b.get_ylabel() for b in bars)  # colour bars say what they show
    axes = traj.axes
    assert len(axes) == 3
    assert "nats" in axes[1].get_ylabel() and "nats" in axes[2].get_ylabel()
    assert any("P*" in t.get_text() for t in axes[2].get_legend().get_texts())


def test_an_interrupted_demo_leaves_a_report_marked_incomplete(tmp_path, monkeypatch):
    (tmp_path / "LU_samples.png").write_bytes(b"old")
    def dying(cfg, output, **kw):  # the process is killed during the first problem
        (output / f"{cfg.kind}_samples.png").write_bytes(b"half-made figure")
        raise KeyboardInterrupt

    monkeypatch.setattr(ring, "run_problem", dying)
    with pytest.raises(KeyboardInterrupt):
        ring.run_demo(tmp_path, problems=("FU", "RU"), progress=False, overrides=TINY)
    data = _strict_load((tmp_path / "report.json").read_text())
    assert data["status"] == "incomplete"
    assert "runs" not in data
    assert not (tmp_path / "LU_samples.png").exists()  # no stale figure next to the report


@pytest.mark.parametrize("bad", [{"seed": -1}, {"seed": "3"}, {"steps": 0},
                                 {"problems": ("XU",)}])
def test_run_demo_refuses_bad_arguments_before_writing(tmp_path, bad):
    with pytest.raises(ValueError, match=r"run_demo: .*(seed|steps|problems)"):
        ring.run_demo(tmp_path / "out", progress=False, **bad)
    assert not (tmp_path / "out").exists()


def test_quick_benchmark_runs_write_outside_the_tracked_results(tmp_path):
    tracked = tmp_path / "benchmarks" / "results" / "bench_x.json"
    quick = rep.results_location(None, tracked, quick=True, name="bench_x")
    assert quick.name == "bench_x.json" and tracked.parent not in quick.parents
    assert "dualdiff-bench_x-quick-" in str(quick.parent)
    assert rep.results_location(None, tracked, quick=False, name="bench_x") == tracked
    assert rep.results_location(tmp_path / "mine.json", tracked, quick=True,
                                name="bench_x") == tmp_path / "mine.json"
    folder = rep.results_location(None, tracked.parent, quick=True, name="bench_y")
    assert folder.is_dir() and tracked.parent not in folder.parents


def test_benchmark_quick_flags_use_the_temporary_location():
    from pathlib import Path

    root = Path(__file__).parents[2] / "benchmarks"
    for name in ("bench_engine", "bench_dual", "bench_one_run", "bench_composed_vs_exact"):
        text = (root / f"{name}.py").read_text()
        assert "results_location(" in text and "quick=args.quick" in text, name
