"""Dual-update rules (``dualdiff.engine.dual_update``) and their use by the trainer.

Decisions are checked against the criterion worked out by hand on synthetic estimate
sequences; the trainer tests check that multipliers move exactly at the recorded dual steps,
that a skipped step leaves the rule untouched and that checkpoints resume bit-for-bit.
"""

from __future__ import annotations

import math

import pytest
import torch

from dualdiff import GaussianMixture, KLConstrainedProblem
from dualdiff.engine import (
    ConstraintEstimate,
    EngineConfigurationError,
    EveryEstimate,
    PrimalDualTrainer,
    SettledPrimal,
    TrainableGaussianMixture,
    UnknownOptionError,
)
from dualdiff.engine.dual_update import make_dual_update_rule

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q = P0.component(1)
LEVEL = 10.0


def _est(c: float, se: float = 0.0) -> ConstraintEstimate:
    """A one-constraint RU-style estimate with level LEVEL (violation LEVEL - c)."""
    t = torch.tensor([c], dtype=torch.float64)
    return ConstraintEstimate(
        constraints=t,
        constraint_stderr=torch.tensor([se], dtype=torch.float64),
        violations=LEVEL - t,
    )


def _feed(rule, values, se=0.0):
    return [(rule.accept(_est(v, se)), rule.last_reason) for v in values]


# ---------------------------------------------------------------- the rule on fixed sequences
def test_first_estimate_steps_then_two_changes_are_needed():
    rule = SettledPrimal(kappa=0.5, noise_z=0.0)
    # after the first (stepping) estimate only one change at the current multipliers exists
    out = _feed(rule, [0.0, 9.99])
    assert out == [(True, "first"), (False, "moving")]


def test_constant_speed_is_never_settled():
    # changes 1, 1, 1: ratio 1, projected drift infinite however small 1 is next to the gap 5+
    rule = SettledPrimal(kappa=0.99, noise_z=0.0, max_wait=100)
    out = _feed(rule, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert [s for s, _ in out] == [True, False, False, False, False]


@pytest.mark.parametrize(
    ("values", "kappa", "expected"),
    [
        # changes 2 then 1 (r = 1/2): projected drift 1 * (1/2)/(1/2) = 1; gap 10 - 3 = 7.
        ([0.0, 2.0, 3.0], 0.15, True),  # 1 <= 0.15 * 7 = 1.05
        ([0.0, 2.0, 3.0], 0.14, False),  # 1 > 0.98
        # changes 4 then 1 (r = 1/4): drift 1/3; gap 10 - 5 = 5: kappa 0.067 is the edge
        ([0.0, 4.0, 5.0], 0.07, True),
        ([0.0, 4.0, 5.0], 0.06, False),
        # overshooting past the level: changes 12, -3 (|r| = 1/4), drift 1; gap |10 - 9| = 1
        ([0.0, 12.0, 9.0], 0.99, False),  # 1 > 0.99
        # changes 12, -1 (|r| = 1/12): drift 1/11; gap |10 - 11| = 1
        ([0.0, 12.0, 11.0], 0.1, True),
        ([0.0, 12.0, 11.0], 0.09, False),
    ],
)
def test_aitken_projection_against_the_gap(values, kappa, expected):
    rule = SettledPrimal(kappa=kappa, noise_z=0.0, max_wait=100)
    out = _feed(rule, values)
    assert out[-1] == ((True, "settled") if expected else (False, "moving"))
    assert out[1] == (False, "moving")


def test_remaining_drift_matches_the_geometric_series():
    # C_k = 10 - 8 * 0.5**k converges to 10; at k = 3 the remaining drift is exactly 1
    rule = SettledPrimal(kappa=0.5, noise_z=0.0, max_wait=100)
    seq = [10 - 8 * 0.5**k for k in range(4)]
    _feed(rule, seq[:3])
    assert rule.remaining_drift(_est(seq[3])) == pytest.approx(10 - seq[3], rel=1e-12)


def test_changes_within_the_noise_step():
    rule = SettledPrimal(kappa=0.01, noise_z=2.0, max_wait=100)
    # se 1 on both: combined sqrt(2); change 2.8 <= 2 * 1.414 -> noise; change 2.9 -> moving
    assert _feed(rule, [0.0, 2.8], se=1.0) == [(True, "first"), (True, "noise")]
    rule = SettledPrimal(kappa=0.01, noise_z=2.0, max_wait=100)
    assert _feed(rule, [0.0, 2.9], se=1.0)[-1] == (False, "moving")


def test_max_wait_forces_a_dual_step():
    rule = SettledPrimal(kappa=0.1, noise_z=0.0, max_wait=3)
    out = _feed(rule, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert out == [
        (True, "first"),
        (False, "moving"),
        (False, "moving"),
        (True, "max_wait"),
        (False, "moving"),
        (False, "moving"),
        (True, "max_wait"),
    ]


def test_vector_constraints_use_norms():
    rule = SettledPrimal(kappa=0.25, noise_z=0.0)

    def est(c):
        t = torch.tensor(c, dtype=torch.float64)
        return ConstraintEstimate(t, torch.zeros(2, dtype=torch.float64), 10.0 - t)

    rule.accept(est([0.0, 0.0]))
    rule.accept(est([3.0, 4.0]))  # change 5
    # change (0.6, 0.8): norm 1, r = 0.2, drift 0.25; gap |(6.4, 5.2)| = 8.25 -> settled
    assert rule.accept(est([3.6, 4.8])) and rule.last_reason == "settled"


def test_every_estimate_always_steps():
    rule = EveryEstimate()
    assert all(s for s, _ in _feed(rule, [0.0, 5.0, 5.0, -3.0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kappa": 0.0}, "kappa"),
        ({"kappa": 1.0}, "kappa"),
        ({"kappa": "0.5"}, "kappa"),
        ({"noise_z": -1.0}, "noise_z"),
        ({"noise_z": math.inf}, "noise_z"),
        ({"max_wait": 0}, "max_wait"),
        ({"max_wait": 2.5}, "max_wait"),
        ({"max_wait": True}, "max_wait"),
    ],
)
def test_bad_settings_raise_typed_errors(kwargs, match):
    with pytest.raises(ValueError, match=rf"SettledPrimal: parameter '{match}'.*got"):
        SettledPrimal(**kwargs)


def test_names_resolve_and_unknown_names_raise():
    assert isinstance(make_dual_update_rule("every"), EveryEstimate)
    assert isinstance(make_dual_update_rule("settled"), SettledPrimal)
    rule = SettledPrimal(kappa=0.1)
    assert make_dual_update_rule(rule) is rule
    with pytest.raises(UnknownOptionError, match=r"dual_update='sometimes'.*'every', 'settled'"):
        make_dual_update_rule("sometimes")


def test_state_dict_round_trips_through_a_weights_only_load(tmp_path):
    rule = SettledPrimal(kappa=0.3)
    _feed(rule, [0.0, 2.0, 3.0, 3.2], se=0.01)
    torch.save(rule.state_dict(), tmp_path / "r.pt")
    other = SettledPrimal(kappa=0.3)
    other.load_state_dict(torch.load(tmp_path / "r.pt", weights_only=True))
    assert (other.waited, other.last_change, other.last_reason) == (
        rule.waited,
        rule.last_change,
        rule.last_reason,
    )
    nxt = _est(3.25, 0.01)
    assert other.decide(nxt) == rule.decide(nxt)
    assert other.remaining_drift(nxt) == rule.remaining_drift(nxt)


# ---------------------------------------------------------------- inside the trainer
def _trainer(rule, **kw):
    prob = KLConstrainedProblem(P0, [Q], bounds=[7.0])
    base = {"primal_lr": 0.02, "dual_lr": 0.05, "batch_size": 256, "estimate_every": 5,
            "seed": 3, "ess_warning": 0.0}
    return PrimalDualTrainer(prob, TrainableGaussianMixture.from_mixture(P0), dual_update=rule,
                             **{**base, **kw})


def test_multipliers_move_only_at_recorded_dual_steps():
    tr = _trainer("settled")
    tr.fit(150, progress=False)
    recs = tr.history.records
    estimated = [r.step for r in recs if r.estimate is not None]
    assert estimated == list(range(0, 150, 5))
    assert all(r.dual_step is None for r in recs if r.estimate is None)
    steps = tr.history.dual_steps
    assert steps[0] == 0 and recs[0].dual_reason == "first"
    assert 1 < len(steps) < len(estimated)  # it both stepped and declined
    prev = [0.0]
    for r in recs:
        moved = r.multipliers != prev
        # a declined estimate or a step without estimate never moves lambda
        if not r.dual_step:
            assert not moved, r.step
        prev = r.multipliers
    declined = [r for r in recs if r.dual_step is False]
    assert declined and all(r.dual_reason == "moving" for r in declined)


def test_every_rule_steps_on_every_estimate():
    tr = _trainer("every")
    tr.fit(30, progress=False)
    assert tr.history.dual_steps == list(range(0, 30, 5))
    assert {r.dual_reason for r in tr.history.records if r.estimate} == {"every"}


def test_frozen_rule_never_steps_and_keeps_the_initial_multipliers():
    tr = _trainer("frozen")  # lambda = 0: the model stays near p0, below the level
    tr.fit(30, progress=False)
    recs = tr.history.records
    assert tr.history.dual_steps == []
    assert [r.step for r in recs if r.estimate is not None] == list(range(0, 30, 5))
    assert {r.dual_reason for r in recs if r.estimate} == {"frozen"}
    # the estimates say the level is not met (so an active rule would have moved lambda)
    assert all(r.estimate["violations"][0] > 0 for r in recs if r.estimate)
    assert all(r.multipliers == [0.0] for r in recs)


def test_skipped_step_leaves_the_rule_untouched():
    tr = _trainer("settled", estimate_every=1)
    for _ in range(3):
        tr.step()
    count = {"n": 0}

    def hook(grad):
        count["n"] += 1
        return grad * float("nan")

    handle = tr.model.means.register_hook(hook)
    before = tr.dual_rule.snapshot()
    rec = tr.step()
    handle.remove()
    assert rec.skipped is not None and count["n"] == 1
    after = tr.dual_rule.snapshot()
    assert after[0] is before[0] and after[1:] == before[1:]
    assert rec.dual_step is None  # a skipped step records no dual decision


def test_checkpoint_resume_with_the_settled_rule_is_bitwise_identical(tmp_path):
    full = _trainer(SettledPrimal(kappa=0.3, max_wait=4))
    full.fit(60, progress=False)
    first = _trainer(SettledPrimal(kappa=0.3, max_wait=4))
    first.fit(33, progress=False)  # mid-wait: the rule holds a previous estimate and a change
    assert first.dual_rule.previous is not None
    first.save_checkpoint(tmp_path / "c.pt")
    resumed = _trainer(SettledPrimal(kappa=0.3, max_wait=4))
    resumed.load_checkpoint(tmp_path / "c.pt")
    resumed.fit(27, progress=False)
    assert torch.equal(full.multipliers, resumed.multipliers)
    assert full.history.to_dict() == resumed.history.to_dict()
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_of_another_rule_is_refused(tmp_path):
    tr = _trainer("settled")
    tr.fit(2, progress=False)
    tr.save_checkpoint(tmp_path / "c.pt")
    with pytest.raises(EngineConfigurationError, match="dual_update"):
        _trainer(SettledPrimal(kappa=0.5)).load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(EngineConfigurationError, match="dual_update"):
        _trainer("every").load_checkpoint(tmp_path / "c.pt")
