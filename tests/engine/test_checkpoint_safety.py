"""Checkpoints that fail loudly and lose nothing (issue 11, "Checkpoints").

Each test states the failure seen before: unreadable files raising raw ``EOFError`` /
``RuntimeError``, in-place writes destroying the previous checkpoint, half-applied loads,
checkpoints of another problem or other settings loading silently, NaN values accepted.
"""

from __future__ import annotations

import copy
import os
import struct
import zipfile

import pytest
import torch

from dualdiff import (
    CheckpointError,
    GaussianMixture,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
)
from dualdiff.engine import EngineConfigurationError, PrimalDualTrainer, TrainableGaussianMixture

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q = P0.component(1)


def _problem(kind="FU", level=None, q=Q):
    if kind == "RU":
        return KLConstrainedProblem(P0, [q], bounds=[7.0 if level is None else level])
    if kind == "FU":
        return KLConstrainedProblem(
            P0, [q], bounds=[1.5 if level is None else level], direction="forward"
        )
    return LikelihoodConstrainedProblem(P0, [q], bounds=[-9.0 if level is None else level])


def _trainer(kind="FU", problem=None, **kw):
    base = {"batch_size": 32, "primal_lr": 0.05, "dual_lr": 0.3, "seed": 3, "ess_warning": 0.0}
    base.update(kw)
    model = TrainableGaussianMixture.from_mixture(P0)
    return PrimalDualTrainer(problem or _problem(kind), model, **base)


def _params(tr):
    return {k: v.clone() for k, v in tr.module.state_dict().items()}


@pytest.fixture
def saved(tmp_path):
    tr = _trainer()
    tr.fit(3, progress=False)
    path = tmp_path / "good.pt"
    tr.save_checkpoint(path)
    return tr, path


# ------------------------------------------------------------------ unreadable files
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "flipped"])
def test_damaged_files_raise_a_checkpoint_error_naming_the_file(saved, tmp_path, damage):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / f"{damage}.pt"
    if damage == "empty":
        bad.write_bytes(b"")
        match = "is empty"
    elif damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
        match = "corrupt or truncated"
    elif damage == "garbage":
        bad.write_bytes(b"\xff\xfe not a checkpoint at all" * 10)
        match = "corrupt or truncated"
    else:  # one flipped bit inside the first tensor's storage (torch checks no CRC)
        info = next(i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename)
        head = data[info.header_offset : info.header_offset + 30]
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        pos = info.header_offset + 30 + name_len + extra_len
        bad.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])
        match = "does not match the checksum"
    tr = _trainer()
    before = _params(tr)
    with pytest.raises(CheckpointError, match=match) as info:
        tr.load_checkpoint(bad)
    assert str(bad) in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in _params(tr).items())


def test_missing_file_and_folder_raise_checkpoint_errors(tmp_path):
    tr = _trainer()
    with pytest.raises(CheckpointError, match="does not exist"):
        tr.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        tr.load_checkpoint(tmp_path)


# ------------------------------------------------------------------ atomic writes
def test_an_interrupted_save_keeps_the_previous_checkpoint(saved, monkeypatch):
    tr, path = saved
    good = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the file, then the process dies
        raise KeyboardInterrupt

    tr.fit(2, progress=False)
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        tr.save_checkpoint(path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good
    leftovers = [p for p in os.listdir(path.parent) if p.endswith(".tmp")]
    assert leftovers == []
    fresh = _trainer()
    fresh.load_checkpoint(path)
    assert fresh.step_count == 3


def test_history_to_json_is_atomic(saved, tmp_path, monkeypatch):
    tr, _ = saved
    out = tmp_path / "history.json"
    tr.history.to_json(out)
    good = out.read_text()

    def dying_replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", dying_replace)
    tr.fit(1, progress=False)
    with pytest.raises(OSError, match="disk vanished"):
        tr.history.to_json(out)
    assert out.read_text() == good
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


# ------------------------------------------------------------------ all or nothing
def test_a_load_that_fails_at_the_optimiser_changes_nothing(saved):
    src, _ = saved
    state = src.state_dict()
    state["optimizer"]["primal_optimizer_states"][0]["state"] = {0: {"garbage": 1}}
    state["optimizer"]["primal_optimizer_states"][0]["param_groups"] = []
    tr = _trainer()
    tr.fit(1, progress=False)
    before, lam, steps = _params(tr), tr.multipliers, tr.step_count
    with pytest.raises(CheckpointError, match="previous state was kept"):
        tr.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in _params(tr).items())
    assert torch.equal(lam, tr.multipliers)
    assert tr.step_count == steps
    tr.fit(1, progress=False)  # still a working trainer


# ------------------------------------------------------------------ fingerprints
def test_a_checkpoint_of_another_problem_of_the_same_kind_is_refused(saved):
    _, path = saved
    other_level = _trainer(problem=_problem("FU", level=0.8))
    with pytest.raises(EngineConfigurationError, match=r"another problem.*\n.*bounds"):
        other_level.load_checkpoint(path)
    q_elsewhere = GaussianMixture([1.0], [[2.5]], 1.0)
    other_q = _trainer(problem=_problem("FU", q=q_elsewhere))
    with pytest.raises(EngineConfigurationError, match=r"unlearn\[0\]\.means"):
        other_q.load_checkpoint(path)


def test_other_step_sizes_are_refused_or_applied_truthfully(saved):
    _, path = saved
    tr = _trainer(dual_lr=0.05, primal_lr=0.01)
    with pytest.raises(EngineConfigurationError, match=r"dual_lr: checkpoint 0\.3, this trainer"):
        tr.load_checkpoint(path)
    tr.load_checkpoint(path, override_settings=True)
    assert tr.dual_lr == 0.05 and tr.primal_lr == 0.01
    copt = tr.constrained_optimizer
    assert [g["lr"] for o in copt.dual_optimizers for g in o.param_groups] == [0.05]
    assert [g["lr"] for o in copt.primal_optimizers for g in o.param_groups] == [0.01]
    tr.fit(2, progress=False)


def test_another_primal_optimiser_is_refused_even_with_override(saved):
    _, path = saved
    tr = _trainer(primal_optimizer="sgd")
    for override in (False, True):
        with pytest.raises(EngineConfigurationError, match="another primal optimiser"):
            tr.load_checkpoint(path, override_settings=override)
    tr.fit(1, progress=False)  # no KeyError: 'betas' later either


def test_nan_weights_or_multipliers_are_refused(saved):
    src, _ = saved
    state = src.state_dict()
    key = next(iter(state["model"]))
    state["model"][key] = state["model"][key].clone().fill_(float("nan"))
    tr = _trainer()
    with pytest.raises(CheckpointError, match="model weights hold NaN"):
        tr.load_state_dict(state)
    state = src.state_dict()
    state["cmp"]["multipliers"]["unlearning"]["weight"] = torch.tensor([float("nan")],
                                                                       dtype=torch.float64)
    with pytest.raises(CheckpointError, match="multipliers hold NaN"):
        tr.load_state_dict(state)


def test_multipliers_outside_the_dual_domain_are_refused():
    src = _trainer("RU")
    src.fit(1, progress=False)
    state = src.state_dict()
    state["cmp"]["multipliers"]["unlearning"]["weight"] = torch.tensor([1.5], dtype=torch.float64)
    tr = _trainer("RU")
    with pytest.raises(CheckpointError, match=r"outside this trainer's dual domain"):
        tr.load_state_dict(state)


# ------------------------------------------------------------------ state_dict API
def test_state_dict_round_trip_resumes_bit_for_bit(tmp_path):
    full = _trainer("RU", optimizer="extragradient")
    full.fit(6, progress=False)

    first = _trainer("RU", optimizer="extragradient")
    first.fit(3, progress=False)
    state = first.state_dict()
    snapshot = copy.deepcopy(state)
    first.fit(1, progress=False)  # the dictionary is a copy: later steps do not change it
    assert torch.equal(state["model"]["means"], snapshot["model"]["means"])
    torch.save(state, tmp_path / "mine.pt")  # the user's own tooling
    loaded = torch.load(tmp_path / "mine.pt", weights_only=True)

    resumed = _trainer("RU", optimizer="extragradient")
    resumed.load_state_dict(loaded)
    resumed.fit(3, progress=False)
    for k, v in full.module.state_dict().items():
        assert torch.equal(v, resumed.module.state_dict()[k]), k
    assert torch.equal(full.multipliers, resumed.multipliers)
    assert full.history.to_dict() == resumed.history.to_dict()


def test_fingerprints_describe_networks_by_weights_unless_they_are_being_trained():
    from dualdiff.engine.checkpoint import describe
    from dualdiff.models import Conditioned, MLPScoreNet, ModuleScoreModel

    torch.manual_seed(0)
    net = ModuleScoreModel(MLPScoreNet(2))
    other = ModuleScoreModel(MLPScoreNet(2))
    a, b = describe(Conditioned(net, 3)), describe(Conditioned(other, 3))
    assert a["cond"] == 3 and a["module"] == "MLPScoreNet"
    assert a["state_sha256"] != b["state_sha256"]  # other weights: they differ
    assert describe(Conditioned(net, 3)) == a  # deterministic
    assert describe(Conditioned(net, 2)) != a  # another condition
    trained = frozenset(id(p) for p in net.parameters())
    shared = describe(Conditioned(net, 3), trained)
    assert "state_sha256" not in shared and "shapes" in shared
