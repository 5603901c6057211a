"""Primal-dual engine on Cooper: CMP state, projections, names, NaN guard, checkpoints.

References are independent of the engine: scipy quadrature of closed-form Gaussian densities
(KLs, expectations, population ESS), scipy's SLSQP for Euclidean projections, and
hand-written numpy formulas for the reweighted denoising loss.
"""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
import torch
from cooper.formulations import AugmentedLagrangian, Lagrangian
from cooper.optim import (
    AlternatingDualPrimalOptimizer,
    AlternatingPrimalDualOptimizer,
    ExtrapolationConstrainedOptimizer,
    SimultaneousOptimizer,
)
from cooper.optim.torch_optimizers import ExtraAdam, ExtraSGD, nuPI
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

from dualdiff import (
    DualDomainError,
    GaussianMixture,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
)
from dualdiff.engine import (
    ConstraintEstimator,
    DualDomainProjection,
    EngineConfigurationError,
    LowEffectiveSampleSizeWarning,
    PrimalDualTrainer,
    TrainableGaussianMixture,
    TrainingHistory,
    UnknownOptionError,
    project_capped_box,
)

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q = P0.component(1)
B_RU, B_FU, TAU_LU = 7.0, 1.5, -9.0



def _make(kind: str):
    if kind == "RU":
        return KLConstrainedProblem(P0, [Q], bounds=[B_RU])
    if kind == "FU":
        return KLConstrainedProblem(P0, [Q], bounds=[B_FU], direction="forward")
    return LikelihoodConstrainedProblem(P0, [Q], bounds=[TAU_LU])


def _model():
    return TrainableGaussianMixture.from_mixture(P0)


# ---------------------------------------------------------------- scipy references (1-D)
def _lp0(x):
    return np.logaddexp(
        math.log(0.7) + stats.norm.logpdf(x, -2, 1), math.log(0.3) + stats.norm.logpdf(x, 2, 1)
    )


def _lq(x):
    return stats.norm.logpdf(x, 2, 1)


def _quad(f):
    return integrate.quad(f, -30, 30, points=[-2, 2], limit=200, epsabs=1e-12)[0]


def _reference_violation(kind: str) -> float:
    if kind == "RU":  # b - KL(p0 || q)
        return B_RU - _quad(lambda x: np.exp(_lp0(x)) * (_lp0(x) - _lq(x)))
    if kind == "FU":  # b - KL(q || p0)
        return B_FU - _quad(lambda x: np.exp(_lq(x)) * (_lq(x) - _lp0(x)))
    return _quad(lambda x: np.exp(_lp0(x)) * _lq(x)) - TAU_LU  # E_p0[log q] - tau


# ---------------------------------------------------------------- CMP state
@pytest.mark.parametrize("kind", ["RU", "FU", "LU"])
def test_cmp_state_carries_estimated_violations(kind):
    prob = _make(kind)
    tr = PrimalDualTrainer(prob, _model(), seed=0)
    batch = tr.form.sample_batch(tr.model, 32, tr.generator)
    state = tr.cmp.compute_cmp_state(batch, estimate=True)
    cs = state.observed_constraints[tr.cmp.unlearning]
    # Grid quadrature of the problem (error bars ~1e-9) against scipy's adaptive quadrature.
    assert float(cs.violation) == pytest.approx(_reference_violation(kind), abs=1e-6)
    assert not cs.violation.requires_grad
    assert cs.contributes_to_dual_update and not cs.contributes_to_primal_update
    # The multiplier enters through the weights: Cooper's primal Lagrangian is the loss alone.
    primal = state.compute_primal_lagrangian()
    assert torch.equal(primal.lagrangian, state.loss)
    # Dual Lagrangian: its gradient in lambda is the violation (Danskin ascent direction).
    dual = state.compute_dual_lagrangian()
    dual.backward()
    assert torch.allclose(tr.cmp.multiplier.weight.grad, cs.violation.reshape(1))
    # Off estimation steps no constraint is observed (the dual stays put).
    assert tr.cmp.compute_cmp_state(batch, estimate=False).observed_constraints == {}


@pytest.mark.parametrize("kind", ["RU", "LU"])
def test_sampler_constraint_is_differentiable_and_added_by_cooper(kind):
    prob = _make(kind)
    lam = 0.05
    tr = PrimalDualTrainer(
        prob, _model(), primal="sampler", init_multipliers=[lam], primal_options={"steps": 20}
    )
    batch = tr.form.sample_batch(tr.model, 64, tr.generator)
    state = tr.cmp.compute_cmp_state(batch, estimate=True)
    cs = state.observed_constraints[tr.cmp.unlearning]
    assert cs.violation.requires_grad and cs.contributes_to_primal_update
    assert float(cs.strict_violation) == pytest.approx(_reference_violation(kind), abs=1e-6)
    # Model == frozen reference (two independent exact score implementations): zero path KL.
    assert float(state.loss.detach()) < 1e-20
    primal = state.compute_primal_lagrangian()
    expected = state.loss + lam * cs.violation
    assert float(primal.lagrangian.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    primal.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in tr.model.parameters())


def test_sampler_euler_maruyama_samples_follow_the_model():
    """At theta = p0 the sampler's constraint term estimates E_p0[log q]."""
    prob = _make("LU")
    tr = PrimalDualTrainer(prob, _model(), primal="sampler", primal_options={"steps": 100}, seed=1)
    batch = tr.form.sample_batch(tr.model, 4000, tr.generator)
    with torch.no_grad():
        out = tr.form.primal_loss(tr.model, batch, torch.zeros(1, dtype=torch.float64))
    ref = _reference_violation("LU")
    # sd(log q) under p0 is ~3.9, so the MC standard error with 4000 samples is ~0.06; the
    # Euler-Maruyama bias with 100 steps measured < 0.05. Allow 0.3 (5 se).
    assert float(out.violation) == pytest.approx(ref, abs=0.3)


# ---------------------------------------------------------------- primal forms vs by-hand formulas
def test_reweighted_dsm_loss_matches_hand_formula():
    prob = _make("FU")
    lam = 0.1
    tr = PrimalDualTrainer(prob, _model(), seed=3)
    batch = tr.form.sample_batch(tr.model, 256, tr.generator)
    out = tr.form.primal_loss(tr.model, batch, torch.tensor([lam], dtype=torch.float64))
    x0, t, eps = (v.numpy().reshape(-1) for v in (batch.x0, batch.t, batch.noise))
    # FU weights w = (p0 - lam q) / ((1 - lam) p0), self-normalised to mean one.
    w = (np.exp(_lp0(x0)) - lam * np.exp(_lq(x0))) / ((1 - lam) * np.exp(_lp0(x0)))
    w = w / w.mean()
    # VP schedule (beta 0.1 .. 20) and the exact noised p0 score, by hand.
    ib = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    a, s = np.exp(-0.5 * ib), np.sqrt(-np.expm1(-ib))
    xt = a * x0 + s * eps
    comp_var = a**2 + s**2
    logc = np.stack(
        [math.log(0.7) + stats.norm.logpdf(xt, -2 * a, np.sqrt(comp_var)),
         math.log(0.3) + stats.norm.logpdf(xt, 2 * a, np.sqrt(comp_var))]
    )
    r = np.exp(logc - np.logaddexp(logc[0], logc[1]))
    score = -(r[0] * (xt + 2 * a) + r[1] * (xt - 2 * a)) / comp_var
    eps_hat = -s * score
    ref = np.mean(w * (eps_hat - eps) ** 2)
    assert float(out.loss.detach()) == pytest.approx(ref, rel=1e-9)
    assert out.stats["ess"] == pytest.approx(w.sum() ** 2 / (len(w) * (w**2).sum()), rel=1e-12)


@pytest.mark.parametrize("kind", ["RU", "LU"])
def test_composed_loss_vanishes_at_the_pretrained_model(kind):
    prob = _make(kind)
    tr = PrimalDualTrainer(prob, _model(), primal="composed", seed=4)
    batch = tr.form.sample_batch(tr.model, 128, tr.generator)
    zero = tr.form.primal_loss(tr.model, batch, torch.zeros(1, dtype=torch.float64)).loss
    # lambda = 0: the composed target is p0's exact noised score, which the model reproduces.
    assert float(zero.detach()) < 1e-20
    pos = tr.form.primal_loss(tr.model, batch, torch.tensor([0.05], dtype=torch.float64)).loss
    assert float(pos.detach()) > 1e-6


# ---------------------------------------------------------------- projection and domain
@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 4),
    data=st.data(),
)
def test_project_capped_box_is_the_euclidean_projection(m, data):
    floats = st.floats(-3, 3, allow_nan=False)
    lam = np.array(data.draw(st.lists(floats, min_size=m, max_size=m)))
    upper = np.array(data.draw(st.lists(st.floats(0.0, 2.0), min_size=m, max_size=m)))
    cap = data.draw(st.floats(0.05, 3.0))
    out = project_capped_box(
        torch.tensor(lam, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64), cap
    ).numpy()
    assert (out >= 0).all() and (out <= upper + 1e-12).all() and out.sum() <= cap + 1e-9
    res = optimize.minimize(
        lambda x: 0.5 * ((x - lam) ** 2).sum(),
        np.clip(lam, 0, upper) * 0,
        jac=lambda x: x - lam,
        bounds=list(zip(np.zeros(m), upper, strict=True)),
        constraints=[
            {"type": "ineq", "fun": lambda x: cap - x.sum(), "jac": lambda x: -np.ones(m)}
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    # SLSQP's own tolerance ~1e-7 on this strictly convex QP.
    np.testing.assert_allclose(out, res.x, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "boundary"),
    [("RU", 1.0), ("FU", 0.3), ("LU", 1.0)],  # sum < 1; lam_max = 0.3; tilt bound q^-lam: 1
)
def test_multipliers_never_leave_the_domain_with_a_huge_dual_step(kind, boundary):
    prob = _make(kind)
    margin = 1e-3
    tr = PrimalDualTrainer(
        prob, _model(), dual_lr=1e8, domain_margin=margin, batch_size=32, ess_warning=0.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr.fit(3, progress=False)
    for rec in tr.history.records:
        assert rec.skipped is None
        lam = torch.tensor(rec.multipliers, dtype=torch.float64)
        assert prob.in_domain(lam)
        assert float(lam[0]) == pytest.approx((1 - margin) * boundary, rel=1e-12)
    # A huge step the other way lands on 0, not below.
    tr2 = PrimalDualTrainer(
        prob, _model(), dual_lr=1e8, init_multipliers=[0.5 * boundary], batch_size=32,
        estimator=lambda model, gen: torch.tensor([1e3 if kind != "LU" else -1e3]),
        ess_warning=0.0,
    )
    tr2.step()
    assert tr2.multipliers.tolist() == [0.0]


def test_projection_pulls_back_into_a_non_box_domain():
    """Two FU constraints sharing a component: p0 - lam1 q1 - lam2 q2 >= 0 is not a box."""
    p0 = GaussianMixture([0.5, 0.3, 0.2], [[-3.0], [0.0], [3.0]], 0.5)
    q1 = p0.component(1)
    q2 = GaussianMixture([0.5, 0.5], [[0.0], [3.0]], 0.5)
    prob = KLConstrainedProblem(p0, [q1, q2], bounds=[0.5, 0.5], direction="forward")
    proj = DualDomainProjection(prob, margin=1e-3)
    out = proj(torch.tensor([10.0, 10.0], dtype=torch.float64))
    assert prob.in_domain(out) and proj.contains(out)
    # Independent check on a dense grid with scipy densities: p0 - sum lam_i q_i >= 0 at the
    # result, and < 0 somewhere just beyond it along the ray (so the margin is all it gave up).
    x = np.linspace(-8, 8, 4001)

    def pdf(w, mus):
        sd = math.sqrt(0.5)
        return sum(wi * stats.norm.pdf(x, mu, sd) for wi, mu in zip(w, mus, strict=True))

    def rest(lam):
        return pdf([0.5, 0.3, 0.2], [-3, 0, 3]) - lam[0] * pdf([1.0], [0]) - lam[1] * pdf(
            [0.5, 0.5], [0, 3]
        )

    assert rest(out.tolist()).min() >= -1e-15
    beyond = (out * (1 + 2e-3) / (1 - 1e-3)).tolist()
    assert rest(beyond).min() < 0
    # The box alone ([0.3, 0.4] after clipping) is far outside: the pull-back was needed.
    assert rest([0.3 * (1 - 1e-3), 0.4 * (1 - 1e-3)]).min() < -0.01


def test_init_multipliers_outside_the_domain_raise():
    with pytest.raises(DualDomainError, match="init_multipliers"):
        PrimalDualTrainer(_make("FU"), _model(), init_multipliers=[0.5])


# ---------------------------------------------------------------- option names
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("simultaneous", SimultaneousOptimizer),
        ("alternating", AlternatingPrimalDualOptimizer),
        ("alternating_dual_primal", AlternatingDualPrimalOptimizer),
        ("extragradient", ExtrapolationConstrainedOptimizer),
    ],
)
def test_optimizer_names_resolve_to_cooper_classes(name, cls):
    tr = PrimalDualTrainer(_make("FU"), _model(), optimizer=name)
    assert isinstance(tr.constrained_optimizer, cls)
    opt = tr.constrained_optimizer
    primal, dual = opt.primal_optimizers[0], opt.dual_optimizers[0]
    if name == "extragradient":
        assert isinstance(primal, ExtraAdam) and isinstance(dual, ExtraSGD)
    else:
        assert isinstance(primal, torch.optim.Adam) and type(dual) is torch.optim.SGD
    assert dual.param_groups[0]["maximize"]


def test_formulation_and_dual_optimizer_names_resolve():
    tr = PrimalDualTrainer(
        _make("LU"), _model(), formulation="augmented_lagrangian", dual_optimizer="nupi"
    )
    assert isinstance(tr.cmp.unlearning.formulation, AugmentedLagrangian)
    assert isinstance(tr.constrained_optimizer.dual_optimizers[0], nuPI)
    tr = PrimalDualTrainer(_make("LU"), _model(), primal_optimizer="sgd")
    assert isinstance(tr.cmp.unlearning.formulation, Lagrangian)
    assert type(tr.constrained_optimizer.primal_optimizers[0]) is torch.optim.SGD


@pytest.mark.parametrize(
    ("kwarg", "value"),
    [
        ("primal", "dsm"),
        ("formulation", "penalty"),
        ("optimizer", "gda"),
        ("dual_optimizer", "adam"),
        ("primal_optimizer", "adamw"),
        ("estimator", "mc"),
    ],
)
def test_unknown_names_raise_typed_errors(kwarg, value):
    with pytest.raises(UnknownOptionError, match=rf"unknown \w+={value!r}; allowed values are"):
        PrimalDualTrainer(_make("FU"), _model(), **{kwarg: value})
    assert issubclass(UnknownOptionError, ValueError)


def test_incompatible_options_raise():
    with pytest.raises(EngineConfigurationError, match="nuPI has no extrapolation"):
        PrimalDualTrainer(_make("FU"), _model(), optimizer="extragradient", dual_optimizer="nupi")
    with pytest.raises(EngineConfigurationError, match="does not apply to ForwardKLProblem"):
        PrimalDualTrainer(_make("FU"), _model(), primal="sampler")
    with pytest.raises(TypeError, match="parameter 'problem'"):
        PrimalDualTrainer(P0, _model())
    with pytest.raises(TypeError, match="parameter 'model'"):
        PrimalDualTrainer(_make("FU"), P0)
    with pytest.raises(ValueError, match="'batch_size' must be an int >= 2"):
        PrimalDualTrainer(_make("FU"), _model(), batch_size=1)


# ---------------------------------------------------------------- NaN guard
def _params(tr):
    return [p.detach().clone() for p in tr.model.parameters()]


def test_nan_batch_is_skipped_without_touching_parameters_or_multipliers():
    calls = {"n": 0}

    def data(n, generator):
        calls["n"] += 1
        x = P0.sample(n, generator=generator)
        if calls["n"] == 3:
            x[5, 0] = float("nan")
        return x

    tr = PrimalDualTrainer(_make("FU"), _model(), pretrained_data=data, dual_lr=0.5, primal_lr=0.05)
    for _ in range(2):
        tr.step()
    before, lam = _params(tr), tr.multipliers
    rec = tr.step()
    assert rec.skipped is not None and "non-finite batch" in rec.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, _params(tr), strict=True))
    assert torch.equal(lam, tr.multipliers)
    tr.fit(3, progress=False)
    assert [r["step"] for r in tr.history.skipped] == [2]
    assert all(bool(torch.isfinite(p).all()) for p in tr.model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, _params(tr), strict=True))


@pytest.mark.parametrize(("optimizer", "bad_backward"), [("simultaneous", 2), ("extragradient", 4)])
def test_nan_gradient_is_skipped(optimizer, bad_backward):
    """A NaN gradient (in extragradient: in the second half-step) leaves no trace."""
    tr = PrimalDualTrainer(_make("RU"), _model(), optimizer=optimizer, dual_lr=0.5, ess_warning=0)
    count = {"n": 0}

    def hook(grad):
        count["n"] += 1
        return grad * float("nan") if count["n"] == bad_backward else grad

    tr.model.means.register_hook(hook)
    tr.step()
    before, lam = _params(tr), tr.multipliers
    rec = tr.step()
    assert rec.skipped is not None and "non-finite gradient" in rec.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, _params(tr), strict=True))
    assert torch.equal(lam, tr.multipliers)
    tr.step()
    assert tr.history.records[-1].skipped is None


def test_nan_estimate_is_skipped():
    n = {"calls": 0}
    exact = ConstraintEstimator(_make("FU"), method="exact")

    def estimator(model, generator):
        n["calls"] += 1
        return torch.tensor([float("nan")]) if n["calls"] == 2 else exact(model)

    tr = PrimalDualTrainer(_make("FU"), _model(), estimator=estimator, dual_lr=0.5)
    tr.step()
    lam = tr.multipliers
    rec = tr.step()
    assert "non-finite constraint estimate" in rec.skipped
    assert torch.equal(lam, tr.multipliers)


# ---------------------------------------------------------------- checkpoints
CONFIGS = [
    ("FU", {}),
    ("LU", {"primal": "composed", "formulation": "augmented_lagrangian", "optimizer": "alternating",
            "dual_optimizer": "nupi", "dual_optimizer_options": {"Kp": 1.0, "Ki": 1.0}}),
    ("RU", {"optimizer": "extragradient", "grad_clip": 0.5}),
    ("LU", {"primal": "sampler", "optimizer": "alternating_dual_primal",
            "primal_options": {"steps": 5}}),
]


def _trainer(kind, cfg):
    base = {"batch_size": 32, "primal_lr": 0.05, "dual_lr": 0.3, "estimate_every": 3, "seed": 11,
            "ess_warning": 0.0}
    return PrimalDualTrainer(_make(kind), _model(), **{**base, **cfg})


@pytest.mark.parametrize(("kind", "cfg"), CONFIGS)
def test_checkpoint_resume_is_bitwise_identical(kind, cfg, tmp_path):
    def seed_all():
        torch.manual_seed(123)
        np.random.seed(123)  # noqa: NPY002
        random.seed(123)

    seed_all()
    full = _trainer(kind, cfg)
    full.fit(8, progress=False)
    after_full = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002

    seed_all()
    first = _trainer(kind, cfg)
    first.fit(4, progress=False)
    path = tmp_path / "ckpt.pt"
    first.save_checkpoint(path)

    torch.rand(100)  # disturb every global RNG: the checkpoint must restore them
    np.random.rand(100)  # noqa: NPY002
    random.random()
    resumed = _trainer(kind, cfg)
    with torch.no_grad():
        for p in resumed.model.parameters():
            p.add_(1.0)  # a different starting point: load must overwrite it
    resumed.load_checkpoint(path)
    resumed.fit(4, progress=False)

    for (name, a), (_, b) in zip(
        full.module.state_dict().items(), resumed.module.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(full.multipliers, resumed.multipliers)
    assert full.history.to_dict() == resumed.history.to_dict()
    assert resumed.step_count == 8
    sa, sb = full.constrained_optimizer.state_dict(), resumed.constrained_optimizer.state_dict()
    for key in ("primal_optimizer_states", "dual_optimizer_states"):
        for oa, ob in zip(sa[key], sb[key], strict=True):
            for (ka, va), (kb, vb) in zip(oa["state"].items(), ob["state"].items(), strict=True):
                assert ka == kb
                for f in va:
                    if isinstance(va[f], torch.Tensor):
                        assert torch.equal(va[f], vb[f])
                    else:
                        assert va[f] == vb[f]
    assert torch.equal(full.generator.get_state(), resumed.generator.get_state())
    after_resumed = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(after_full[0], after_resumed[0])
    assert np.array_equal(after_full[1], after_resumed[1]) and after_full[2] == after_resumed[2]


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    tr = _trainer("FU", {})
    tr.fit(1, progress=False)
    tr.save_checkpoint(tmp_path / "a.pt")
    other = _trainer("FU", {"formulation": "augmented_lagrangian"})
    with pytest.raises(EngineConfigurationError, match="differently configured"):
        other.load_checkpoint(tmp_path / "a.pt")
    torch.save({"x": 1}, tmp_path / "b.pt")
    with pytest.raises(EngineConfigurationError, match="not a dualdiff engine checkpoint"):
        tr.load_checkpoint(tmp_path / "b.pt")


# ---------------------------------------------------------------- history, callbacks, warnings
def test_history_is_json_serialisable_and_round_trips(tmp_path):
    tr = _trainer("FU", {})
    stop_at = 4
    tr.callbacks.append(lambda trainer, rec: rec.step == stop_at)
    hist = tr.fit(20, progress=True)
    assert len(hist) == stop_at + 1  # the callback stopped the loop
    text = hist.to_json(tmp_path / "h.json")
    assert json.loads((tmp_path / "h.json").read_text()) == json.loads(text) == hist.to_dict()
    again = TrainingHistory.from_dict(json.loads(text))
    assert again.to_dict() == hist.to_dict()
    assert len(hist.estimates) == 2  # steps 0 and 3 (estimate_every=3)
    est = hist.estimates[0]
    assert est["method"] == "exact"
    assert est["constraints"][0] == pytest.approx(B_FU - _reference_violation("FU"), abs=1e-6)
    assert est["objective"] == pytest.approx(0.0, abs=1e-9)  # KL(p0 || p0) at the start
    assert all(0 < e <= 1 for e in hist.ess)


def test_low_population_ess_warns_and_is_recorded():
    lam = 0.3
    prob = _make("RU")
    a, c = 1 / (1 - lam), lam / (1 - lam)
    log_z = math.log(_quad(lambda x: np.exp(a * _lp0(x) - c * _lq(x))))
    e_w2 = _quad(lambda x: np.exp(2 * (a * _lp0(x) - c * _lq(x) - log_z) - _lp0(x)))
    tr = PrimalDualTrainer(prob, _model(), init_multipliers=[lam], estimate_every=100)
    with pytest.warns(LowEffectiveSampleSizeWarning, match="population effective sample size"):
        tr.step()
    rec = tr.history.population_ess[0]
    assert rec["value"] == pytest.approx(1 / e_w2, rel=1e-4)  # 0.037 < 0.05
    assert len(tr.history.warnings) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowEffectiveSampleSizeWarning)
        tr.step()  # same multipliers: no second warning
        ok = PrimalDualTrainer(prob, _model())
        ok.step()  # lambda = 0: ESS = 1


def test_augmented_lagrangian_uses_the_look_ahead_multiplier():
    rho, lam = 0.5, 0.05
    tr = PrimalDualTrainer(
        _make("FU"), _model(), formulation="augmented_lagrangian", penalty=rho,
        init_multipliers=[lam], dual_lr=1e-3,
    )
    rec = tr.step()
    expected = min(max(lam + rho * _reference_violation("FU"), 0.0), 0.3 * (1 - 1e-3))
    assert rec.primal_multipliers[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("optimizer", "uses_new"), [("simultaneous", False), ("alternating_dual_primal", True)]
)
def test_primal_sees_the_multipliers_cooper_intends(optimizer, uses_new):
    tr = PrimalDualTrainer(_make("FU"), _model(), optimizer=optimizer, dual_lr=0.5)
    before = tr.multipliers.tolist()
    rec = tr.step()
    assert rec.multipliers != before
    assert rec.primal_multipliers == (rec.multipliers if uses_new else before)


def test_grad_clip_bounds_the_step():
    tr = PrimalDualTrainer(
        _make("RU"), _model(), primal_optimizer="sgd", primal_lr=1.0, grad_clip=1e-3
    )
    before = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    rec = tr.step()
    after = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    assert rec.grad_norm > 1e-3
    assert float((after - before).norm()) <= 1e-3 * (1 + 1e-6)


# ---------------------------------------------------------------- ODE estimator
@pytest.mark.parametrize("kind", ["RU", "FU", "LU"])
def test_ode_estimator_agrees_with_exact_values(kind):
    prob = _make(kind)
    model = _model()
    exact = ConstraintEstimator(prob, method="exact")(model)
    gen = torch.Generator().manual_seed(0)
    est = ConstraintEstimator(prob, method="ode", n_samples=200)(model, gen)
    c, se = float(est.constraints[0]), float(est.constraint_stderr[0])
    # 200 samples: Monte Carlo error; plus the ODE model being p0 at t_min = 1e-3 (tiny bias).
    assert abs(c - float(exact.constraints[0])) < 4 * se + 0.02
    assert est.objective == pytest.approx(0.0, abs=4 * est.objective_stderr + 0.01)
    assert float(est.violations[0]) == pytest.approx(
        (c - TAU_LU) if kind == "LU" else (prob.bounds[0].item() - c)
    )
