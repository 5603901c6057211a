"""``dualdiff digits``: usage errors, configuration checks, a smoke run, and the --quick run.

The smoke run uses a tiny budget (2 steps, a few samples): it checks the pipeline, the report's
schema and the invariants that hold at any budget (strict JSON, multipliers inside their dual
domains, zero deviation of the pretrained model from itself, forget accuracy equal to the
forgotten class's proportion), not the unlearning quality, which only the --quick run measures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from dualdiff.cli import main
from dualdiff.experiments.digits import DigitsConfig, run_digits

KEYS = {
    "method", "forget_accuracy", "retained_accuracy", "fd_retained", "forget_nll",
    "retain_nll", "heldout_nll", "deviation", "multipliers", "setting", "steps", "wall_s",
}


def _strict(path: Path) -> dict:
    def reject(token: str) -> float:
        raise AssertionError(f"non-finite JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["digits", "--output", str(f)]) == 2
    assert "--output must be a folder" in capsys.readouterr().err
    assert main(["digits", "--output", str(tmp_path), "--forget-class", "12"]) == 2
    assert "expected a digit 0..9, got '12'" in capsys.readouterr().err
    assert main(["digits", "--output", str(tmp_path), "--steps", "0"]) == 2
    assert main(["digits", "--output", str(tmp_path), "--methods", "XX"]) == 2
    assert main(["digits", "--output", str(tmp_path), "--quick", "--full"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"steps": 0}, r"DigitsConfig: parameter 'steps' must be an int >= 1, got 0"),
        ({"data_steps": 0}, r"DigitsConfig: parameter 'data_steps' must be an int >= 1"),
        ({"data_ema_decay": 1.0}, r"'data_ema_decay' must be None or a number in \[0, 1\)"),
        ({"data_ema_decay": "0.9"}, r"'data_ema_decay' must be None or a number"),
        ({"forget_class": 10}, r"DigitsConfig: parameter 'forget_class' must be an int in 0\.\.9"),
        ({"primal_lr": -1.0}, r"DigitsConfig: parameter 'primal_lr' must be a number > 0"),
        (
            {"pair_ru_delta": 0.0},
            r"DigitsConfig: parameter 'pair_ru_delta' must be a number > 0, got 0\.0",
        ),
        ({"esd_eta_conditional": 1.0}, r"'esd_eta_conditional' must be > 1"),
        ({"methods": ("RU", "XX")}, r"'methods' must be a non-empty subset"),
        ({"fu_level": 0.0}, r"'fu_level' must be > 0 or None"),
        ({"fu_dual_lr": -0.1}, r"'fu_dual_lr' must be > 0 or None, got -0\.1"),
        ({"fu_gap_fraction": 0.0}, r"'fu_gap_fraction' must be a number in \(0, 1\], got 0\.0"),
        ({"fu_gap_fraction": 1.5}, r"'fu_gap_fraction' must be a number in \(0, 1\]"),
        ({"fu_draws": 0}, r"parameter 'fu_draws' must be an int >= 1, got 0"),
        ({"esd_anchors": ("both",)}, r"'esd_anchors' must be a non-empty subset"),
        ({"siss_kappa": 1.0}, r"'siss_kappa' must be a number in the open interval \(0, 1\)"),
        ({"siss_kappa": 0.0}, r"'siss_kappa' must be a number in the open interval"),
        ({"siss_scaling_norm": -1.0}, r"'siss_scaling_norm' must be 'auto', a number > 0"),
        ({"siss_scaling_norm": "max"}, r"'siss_scaling_norm' must be 'auto'"),
        ({"siss_lam": 0.02}, r"'siss_lam' must be None or in \[0, lam_max"),
        ({"pair_forget_classes": (3, 3)}, r"'pair_forget_classes' must be two different"),
        ({"pair_forget_classes": (3, 10)}, r"'pair_forget_classes' must be two different"),
    ],
)
def test_config_validation(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsConfig(**change).validate()


def test_run_digits_refuses_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(NotADirectoryError, match=r"run_digits: parameter 'output' must be a"):
        run_digits(f)


def _check_report(out: Path, methods: list[str]) -> dict:
    rep = _strict(out / "report.json")
    assert rep["status"] == "complete"
    pre = rep["pretrained"]
    # the pretrained model against its frozen copy: the path-KL is exactly zero
    assert pre["deviation"] == 0.0
    c = rep["config"]["forget_class"]
    pair = rep["config"]["pair_forget_classes"]
    for row in [pre, *rep["methods"]]:
        if row.get("method") in ("RU2", "LU2"):  # both digits of the pair, and per class
            props = row["class_proportions"]
            assert row["forget_accuracy"] == pytest.approx(props[pair[0]] + props[pair[1]],
                                                           abs=1e-12)
            assert row["forget_accuracy_per_class"] == {str(k): props[k] for k in pair}
            assert set(row["retained_accuracy_per_class"]) == {
                str(k) for k in range(10) if k not in pair}
            continue
        assert row["forget_accuracy"] == pytest.approx(row["class_proportions"][c], abs=1e-12)
        assert 0.0 <= row["retained_accuracy"] <= 1.0
        assert math.isfinite(row["forget_nll"]) and math.isfinite(row["heldout_nll"])
    assert [r["method"] for r in rep["methods"] if r["method"] != "ESD"] == [
        m for m in methods if m != "ESD"
    ]
    for row in rep["methods"]:
        assert KEYS <= set(row), KEYS - set(row)
        data = row["method"] in ("FU", "SISS", "NegGrad")
        assert row["steps"] == rep["config"]["data_steps" if data else "steps"]
        if data:  # kept and evaluated as the weight average
            assert row["setting"]["evaluated"] == "weight average"
            assert row["setting"]["ema_decay"] == rep["config"]["data_ema_decay"]
        lam = row["multipliers"]
        if row["method"] in ("RU", "ESD"):
            assert len(lam) == 1 and 0.0 <= lam[0] < 1.0
        if row["method"] in ("FU", "SISS"):
            assert 0.0 <= lam[0] <= 30 / 1500 + 1e-12
        if row["method"] == "FU":  # every estimate the dual steps saw, in step order
            hist = row["constraint_history"]
            assert hist and hist[0]["step"] == 0
            assert [h["step"] for h in hist] == sorted({h["step"] for h in hist})
            assert all(0.0 <= h["multiplier"] <= row["setting"]["lam_max"] for h in hist)
            assert hist[-1]["multiplier"] == lam[0]  # lam moves only at estimates
            assert row["constraint_estimate"] == hist[-1]["value"]
            assert "fu_trace.png" in rep["figures"]
            # the memorising optimum, by the m = 1 formula of docs/mathematics.rst
            st, e = row["setting"], math.exp(-row["setting"]["level"])
            want = st["lam_max"] * (1 - e) / (1 - st["lam_max"] * e)
            assert st["memorised_lam_star"] == pytest.approx(want, rel=1e-12)
            assert 0.0 < st["memorised_least_kl"] < st["level"]
        if row["method"] == "LU":
            assert lam[0] >= 0.0
        if row["method"] in ("RU2", "LU2"):
            assert len(lam) == 2 and min(lam) >= 0.0
            if row["method"] == "RU2":
                assert sum(lam) < 1.0
            assert len(row["setting"]["warm_start"]) == 2
    for name in rep["figures"]:
        assert (out / name).stat().st_size > 0
    assert {"class_proportions.png", "tradeoff.png", "samples_pretrained.png"} <= set(
        rep["figures"]
    )
    return rep


@pytest.mark.slow  # ~40 s on one shared core (model load + three runs + evaluations)
def test_smoke_command(tmp_path: Path) -> None:
    out = tmp_path / "run"
    methods = ["RU", "FU", "NegGrad"]
    assert main(["digits", "--smoke", "--no-progress", "--methods", *methods,
                 "--output", str(out)]) == 0
    _check_report(out, methods)


@pytest.mark.slow  # ~60 s: every method at the smoke budget
def test_smoke_all_methods(tmp_path: Path) -> None:
    from dualdiff.experiments.digits import METHODS, smoke_config

    rep = run_digits(tmp_path, smoke_config(), progress=False)
    _check_report(tmp_path, list(METHODS))
    anchors = [r["setting"]["anchor"] for r in rep["methods"] if r["method"] == "ESD"]
    assert anchors == ["unconditional", "conditional"]


@pytest.mark.slow  # ~30 s: SISS and the two-class methods at the smoke budget
def test_smoke_siss_and_two_classes(tmp_path: Path) -> None:
    from dataclasses import replace

    from dualdiff.experiments.digits import smoke_config

    cfg = replace(smoke_config(), methods=("SISS", "RU2", "LU2"), pair_forget_classes=(3, 8))
    rep = run_digits(tmp_path, cfg, progress=False)
    _check_report(tmp_path, ["SISS", "RU2", "LU2"])
    siss = rep["methods"][0]["setting"]
    assert siss["kappa"] == 0.5 and "importance-sampled" in siss["estimator"]
    # scaling_norm "auto" = 10% of the data term's gradient norm measured at the start
    assert siss["scaling_norm"] == pytest.approx(0.1 * siss["data_grad_norm_at_pretrained"],
                                                 rel=1e-12)
    assert 0.0 < siss["lam"] < siss["lam_max"] == pytest.approx(30 / 1500)
    assert all(v > 0 for v in siss["effective_forget_weight_first_last"])
    pair = rep["pretrained"]["pair"]
    assert pair["classes"] == [3, 8] and pair["retained_classes"] == [0, 1, 2, 4, 5, 6, 7, 9]
    assert set(rep["targets"]) == {"RU2", "LU2"}
    for m in ("RU2", "LU2"):
        assert rep["levels"][m] == pytest.approx(
            [v + (cfg.pair_ru_delta if m == "RU2" else -cfg.lu_delta) for v in
             pair["ru_constraint_on_data" if m == "RU2" else "lu_constraint_on_data"]])


@pytest.mark.slow  # the --quick run itself: minutes
def test_quick_run(tmp_path: Path) -> None:
    assert main(["digits", "--quick", "--no-progress", "--output", str(tmp_path)]) == 0
    rep = _check_report(tmp_path, ["RU", "LU", "FU", "ESD", "SISS", "NegGrad", "RU2", "LU2"])
    assert rep["wall_s"] < 15 * 60


def test_report_json_is_strict_and_atomic(tmp_path: Path) -> None:
    from dualdiff.experiments.digits import _write_json

    path = tmp_path / "report.json"
    _write_json(path, {"a": 1.0})
    assert json.loads(path.read_text()) == {"a": 1.0}
    # a non-finite value is written as null and listed (strict JSON any parser reads)
    _write_json(path, {"a": float("nan"), "b": [1.0, float("inf")]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    out = json.loads(text)
    assert out["a"] is None and out["b"] == [1.0, None]
    assert set(out["non_finite"]) == {"a", "b/1"}
    # the write is atomic: no temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_target_rules() -> None:
    from dualdiff.experiments.digits import _targets

    pre = {"forget_accuracy": 0.2, "retained_accuracy": 0.9, "forget_nll": 10.0,
           "heldout_nll": 20.0}

    def row(method: str, **kw: float) -> dict:
        base = {"forget_accuracy": 0.1, "retained_accuracy": 0.82, "forget_nll": 12.0,
                "heldout_nll": 20.1}
        return {"method": method, **base, **kw}

    t = _targets(pre, [row("RU"), row("LU", forget_accuracy=0.1001),
                       row("FU"), row("NegGrad")], fu_level=2.0)
    assert t["RU"]["passed"] is True            # 0.1 <= 0.5 * 0.2 and 0.82 >= 0.9 * 0.9
    assert t["LU"]["passed"] is False           # not halved
    assert t["FU"]["passed"] is True            # rise 2.0 = level, held-out 0.1 < 0.2
    assert "NegGrad" not in t
    t = _targets(pre, [row("RU", retained_accuracy=0.80), row("FU", heldout_nll=20.25)], 2.0)
    assert t["RU"]["passed"] is False           # 0.80 < 0.81 = 0.9 * 0.9
    assert t["FU"]["passed"] is False           # held-out moved 0.25, not < 0.2
    t = _targets(pre, [row("FU", forget_nll=12.3)], 2.0)
    assert t["FU"]["passed"] is False           # rise 2.3 misses 2.0 by 15%

    def paired(forget: float, heldout: float) -> dict:
        return {"forget": {"mean": forget, "stderr": 0.3}, "retain": {"mean": 0.05,
                "stderr": 0.1}, "heldout": {"mean": heldout, "stderr": 0.2}}

    # paired changes (common random numbers) take precedence over the evaluation's NLLs
    t = _targets(pre, [row("FU", forget_nll=30.0, nll_change=paired(1.9, -0.15))], 2.0)
    assert t["FU"]["passed"] is True            # |1.9 - 2| <= 0.2 and 0.15 < 0.19
    assert t["FU"]["forget_nll_rise"] == 1.9 and t["FU"]["heldout_nll_change"] == 0.15
    assert t["FU"]["forget_nll_rise_stderr"] == 0.3 and t["FU"]["retain_nll_change"] == 0.05
    t = _targets(pre, [row("FU", nll_change=paired(1.9, 0.2))], 2.0)
    assert t["FU"]["passed"] is False           # held-out 0.2 is not < 0.19


def test_fu_problem_trains_on_the_whole_training_set() -> None:
    """p0's samples are X (forget images included): at lam_max the target is X without A."""
    from dualdiff.experiments.digits import DigitsSetup, _fu_problem, smoke_config

    setup = DigitsSetup(smoke_config())
    prob = _fu_problem(setup, 1.0)
    assert prob.lam_max.tolist() == pytest.approx([30 / 1500])
    draws = prob.pretrained_sampler()(6000, torch.Generator().manual_seed(0))
    flat_a = setup.forget_images.flatten(1).to(draws.dtype)
    hits = (draws.flatten(1)[:, None, :] == flat_a[None]).all(-1).any(-1)
    # 6000 draws from 1500 images hit the 30 forget images ~120 times (0 with the retain set)
    assert 60 < int(hits.sum()) < 200

def test_pair_target_rule_is_per_class() -> None:
    from dualdiff.experiments.digits import _targets

    def row(per: dict, ra: float) -> dict:
        return {"method": "RU2", "forget_accuracy": sum(per.values()),
                "forget_accuracy_per_class": per, "retained_accuracy": ra,
                "pretrained_forget_accuracy_per_class": {"0": 0.1, "1": 0.12},
                "pretrained_retained_accuracy": 0.9}

    pre = {"forget_accuracy": 0.1, "retained_accuracy": 0.9}
    assert _targets(pre, [row({"0": 0.05, "1": 0.06}, 0.81)], 1.0)["RU2"]["passed"] is True
    # the sum is halved (0.11 <= 0.11) but class 1 is not (0.07 > 0.06)
    assert _targets(pre, [row({"0": 0.04, "1": 0.07}, 0.85)], 1.0)["RU2"]["passed"] is False
    assert _targets(pre, [row({"0": 0.0, "1": 0.0}, 0.80)], 1.0)["RU2"]["passed"] is False
