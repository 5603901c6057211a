"""Fuzz of the public API: bad inputs are refused with a clear message, good ones run finitely.

Two parts:

* **Bad inputs** (hypothesis over a table): every parameter of ``PrimalDualTrainer``,
  ``KLConstrainedProblem``, ``LikelihoodConstrainedProblem`` and ``GaussianMixture`` receives
  wrong values (numeric strings, NaN/inf, negatives, bools for ints, wrong containers,
  unknown names, device strings, a model of another dimension, ...). An outcome is *clear*
  when the call raises ``ValueError``/``TypeError`` (dualdiff's typed errors derive from
  them) whose message names the owner and the parameter; *other* is anything else (accepted
  silently, or an error from torch/Cooper internals). ``test_bad_input_counts`` sweeps the
  whole table once and prints the counts ``tried / clear / other``.
* **Good option combinations** (hypothesis over the option space): the trainer either refuses
  an incompatible combination with a typed error naming the options, or takes two steps whose
  multipliers stay finite and inside the dual domain.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem
from dualdiff.engine import PrimalDualTrainer, TrainableGaussianMixture

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q = P0.component(1)
P2 = GaussianMixture([1.0], [[0.0, 0.0]], 1.0)
NAN, INF = float("nan"), float("inf")


def _fu():
    return KLConstrainedProblem(P0, [Q], bounds=[1.5], direction="forward")


def _model():
    return TrainableGaussianMixture.from_mixture(P0)


def _trainer(**kw):
    return PrimalDualTrainer(_fu(), _model(), batch_size=16, **kw)


@dataclass(frozen=True)
class Bad:
    """One wrong input: ``call()`` must raise a clear error naming ``owner`` and ``param``."""

    owner: str
    param: str
    label: str
    call: Callable[[], Any]


def _trainer_cases() -> list[Bad]:
    wrong: dict[str, list[Any]] = {
        "primal": ["dsm", "", None, 3, "Reweighted_DSM"],
        "formulation": ["lagrange", None, 1],
        "optimizer": ["adam", "extra-gradient", None],
        "dual_optimizer": ["adam", "NUPI", 0],
        "primal_optimizer": ["adamw", 5, None],
        "primal_lr": ["0.01", NAN, INF, -1e-3, 0.0, None, [0.1], True],
        "dual_lr": ["0.5", NAN, -0.1, 0, None, True],
        "batch_size": [1, 0, -5, 2.0, "64", None, True],
        "estimate_every": [0, 1.5, "2", None],
        "estimate_samples": [1, 0, 3.0, "100"],
        "estimate_objective": ["no", 0, None],
        "grad_clip": [0.0, -1.0, NAN, "1"],
        "ess_warning": [-0.1, 1.5, NAN, "0.1"],
        "penalty": [0.0, -1.0, NAN, "2"],
        "lam_max": [-1.0, NAN, "0.1", [0.1, 0.2]],
        "domain_margin": [-0.1, NAN, "0.01", 1.5],
        "init_multipliers": [[NAN], [-1.0], [0.9], ["0.1"], "0.1", [0.1, 0.1]],
        "seed": [-1, 1.5, "0", None, True],
        "device": ["gpu", "cuda:99", "meta", 3.5, "cpu:x"],
        "max_skipped_steps": [0, -1, 2.0, "10", True],
        "ema_decay": [1.0, -0.1, NAN, "0.9", True],
        "estimate_on": ["ema", 3, "average"],  # "average" without ema_decay
        "estimator": ["mc", 3, None],
        "dual_update": ["sometimes", 3, None],
        "primal_options": [{"nonsense": 1}, {"time_sampling": "cosine"}, {"time_sampling": 2}],
        "primal_optimizer_options": [{"betas": 0.9}, {"nonsense": 1}, {"lr": -1.0}],
        "dual_optimizer_options": [{"nonsense": 1}, {"momentum": -1.0}],
        "callbacks": [[3], ["not callable"]],
        "unlearn_data": [[], [P0.sample, P0.sample]],
    }
    cases = []
    for param, values in wrong.items():
        for v in values:
            cases.append(Bad("PrimalDualTrainer", param, f"{param}={v!r}",
                             lambda p=param, v=v: _trainer(**{p: v})))
    d2 = TrainableGaussianMixture.from_mixture(P2)
    cases.append(Bad("PrimalDualTrainer", "model", "model of d=2 on a d=1 problem",
                     lambda: PrimalDualTrainer(_fu(), d2)))
    cases.append(Bad("PrimalDualTrainer", "model", "model=object()",
                     lambda: PrimalDualTrainer(_fu(), object())))
    cases.append(Bad("PrimalDualTrainer", "problem", "problem='RU'",
                     lambda: PrimalDualTrainer("RU", _model())))
    cases.append(Bad("PrimalDualTrainer", "steps", "fit(steps='5')",
                     lambda: _trainer().fit("5", progress=False)))
    cases.append(Bad("PrimalDualTrainer", "steps", "fit(steps=-1)",
                     lambda: _trainer().fit(-1, progress=False)))
    return cases


def _problem_cases() -> list[Bad]:
    cases = []
    kl = "KLConstrainedProblem"
    for label, kw in [
        ("bounds='1.5'", {"bounds": "1.5"}),
        ("bounds=['1.5']", {"bounds": ["1.5"]}),
        ("bounds=[nan]", {"bounds": [NAN]}),
        ("bounds=[inf]", {"bounds": [INF]}),
        ("bounds=[1, 2] for m=1", {"bounds": [1.0, 2.0]}),
        ("bounds=None", {"bounds": None}),
        ("direction='backward'", {"direction": "backward"}),
        ("direction=1", {"direction": 1}),
        ("integration='simpson'", {"integration": "simpson"}),
        ("integration=3", {"integration": 3}),
        ("unlearn=[]", {"unlearn": []}),
        ("unlearn=['q']", {"unlearn": ["q"]}),
        ("unlearn of d=2", {"unlearn": [P2]}),
        ("pretrained='p0'", {"pretrained": "p0"}),
    ]:
        base = {"pretrained": P0, "unlearn": [Q], "bounds": [1.5], "direction": "forward"}
        param = next(iter(kw))
        cases.append(Bad(kl, param, label, lambda kw=kw, base=base: KLConstrainedProblem(
            **{**base, **kw})))
    lu = "LikelihoodConstrainedProblem"
    for label, kw in [
        ("likelihood='loglik'", {"likelihood": "loglik"}),
        ("likelihood=3", {"likelihood": 3}),
        ("bounds='-9'", {"bounds": "-9"}),
        ("bounds=[nan]", {"bounds": [NAN]}),
        ("expectation='data'", {"expectation": "data"}),
    ]:
        base = {"pretrained": P0, "unlearn": [Q], "bounds": [-9.0]}
        param = next(iter(kw))
        cases.append(Bad(lu, param, label, lambda kw=kw, base=base: LikelihoodConstrainedProblem(
            **{**base, **kw})))
    gm = "GaussianMixture"
    for label, args, param in [
        ("weights='0.5'", ("0.5", [[0.0]], 1.0), "weights"),
        ("weights=[nan]", ([NAN], [[0.0]], 1.0), "weights"),
        ("weights=[-1, 2]", ([-1.0, 2.0], [[0.0], [1.0]], 1.0), "weights"),
        ("weights=[0, 0]", ([0.0, 0.0], [[0.0], [1.0]], 1.0), "weights"),
        ("means=[['a']]", ([1.0], [["a"]], 1.0), "means"),
        ("means=[[inf]]", ([1.0], [[INF]], 1.0), "means"),
        ("covariances=-1", ([1.0], [[0.0]], -1.0), "covariances"),
        ("covariances='1'", ([1.0], [[0.0]], "1"), "covariances"),
        ("covariances=nan", ([1.0], [[0.0]], NAN), "covariances"),
    ]:
        cases.append(Bad(gm, param, label, lambda a=args: GaussianMixture(*a)))
    prob = _fu()
    cases += [
        Bad(gm, "x", "log_prob(x=[[nan]])",
            lambda: P0.log_prob(torch.tensor([[NAN]], dtype=torch.float64))),
        Bad(gm, "x", "score(x=[[nan]], t=0.5)",
            lambda: P0.score(torch.tensor([[NAN]], dtype=torch.float64), 0.5)),
        Bad(gm, "x", "log_prob(x of d=2)", lambda: P0.log_prob(torch.zeros(3, 2))),
        Bad(kl, "objective", "certificate_from_estimates(objective=nan)",
            lambda: prob.certificate_from_estimates([0.1], NAN, [1.0])),
        Bad(kl, "constraint_values", "certificate_from_estimates(constraint_values=[nan])",
            lambda: prob.certificate_from_estimates([0.1], 1.0, [NAN])),
        Bad(kl, "constraint_errors", "certificate_from_estimates(constraint_errors=['x'])",
            lambda: prob.certificate_from_estimates([0.1], 1.0, [1.0],
                                                    constraint_errors=["x"])),
        Bad(kl, "objective", "certificate_from_estimates(objective='1')",
            lambda: prob.certificate_from_estimates([0.1], "1", [1.0])),
    ]
    return cases


CASES = _trainer_cases() + _problem_cases()


def classify(case: Bad) -> tuple[str, str]:
    """``("clear" | "other", detail)`` for one bad input."""
    try:
        case.call()
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        names_owner = case.owner in msg
        names_param = re.search(rf"\b{re.escape(case.param)}\b", msg) is not None
        if names_owner and names_param:
            return "clear", msg
        return "other", f"{type(exc).__name__} not naming owner/param: {msg[:160]}"
    except Exception as exc:  # an error from internals is what we count
        return "other", f"{type(exc).__name__}: {str(exc)[:160]}"
    return "other", "accepted silently"


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CASES))
def test_every_bad_input_is_refused_clearly(case):
    kind, detail = classify(case)
    assert kind == "clear", f"{case.owner}({case.label}): {detail}"


def test_bad_input_counts(capsys):
    """Sweep the whole table once; print the counts (the closing note of issue 11)."""
    results = [(c, *classify(c)) for c in CASES]
    others = [f"{c.owner}({c.label}): {d}" for c, k, d in results if k != "clear"]
    n_clear = sum(k == "clear" for _, k, _ in results)
    with capsys.disabled():
        print(f"\nfuzz of the public API: {len(results)} bad inputs tried, {n_clear} refused "
              f"with a clear message, {len(others)} other")
        for o in others:
            print("  other:", o)
    assert not others


# ------------------------------------------------------------------ the option space
OPTIONS = st.fixed_dictionaries({
    "kind": st.sampled_from(["RU", "FU", "LU"]),
    "primal": st.sampled_from(["reweighted_dsm", "composed", "sampler"]),
    "formulation": st.sampled_from(["lagrangian", "augmented_lagrangian"]),
    "optimizer": st.sampled_from(["simultaneous", "alternating", "alternating_dual_primal",
                                  "extragradient"]),
    "dual_optimizer": st.sampled_from(["sgd", "nupi"]),
    "primal_optimizer": st.sampled_from(["adam", "sgd"]),
    "dual_lr": st.floats(1e-3, 50.0),
    "primal_lr": st.floats(1e-4, 0.5),
    "estimate_every": st.integers(1, 3),
    "dual_update": st.sampled_from(["every", "settled"]),
    "grad_clip": st.one_of(st.none(), st.floats(0.01, 10.0)),
})


def _problem(kind):
    if kind == "RU":
        return KLConstrainedProblem(P0, [Q], bounds=[7.0])
    if kind == "FU":
        return _fu()
    return LikelihoodConstrainedProblem(P0, [Q], bounds=[-9.0])


@settings(max_examples=25, deadline=None)
@given(OPTIONS)
def test_option_combinations_run_or_are_refused_clearly(opts):
    kind = opts.pop("kind")
    prob = _problem(kind)
    kw: dict[str, Any] = {"batch_size": 16, "ess_warning": 0.0, **opts}
    if opts["primal"] == "sampler":
        kw["primal_options"] = {"steps": 4}
    try:
        tr = PrimalDualTrainer(prob, _model(), **kw)
    except (ValueError, TypeError) as exc:  # incompatible combination: must say which
        msg = str(exc)
        assert "PrimalDualTrainer" in msg or "SamplerLagrangian" in msg or "primal" in msg, msg
        assert any(str(v) in msg for v in opts.values() if isinstance(v, str)), msg
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr.fit(2, progress=False)
    lam = tr.multipliers
    assert bool(torch.isfinite(lam).all())
    assert tr.projection.contains(lam) or all(r.skipped for r in tr.history.records)
    assert all(math.isfinite(v) for v in lam.tolist())


def test_the_table_covers_every_trainer_parameter():
    import inspect

    params = set(inspect.signature(PrimalDualTrainer.__init__).parameters) - {"self"}
    covered = {c.param for c in CASES if c.owner == "PrimalDualTrainer"}
    missing = params - covered - {"pretrained_data"}  # a sampler: any callable is accepted
    assert not missing, missing


@pytest.mark.parametrize("value", ["0.01", "1e-3"])
def test_numeric_strings_are_not_coerced(value):
    with pytest.raises(TypeError, match=r"PrimalDualTrainer: parameter 'primal_lr' .*string"):
        _trainer(primal_lr=value)


def test_learn_accepts_a_single_part_name():
    model = TrainableGaussianMixture.from_mixture(P0, learn="means")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["means"]


def test_weights_that_do_not_sum_to_one_are_renormalised_as_documented():
    g = GaussianMixture([1.0, 3.0], [[0.0], [1.0]], 1.0)
    assert torch.allclose(g.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert "normalised" in (GaussianMixture.__doc__ or "")
