"""benchmarks/digits_lu_ode.py: its level rule against a direct computation, and a smoke run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "digits_lu_ode.py"


def _load():
    spec = importlib.util.spec_from_file_location("digits_lu_ode", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # the script's dataclass looks its module up
    spec.loader.exec_module(mod)
    return mod


def test_tilt_level_meets_the_share_and_reports_the_tilted_mean():
    mod = _load()
    g = torch.Generator().manual_seed(0)
    is_c = torch.arange(200) < 20
    values = torch.randn(200, generator=g, dtype=torch.float64) * 3.0 + 5.0 * is_c
    out = mod.tilt_level(values, is_c, 0.25)
    # recompute the tilt by hand, in plain float64 arithmetic
    lam = out["lam"]
    w = [math.exp(-lam * float(v)) for v in values]
    z = sum(w)
    share = sum(wi for wi, c in zip(w, is_c.tolist(), strict=True) if c) / z
    mean = sum(wi * float(v) for wi, v in zip(w, values, strict=True)) / z
    ess = z * z / (len(w) * sum(wi * wi for wi in w))
    assert out["base_share"] == pytest.approx(0.1)
    assert share == pytest.approx(0.025, rel=1e-6)
    assert out["level"] == pytest.approx(mean, rel=1e-9)
    assert out["ess_fraction"] == pytest.approx(ess, rel=1e-9)
    assert out["level"] < float(values.mean())  # the tilt lowers E[l]


def test_tilt_level_refuses_when_the_share_cannot_be_lowered():
    mod = _load()
    is_c = torch.arange(10) < 5
    values = torch.cat([torch.zeros(5), torch.ones(5)]).double()  # class c has the LOWER l
    with pytest.raises(RuntimeError, match="lowers the class share"):
        mod.tilt_level(values, is_c, 0.25)
    with pytest.raises(ValueError, match="no image of the forgotten class"):
        mod.tilt_level(values, torch.zeros(10, dtype=torch.bool), 0.25)


@pytest.mark.slow
def test_smoke_run_writes_every_stage(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--threads", "1"],
                   check=True, env=env, timeout=900, capture_output=True)
    rep = json.loads((tmp_path / "digits_lu_ode_smoke.json").read_text())
    stages = rep["stages"]
    per = ["level", "warm_start", "train", "constraint", "evaluate"]
    assert list(stages) == (["ell_train", "pretrained_constraint"]
                            + [f"share_{s}/{k}" for s in ("0.25", "0.5") for k in per]
                            + ["pretrained_evaluate", "done"])
    assert stages["ell_train"]["n"] == 20
    steps = rep["config"]["steps"]
    assert [r["share"] for r in rep["runs"]] == [0.25, 0.5]
    for run in rep["runs"]:
        assert run["rule"]["share"] == pytest.approx(run["share"] * 0.1, rel=1e-6)
        assert run["warm_start"]["ode_calls"] == 1  # the training images' l, in one batch
        # the reweighted DSM's batches hit the cache: the only ODE calls while training are
        # the dual step's estimates on model samples (smoke: one per step, 4 samples each)
        assert run["train"]["ode_calls"] == steps
        assert run["train"]["ode_images"] == 4 * steps
        assert all(h["lam"] >= 0.0 for h in run["train"]["history"])
        assert set(run["targets"]) == {"forget_accuracy_halved", "retained_at_least_90pct",
                                       "constraint_met_within_2se"}
    assert 0.0 <= rep["pretrained"]["forget_accuracy"] <= 1.0
