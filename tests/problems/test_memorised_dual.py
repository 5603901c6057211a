"""FU's dual for a memorising pretrained model (``dualdiff.problems.memorised``).

Two independent references:

* the certified closed-form dual of Gaussian mixtures whose forget components sit far from
  the rest (``solve_dual`` on the quadrature of the mixture: there q_i / p0 = 1 / a_i on q_i's
  mass, the memorising statement with lam_max_i = a_i);
* a brute-force solve of the discrete problem itself: p0 uniform on N points, q_i uniform on
  disjoint subsets A_i, minimise KL(p0 || p) over the simplex subject to the forget-set NLL
  rises E_{A_i}[log p0 - log p] >= b_i, by scipy's SLSQP.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize

from dualdiff import GaussianMixture, KLConstrainedProblem
from dualdiff.engine import PrimalDualTrainer, TrainableGaussianMixture
from dualdiff.problems import MemorisedForwardDual, memorised_forward_dual


class ScoreOnly:
    """A Gaussian mixture seen only through ``score(x, t)`` (a model-level statement)."""

    def __init__(self, gm: GaussianMixture) -> None:
        self.gm = gm
        self.schedule = gm.schedule

    def score(self, x, t=0.0, cond=None):
        return self.gm.score(x, t)


def _separated(weights):
    """1-D mixture, unit variances, components 14 standard deviations apart."""
    k = len(weights)
    return GaussianMixture(weights, [[14.0 * (i - (k - 1) / 2)] for i in range(k)], 1.0)


@pytest.mark.parametrize("b", [0.0, 0.5, 3.13, 5.22, 8.0])
def test_one_forget_set_matches_the_certified_mixture_dual(b):
    a = 0.02
    p0 = _separated([1 - a, a])
    q = p0.component(1)
    kl0 = float(KLConstrainedProblem(p0, [q], bounds=[1.0], direction="forward")
                .constraint_values(p0)[0][0])
    sol = KLConstrainedProblem(p0, [q], bounds=[kl0 + b], direction="forward").solve_dual()
    assert sol.status == "optimal"
    got = memorised_forward_dual([a], [b])
    assert isinstance(got, MemorisedForwardDual)
    assert float(got.multipliers[0]) == pytest.approx(float(sol.multipliers[0]), rel=1e-8,
                                                      abs=1e-12)
    assert got.objective == pytest.approx(sol.dual_value, rel=1e-8, abs=1e-12)
    # the m = 1 formula of the docs
    want = a * (1 - math.exp(-b)) / (1 - a * math.exp(-b))
    assert float(got.multipliers[0]) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert float(got.fraction_of_lam_max[0]) == pytest.approx(want / a, rel=1e-12, abs=1e-15)


def test_two_forget_sets_match_the_certified_mixture_dual():
    w = [0.9, 0.04, 0.06]
    p0 = _separated(w)
    qs = [p0.component(1), p0.component(2)]
    b = [2.0, 4.5]
    kl0 = KLConstrainedProblem(p0, qs, bounds=[1.0, 1.0], direction="forward").constraint_values(
        p0)[0]
    sol = KLConstrainedProblem(p0, qs, bounds=(kl0 + torch.tensor(b)).tolist(),
                               direction="forward").solve_dual()
    assert sol.status == "optimal"
    got = memorised_forward_dual(w[1:], b)
    assert got.multipliers.tolist() == pytest.approx(sol.multipliers.tolist(), rel=1e-8)
    assert got.objective == pytest.approx(sol.dual_value, rel=1e-8)


@pytest.mark.parametrize(("sizes", "b"), [((2,), (1.5,)), ((2, 3), (0.7, 2.5)),
                                          ((1, 2), (0.0, 3.0))])
def test_the_discrete_problem_solved_by_brute_force(sizes, b):
    n = 20
    starts = np.cumsum((0, *sizes))
    sets = [np.arange(s, s + k) for s, k in zip(starts[:-1], sizes, strict=True)]
    p0 = np.full(n, 1.0 / n)

    def p(z):
        return np.exp(z - np.logaddexp.reduce(z))

    def kl(z):
        return float(np.sum(p0 * (np.log(p0) - np.log(p(z)))))

    cons = [{"type": "ineq", "fun": lambda z, a=a, bi=bi: float(
        np.mean(np.log(p0[a]) - np.log(p(z)[a])) - bi)} for a, bi in zip(sets, b, strict=True)]
    res = optimize.minimize(kl, np.zeros(n), method="SLSQP", constraints=cons,
                            options={"ftol": 1e-14, "maxiter": 1000})
    assert res.success, res.message
    got = memorised_forward_dual([k / n for k in sizes], list(b))
    assert got.objective == pytest.approx(res.fun, rel=1e-6, abs=1e-9)
    # the optimal model is the target p_lam* = (p0 - sum lam_i q_i) / (1 - Lambda)
    lam = got.multipliers.numpy()
    target = p0.copy()
    for a, li in zip(sets, lam, strict=True):
        target[a] -= li / len(a)
    target /= 1.0 - lam.sum()
    assert p(res.x) == pytest.approx(target, rel=1e-4, abs=1e-7)


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match=r"'lam_max' must be values in \(0, 1\) summing below 1"):
        memorised_forward_dual([0.6, 0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"'lam_max'"):
        memorised_forward_dual([0.0], [1.0])
    with pytest.raises(ValueError, match=r"'lam_max'"):
        memorised_forward_dual([float("nan")], [1.0])
    with pytest.raises(ValueError, match=r"'bounds' must have one level per forget set"):
        memorised_forward_dual([0.1], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"'bounds' must be levels >= 0"):
        memorised_forward_dual([0.1], [-0.5])
    with pytest.raises(ValueError, match=r"'bounds' contains 1 non-finite"):
        memorised_forward_dual([0.1], [float("inf")])
    with pytest.raises(TypeError, match=r"'bounds'"):
        memorised_forward_dual([0.1], ["1.0"])


def test_the_model_level_problem_states_it_with_its_own_lam_max_and_levels():
    gm = _separated([0.5, 0.5])
    x = gm.sample(300, generator=torch.Generator().manual_seed(0)).to(torch.float64)
    prob = KLConstrainedProblem(ScoreOnly(gm), [x[:6]], bounds=[3.13], direction="forward",
                                training_set_size=300, pretrained_data=x)
    got = prob.memorised_dual()
    want = memorised_forward_dual([0.02], [3.13])
    assert torch.equal(got.multipliers, want.multipliers)
    assert got.lam_max.tolist() == pytest.approx([0.02])
    assert prob.domain.contains(got.multipliers)
    assert 0.95 < float(got.fraction_of_lam_max[0]) < 0.96
    # the documented warm start
    tr = PrimalDualTrainer(prob, TrainableGaussianMixture.from_mixture(gm), primal="composed",
                           init_multipliers=got.multipliers,
                           estimator=lambda m, generator=None: torch.zeros(1))
    assert torch.equal(tr.multipliers.cpu(), got.multipliers)
