"""The trainer's weight average (``ema_decay``): the recursion, where estimates are made,
checkpoints, and refusals.

The reference for the average is the EMA recursion written out by hand on the parameters
recorded after every step (not the library's update).
"""

from __future__ import annotations

import pytest
import torch

from dualdiff import GaussianMixture, KLConstrainedProblem
from dualdiff.engine import (
    EngineConfigurationError,
    PrimalDualTrainer,
    TrainableGaussianMixture,
    UnknownOptionError,
    WeightAverage,
)

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q = P0.component(1)


def _problem(level=1.5):
    return KLConstrainedProblem(P0, [Q], bounds=[level], direction="forward")


def _trainer(**kw):
    base = {"batch_size": 32, "primal_lr": 0.05, "dual_lr": 0.3, "seed": 3, "ess_warning": 0.0}
    base.update(kw)
    return PrimalDualTrainer(_problem(), TrainableGaussianMixture.from_mixture(P0), **base)


def _flat(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["simultaneous", "alternating", "extragradient"])
def test_the_average_follows_the_ema_recursion_of_the_iterates(optimizer):
    beta = 0.8
    tr = _trainer(ema_decay=beta, optimizer=optimizer)
    ref = _flat(tr.module)
    assert all(torch.equal(v, _flat(tr.averaged_model)[k]) for k, v in ref.items())
    for _ in range(7):
        tr.step()
        now = _flat(tr.module)
        ref = {k: beta * ref[k] + (1 - beta) * now[k] for k in ref}
    avg = _flat(tr.averaged_model)
    for k in ref:
        torch.testing.assert_close(avg[k], ref[k], rtol=1e-12, atol=1e-12)
    assert tr.average.updates == 7
    # the average differs from the iterate (the test could fail) and never gets gradients
    assert any(not torch.equal(avg[k], now[k]) for k in ref)
    assert all(not p.requires_grad for p in tr.averaged_model.parameters())


def test_decay_zero_is_the_last_iterate():
    tr = _trainer(ema_decay=0.0)
    tr.fit(4, progress=False)
    avg, now = _flat(tr.averaged_model), _flat(tr.module)
    assert all(torch.equal(avg[k], now[k]) for k in now)


def test_estimates_are_made_on_the_average_unless_asked_otherwise():
    seen = []

    def estimator(model, generator=None):
        seen.append(model)
        return torch.tensor([0.0], dtype=torch.float64)

    tr = _trainer(ema_decay=0.9, estimator=estimator)
    tr.fit(2, progress=False)
    assert tr.estimate_on == "average"
    assert seen and all(m is tr.averaged_model for m in seen)

    seen.clear()
    tr = _trainer(ema_decay=0.9, estimator=estimator, estimate_on="model")
    tr.fit(2, progress=False)
    assert seen and all(m is tr.model for m in seen)


def test_a_skipped_step_does_not_move_the_average():
    tr = _trainer(ema_decay=0.5, max_skipped_steps=None)
    tr.fit(2, progress=False)
    before = _flat(tr.averaged_model)
    with torch.no_grad():
        tr.module.means.data[0, 0] = float("nan")  # the next gradient is not finite
    with pytest.warns(RuntimeWarning, match="skipped"):
        rec = tr.step()
    assert rec.skipped is not None
    after = _flat(tr.averaged_model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tr.average.updates == 2


def test_checkpoint_resumes_the_average_bit_for_bit(tmp_path):
    full = _trainer(ema_decay=0.9)
    full.fit(6, progress=False)

    first = _trainer(ema_decay=0.9)
    first.fit(3, progress=False)
    first.save_checkpoint(tmp_path / "ck.pt")
    resumed = _trainer(ema_decay=0.9)
    resumed.load_checkpoint(tmp_path / "ck.pt")
    assert resumed.average.updates == 3
    resumed.fit(3, progress=False)
    a, b = _flat(full.averaged_model), _flat(resumed.averaged_model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full.multipliers, resumed.multipliers)
    assert full.history.to_dict() == resumed.history.to_dict()


def test_checkpoints_with_and_without_an_average_do_not_mix(tmp_path):
    plain = _trainer()
    plain.fit(2, progress=False)
    plain.save_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(EngineConfigurationError, match="ema_decay"):
        _trainer(ema_decay=0.9).load_checkpoint(tmp_path / "plain.pt")
    avg = _trainer(ema_decay=0.9)
    avg.fit(2, progress=False)
    avg.save_checkpoint(tmp_path / "avg.pt")
    with pytest.raises(EngineConfigurationError, match="ema_decay"):
        _trainer().load_checkpoint(tmp_path / "avg.pt")
    with pytest.raises(EngineConfigurationError, match="ema_decay"):
        _trainer(ema_decay=0.8).load_checkpoint(tmp_path / "avg.pt")


def test_a_checkpoint_with_a_non_finite_average_is_refused():
    from dualdiff import CheckpointError

    tr = _trainer(ema_decay=0.9)
    tr.fit(2, progress=False)
    state = tr.state_dict()
    state["average"]["model"]["means"][0, 0] = float("nan")
    fresh = _trainer(ema_decay=0.9)
    with pytest.raises(CheckpointError, match="weight-average weights"):
        fresh.load_state_dict(state)
    assert fresh.average.updates == 0


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan"), "0.9", True])
def test_bad_decays_are_refused_by_name(decay):
    with pytest.raises(ValueError, match="'ema_decay'"):
        _trainer(ema_decay=decay)


def test_estimate_on_is_checked():
    with pytest.raises(UnknownOptionError, match="estimate_on='ema'"):
        _trainer(ema_decay=0.9, estimate_on="ema")
    with pytest.raises(EngineConfigurationError, match="ema_decay"):
        _trainer(estimate_on="average")
    assert _trainer().averaged_model is None


def test_a_direct_weight_average_names_itself_and_refuses_before_copying():
    model = TrainableGaussianMixture.from_mixture(P0)
    params = list(model.parameters())
    with pytest.raises(ValueError, match=r"^WeightAverage: parameter 'ema_decay'"):
        WeightAverage(model, params, 1.5)
    with pytest.raises(TypeError, match=r"^WeightAverage: parameter 'model' must be a torch"):
        WeightAverage(object(), params, 0.9)  # refused before the copy, not a KeyError after
    with pytest.raises(ValueError, match=r"^PrimalDualTrainer: parameter 'ema_decay'"):
        _trainer(ema_decay=1.5)  # through the trainer the message names the trainer
