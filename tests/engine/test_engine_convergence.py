"""Primal-dual training reaches the dual optimum computed in closed form.

A :class:`~dualdiff.engine.TrainableGaussianMixture` (weights, means and variances
trainable; LU and FU targets are exactly representable, RU targets nearly so) is trained by
reweighted denoising score matching with exact constraint estimates; the multipliers,
averaged over the last 200 steps, must land within 10% of ``problem.solve_dual()``'s and the
trained model must be near-feasible with an objective near the optimal value P*.
"""

from __future__ import annotations

import pytest

from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem
from dualdiff.engine import PrimalDualTrainer, TrainableGaussianMixture

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q = P0.component(1)



# Dual step sizes ~ 1/|dual Hessian| (FU: -4.3, LU: -30, RU: -33 at the optimum). Dual-update
# rules: "every" moves the dual every 20 primal steps ("a few primal steps at fixed lambda",
# MATH.md §4); "settled" estimates every 10 steps and moves the dual only once the model has
# settled at the current multipliers (dualdiff.engine.dual_update), which makes the dual iteration
# gradient ascent on the dual function itself: it takes the Newton step size 1/|g''(lam*)|
# (at 1.5x that, RU's multiplier oscillation grows, as gradient ascent past 1/L does).
RULES = {"every": 20, "settled": 10}
CASES = {
    "FU": (lambda: KLConstrainedProblem(P0, [Q], bounds=[1.5], direction="forward"), 0.2),
    "LU": (lambda: LikelihoodConstrainedProblem(P0, [Q], bounds=[-9.0]), 0.05),
    "RU": (lambda: KLConstrainedProblem(P0, [Q], bounds=[7.0]), 0.05),
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("kind", list(CASES))
def test_primal_dual_converges_to_the_dual_optimum(kind, rule):
    make, dual_lr = CASES[kind]
    prob = make()
    sol = prob.solve_dual()
    lam_star = float(sol.multipliers[0])
    if rule == "settled":
        dual_lr = 1.0 / abs(float(prob.dual_hessian(sol.multipliers)[0, 0]))
    assert sol.status == "optimal" and lam_star > 0.05  # an active constraint
    model = TrainableGaussianMixture.from_mixture(P0)
    trainer = PrimalDualTrainer(
        prob,
        model,
        primal_lr=0.02,
        dual_lr=dual_lr,
        batch_size=512,
        estimate_every=RULES[rule],
        dual_update=rule,
        seed=0,
    )
    history = trainer.fit(600, progress=False)
    assert not history.skipped
    lams = [r.multipliers[0] for r in history.records[-200:]]
    lam_avg = sum(lams) / len(lams)
    # Measured relative errors 0.5-1.5% (seed 0; "settled": 0.9-2.7%, and at most 6.1% over
    # seeds 0-2); stochastic DSM gradients make the multipliers fluctuate by ~15% around lam*,
    # so average them and allow 10%.
    assert lam_avg == pytest.approx(lam_star, rel=0.10)
    # The last iterate fluctuates with the multipliers (measured over seeds 0-2: slack in
    # [-0.33, 0.10] nats, |f - P*| <= 0.021; "settled" seed 0: slack >= -0.35, |f - P*| <=
    # 0.023, seeds 1-2 up to -0.61 and 0.036 for LU): require that it removed at least 75% of
    # the pretrained model's violation and that its objective is within 0.03 nats of P*.
    cert = prob.certificate(model, [lam_avg])
    initial_slack = float(prob.certificate(P0, [lam_avg]).slack[0])
    assert initial_slack < 0
    assert float(cert.slack[0]) > 0.25 * initial_slack
    assert cert.primal_value == pytest.approx(sol.certificate.primal_value, abs=0.03)
