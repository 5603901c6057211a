"""ConstraintEstimate.from_values: per-sample values -> means, standard errors, violations.

References: numpy's mean and ddof=1 standard deviation; the violations' sign conventions
written out by hand (KL problems b - C, LU C - tau); the dual step of plain gradient ascent
on the Lagrangian written out by hand.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualdiff import (
    ConstraintEstimate,
    GaussianMixture,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
)
from dualdiff.engine import PrimalDualTrainer, TrainableGaussianMixture

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q1, Q2 = P0.component(0), P0.component(1)


def _lu(m: int = 1):
    taus = [-9.0, -7.0][:m]
    return LikelihoodConstrainedProblem(P0, [Q2, Q1][:m], bounds=taus), taus


def _ru(m: int = 1):
    bs = [7.0, 5.0][:m]
    return KLConstrainedProblem(P0, [Q2, Q1][:m], bounds=bs), bs


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=300))
def test_one_constraint_matches_numpy(vals):
    prob, (tau,) = _lu()
    e = ConstraintEstimate.from_values(prob, torch.tensor(vals, dtype=torch.float64))
    v = np.asarray(vals, dtype=np.float64)
    assert e.n == len(vals) and e.method == "custom"
    np.testing.assert_allclose(e.constraints.numpy(), [v.mean()], rtol=1e-12, atol=1e-6)
    np.testing.assert_allclose(e.constraint_stderr.numpy(), [v.std(ddof=1) / math.sqrt(v.size)],
                               rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(e.violations.numpy(), [v.mean() - tau], rtol=1e-12, atol=1e-6)
    assert e.constraints.dtype == torch.float64


def test_rows_are_constraints_and_kl_violations_are_level_minus_value():
    prob, bs = _ru(2)
    rng = np.random.default_rng(0)
    v = rng.normal([[6.0], [5.5]], [[1.0], [3.0]], size=(2, 50))
    e = ConstraintEstimate.from_values(prob, torch.from_numpy(v).float())  # float32 accepted
    v32 = v.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(e.constraints.numpy(), v32.mean(1), rtol=1e-12)
    np.testing.assert_allclose(e.constraint_stderr.numpy(), v32.std(1, ddof=1) / math.sqrt(50),
                               rtol=1e-10)
    np.testing.assert_allclose(e.violations.numpy(), np.asarray(bs) - v32.mean(1), rtol=1e-12)


def test_one_sample_has_zero_stderr():
    prob, _ = _lu()
    e = ConstraintEstimate.from_values(prob, [3.5])
    assert e.n == 1 and float(e.constraints[0]) == 3.5 and float(e.constraint_stderr[0]) == 0.0


def test_non_finite_values_give_a_non_finite_estimate():
    prob, _ = _lu()
    e = ConstraintEstimate.from_values(prob, [1.0, float("nan")])
    assert not e.is_finite()


@pytest.mark.parametrize("m, shape", [(1, (0,)), (1, (2, 5)), (2, (5,)), (2, (3, 5)),
                                      (2, (2, 0)), (1, (1, 2, 3)), (1, ())])
def test_wrong_shapes_name_the_parameter_and_the_shape(m, shape):
    prob, _ = _lu(m)
    with pytest.raises(ValueError, match=r"parameter 'values'.*got shape " + re.escape(str(shape))):
        ConstraintEstimate.from_values(prob, torch.zeros(shape))


def test_drives_the_trainers_dual_step():
    # plain SGD ascent on the Lagrangian: lam_1 = max(0, lam_0 + lr * (C - tau)), C = mean
    prob, (tau,) = _lu()
    lr, lam0 = 0.01, 0.05
    vals = torch.tensor([-8.0, -6.0, -7.0])     # mean -7: violated by 2 nats

    def estimator(model, generator=None):
        return ConstraintEstimate.from_values(prob, vals)

    tr = PrimalDualTrainer(prob, TrainableGaussianMixture.from_mixture(P0), estimator=estimator,
                           dual_lr=lr, init_multipliers=[lam0], seed=0)
    tr.step()
    assert float(tr.multipliers[0]) == pytest.approx(lam0 + lr * (-7.0 - tau), rel=1e-6)
    assert tr.last_estimate.n == 3
    assert float(tr.last_estimate.constraint_stderr[0]) == pytest.approx(1 / math.sqrt(3))
