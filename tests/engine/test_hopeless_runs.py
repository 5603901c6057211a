"""Runs that cannot make progress stop loudly (issue 11, "Runs that cannot make progress")."""

from __future__ import annotations

import warnings

import pytest
import torch

from dualdiff import GaussianMixture, KLConstrainedProblem, NonFiniteError
from dualdiff.engine import (
    NonFiniteStepWarning,
    PrimalDualTrainer,
    TrainableGaussianMixture,
)

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q = P0.component(1)


def _fu():
    return KLConstrainedProblem(P0, [Q], bounds=[1.5], direction="forward")


def _ru():
    return KLConstrainedProblem(P0, [Q], bounds=[7.0])


def _trainer(problem=None, **kw):
    base = {"batch_size": 32, "primal_lr": 0.05, "dual_lr": 0.3, "ess_warning": 0.0}
    base.update(kw)
    return PrimalDualTrainer(problem or _fu(), TrainableGaussianMixture.from_mixture(P0), **base)


def _nan_data(n, generator):
    return torch.full((n, 1), float("nan"), dtype=torch.float64)


def test_every_step_non_finite_stops_with_a_non_finite_error_and_warns_once():
    tr = _trainer(pretrained_data=_nan_data, max_skipped_steps=7)
    with pytest.warns(NonFiniteStepWarning, match="step 0 was skipped: non-finite batch") as rec:
        with pytest.raises(NonFiniteError, match=r"7 steps in a row.*max_skipped_steps=7"):
            tr.fit(200, progress=False)
    assert len([w for w in rec if issubclass(w.category, NonFiniteStepWarning)]) == 1
    assert tr.step_count == 7  # stopped at the limit, not after 200 silent skips
    assert len(tr.history.skipped) == 7
    assert "non-finite batch" in str(tr.history.warnings[0])


def test_default_limit_stops_a_run_whose_parameter_was_corrupted_to_nan():
    tr = _trainer()
    tr.fit(2, progress=False)
    with torch.no_grad():
        tr.model.means[0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteStepWarning)
        with pytest.raises(NonFiniteError, match=r"10 steps in a row.*Reasons: non-finite"):
            tr.fit(200, progress=False)
    assert tr.step_count == 12


def test_transient_skips_do_not_stop_the_run():
    calls = {"n": 0}

    def sometimes_nan(n, generator):
        calls["n"] += 1
        x = P0.sample(n, generator=generator)
        if calls["n"] % 3 == 0:  # every third batch is bad: never 3 in a row
            x[0, 0] = float("nan")
        return x

    tr = _trainer(pretrained_data=sometimes_nan, max_skipped_steps=2)
    with pytest.warns(NonFiniteStepWarning):
        tr.fit(12, progress=False)
    assert tr.step_count == 12 and len(tr.history.skipped) == 4


def test_no_limit_runs_through_with_one_warning():
    tr = _trainer(pretrained_data=_nan_data, max_skipped_steps=None)
    with pytest.warns(NonFiniteStepWarning, match="does not stop") as rec:
        tr.fit(15, progress=False)
    assert len([w for w in rec if issubclass(w.category, NonFiniteStepWarning)]) == 1
    assert len(tr.history.skipped) == 15


def test_failing_estimates_are_counted_across_good_primal_steps():
    def nan_estimator(model, generator):
        return torch.tensor([float("nan")])

    tr = _trainer(estimator=nan_estimator, estimate_every=2, max_skipped_steps=3)
    with pytest.warns(NonFiniteStepWarning, match="non-finite constraint estimate"):
        with pytest.raises(NonFiniteError, match="3 steps in a row"):
            tr.fit(50, progress=False)
    assert tr.step_count == 5  # estimation steps 0, 2, 4 failed; 1 and 3 were primal-only


@pytest.mark.parametrize("bad", [0, "3", 2.0, True, -1])
def test_max_skipped_steps_is_validated(bad):
    with pytest.raises(ValueError, match="'max_skipped_steps' must be an int >= 1"):
        _trainer(max_skipped_steps=bad)


def test_a_custom_estimator_that_raises_propagates():
    def broken(model, generator):
        raise ZeroDivisionError("user bug")

    tr = _trainer(estimator=broken)
    with pytest.raises(ZeroDivisionError, match="user bug"):
        tr.step()


# ------------------------------------------------------------------ extragradient state
def _opt_state(tr):
    out = []
    for opt in tr.constrained_optimizer.primal_optimizers:
        for st in opt.state.values():
            out.append({k: (v.clone() if isinstance(v, torch.Tensor) else v)
                        for k, v in st.items()})
    return out


def _same(a, b):
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                assert torch.equal(sa[k], sb[k]), k
            else:
                assert sa[k] == sb[k], k


def test_extragradient_skip_of_the_update_half_restores_the_optimiser_state():
    tr = _trainer(_ru(), optimizer="extragradient", dual_lr=0.5)
    count = {"n": 0, "bad": -1}

    def hook(grad):
        count["n"] += 1
        return grad * float("nan") if count["n"] == count["bad"] else grad

    tr.model.means.register_hook(hook)
    tr.step()
    tr.step()
    before_params = [p.detach().clone() for p in tr.model.parameters()]
    before_state = _opt_state(tr)
    assert before_state and before_state[0]["step"] == 4  # two extrapolations + two updates
    count["bad"] = count["n"] + 2  # the update half-step's backward of the next step
    with pytest.warns(NonFiniteStepWarning):
        rec = tr.step()
    assert rec.skipped is not None and "non-finite gradient" in rec.skipped
    for a, b in zip(before_params, tr.model.parameters(), strict=True):
        assert torch.equal(a, b)
    _same(before_state, _opt_state(tr))  # ExtraAdam's step, exp_avg, exp_avg_sq restored
