"""Bad input raises a typed error whose message names the parameter, the value and what is allowed.

Each case lists the expected exception class and regular expressions that must all occur in
the message: the parameter (or object) at fault, the offending value, and the rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

from dualdiff import (
    DualdiffError,
    DualDomainError,
    GaussianMixture,
    GridQuadrature,
    IllPosedProblemError,
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
    MonteCarlo,
    NonFiniteError,
)

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
Q = P0.component(1)  # lam_max = 0.3 for FU
Q2D = GaussianMixture([1.0], [[0.0, 0.0]], 1.0)
P3D = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], 1.0)
Q3D = GaussianMixture([1.0], [[1.0, 0.0, 0.0]], 1.0)


def _ru() -> Any:
    return KLConstrainedProblem(P0, [Q], bounds=[6.0], direction="reverse")


def _ru2() -> Any:
    return KLConstrainedProblem(P0, [Q, P0.component(0)], bounds=[6.0, 1.0], direction="reverse")


def _fu() -> Any:
    return KLConstrainedProblem(P0, [Q], bounds=[1.5], direction="forward")


def _lu() -> Any:
    return LikelihoodConstrainedProblem(P0, [Q], bounds=[-8.0])


def _classifier_log_ratio(fn: Any, log_prior: Any) -> Any:
    from dualdiff.problems import classifier_log_ratio

    return classifier_log_ratio(fn, log_prior)


Case = tuple[str, Callable[[], Any], type[BaseException], list[str]]

CONSTRUCTION: list[Case] = [
    (
        "negative-weights",
        lambda: GaussianMixture([-0.1, 1.1], [[0.0], [1.0]], 1.0),
        ValueError,
        ["'weights'", r"-0\.1", "non-negative"],
    ),
    (
        "zero-sum-weights",
        lambda: GaussianMixture([0.0, 0.0], [[0.0], [1.0]], 1.0),
        ValueError,
        ["'weights'", r"sum 0\.0", "positive sum"],
    ),
    (
        "non-pd-covariance",
        lambda: GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]),
        ValueError,
        ["'covariances'", r"-1\.0", "positive definite"],
    ),
    (
        "negative-scalar-variance",
        lambda: GaussianMixture([1.0], [[0.0]], -1.0),
        ValueError,
        ["'covariances'", r"-1\.0", "> 0"],
    ),
    (
        "negative-diagonal-variance",
        lambda: GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, -1.0]]),
        ValueError,
        ["'covariances'", r"-1\.0", "positive"],
    ),
    (
        "means-weights-shape-mismatch",
        lambda: GaussianMixture([0.5, 0.5], [[0.0]], 1.0),
        ValueError,
        ["'means'", r"\(1, 1\)", r"\(2, d\)"],
    ),
    (
        "covariance-shape-mismatch",
        lambda: GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[1.0]]),
        ValueError,
        ["'covariances'", r"\(1, 1\)", r"\(2, 1, 1\)"],
    ),
    (
        "nan-weights",
        lambda: GaussianMixture([math.nan, 1.0], [[0.0], [1.0]], 1.0),
        NonFiniteError,
        ["'weights'", "NaN or inf", "must be finite"],
    ),
    (
        "inf-means",
        lambda: GaussianMixture([1.0], [[math.inf]], 1.0),
        NonFiniteError,
        ["'means'", "NaN or inf", "must be finite"],
    ),
    (
        "nan-covariances",
        lambda: GaussianMixture([1.0], [[0.0]], math.nan),
        NonFiniteError,
        ["'covariances'", "NaN or inf", "must be finite"],
    ),
    (
        "dimension-mismatch-KL",
        lambda: KLConstrainedProblem(P0, [Q2D], bounds=[1.0]),
        ValueError,
        ["dimension mismatch", "d=1", r"unlearn\[0\] has d=2", "same space"],
    ),
    (
        "dimension-mismatch-LU",
        lambda: LikelihoodConstrainedProblem(P0, [Q2D], bounds=[1.0]),
        ValueError,
        ["dimension mismatch", r"unlearn\[0\] has d=2"],
    ),
    (
        "wrong-number-of-bounds-KL",
        lambda: KLConstrainedProblem(P0, [Q], bounds=[1.0, 2.0]),
        ValueError,
        ["'bounds'", r"\[1\.0, 2\.0\]", "one level per unlearning distribution", "m=1"],
    ),
    (
        "wrong-number-of-bounds-LU",
        lambda: LikelihoodConstrainedProblem(P0, [Q, Q], bounds=[1.0]),
        ValueError,
        ["'bounds'", r"\[1\.0\]", "m=2"],
    ),
    (
        "unknown-direction",
        lambda: KLConstrainedProblem(P0, [Q], bounds=[1.0], direction="sideways"),
        ValueError,
        ["direction", "'sideways'", "'reverse'", "'forward'"],
    ),
    (
        "unknown-likelihood",
        lambda: LikelihoodConstrainedProblem(P0, [Q], bounds=[1.0], likelihood="logit"),
        ValueError,
        ["likelihood", "'logit'", "'log'", "'density'"],
    ),
    (
        "unknown-expectation",
        lambda: LikelihoodConstrainedProblem(P0, [Q], bounds=[1.0], expectation="data"),
        ValueError,
        ["expectation", "'data'", "'model'"],
    ),
    (
        "unknown-integration",
        lambda: KLConstrainedProblem(P0, [Q], bounds=[1.0], integration="simpson"),
        ValueError,
        ["integration", "'simpson'", "'grid'", "'monte_carlo'"],
    ),
    (
        "nan-bounds",
        lambda: KLConstrainedProblem(P0, [Q], bounds=[math.nan]),
        NonFiniteError,
        ["'bounds'", "NaN or inf", "must be finite"],
    ),
    (
        "inf-bounds-LU",
        lambda: LikelihoodConstrainedProblem(P0, [Q], bounds=[-math.inf]),
        NonFiniteError,
        ["'bounds'", "NaN or inf", "must be finite"],
    ),
    (
        "negative-KL-bound-reverse",
        lambda: KLConstrainedProblem(P0, [Q], bounds=[-0.5]),
        ValueError,
        ["'bounds'", r"-0\.5", ">= 0"],
    ),
    (
        "negative-KL-bound-forward",
        lambda: KLConstrainedProblem(P0, [Q], bounds=[-0.5], direction="forward"),
        ValueError,
        ["'bounds'", r"-0\.5", ">= 0"],
    ),
    (
        "grid-quadrature-d3-instance",
        lambda: KLConstrainedProblem(P3D, [Q3D], bounds=[1.0], integration=GridQuadrature()),
        ValueError,
        ["GridQuadrature", "d=3", "d <= 2", "MonteCarlo"],
    ),
    (
        "grid-quadrature-d3-string",
        lambda: LikelihoodConstrainedProblem(P3D, [Q3D], bounds=[1.0], integration="grid"),
        ValueError,
        ["'grid'", "d=3", "d <= 2", "monte_carlo"],
    ),
    (
        "grid-quadrature-d3-prepare",
        lambda: GridQuadrature().prepare([P3D]),
        ValueError,
        ["GridQuadrature", "d=3", "d <= 2"],
    ),
    (
        "grid-quadrature-points",
        lambda: GridQuadrature(points_per_dim=3),
        ValueError,
        ["'points_per_dim'", "3", ">= 5"],
    ),
    (
        "monte-carlo-n",
        lambda: MonteCarlo(n=10),
        ValueError,
        ["'n'", "10", ">= 100"],
    ),
    (
        "empty-unlearn",
        lambda: KLConstrainedProblem(P0, [], bounds=[]),
        ValueError,
        ["'unlearn'", r"\[\]", "non-empty"],
    ),
    (
        "pretrained-not-a-mixture",
        lambda: KLConstrainedProblem("p0", [Q], bounds=[1.0]),
        TypeError,
        ["'pretrained'", "str", "GaussianMixture"],
    ),
    (
        "log-prior-a-probability",  # 0.1 where log(0.1) was meant
        lambda: _classifier_log_ratio(lambda x: x[None], [0.1]),
        ValueError,
        ["'log_prior'", r"\[0\.1\]", "<= 0", r"math\.log"],
    ),
    (
        "log-prior-nan",
        lambda: _classifier_log_ratio(lambda x: x[None], [-1.0, float("nan")]),
        ValueError,
        ["'log_prior'", "nan", "finite"],
    ),
    (
        "log-prior-empty",
        lambda: _classifier_log_ratio(lambda x: x[None], []),
        ValueError,
        ["'log_prior'", r"\[\]"],
    ),
]


def _check(fn: Callable[[], Any], exc: type[BaseException], patterns: list[str]) -> None:
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for pat in patterns:
        assert re.search(pat, msg), f"{pat!r} not in message: {msg}"


@pytest.mark.parametrize(
    ("fn", "exc", "patterns"), [c[1:] for c in CONSTRUCTION], ids=[c[0] for c in CONSTRUCTION]
)
def test_construction_errors(
    fn: Callable[[], Any], exc: type[BaseException], patterns: list[str]
) -> None:
    _check(fn, exc, patterns)


def test_ill_posed_lu_reading_is_refused_with_an_explanation() -> None:
    with pytest.raises(IllPosedProblemError) as info:
        LikelihoodConstrainedProblem(P0, [Q], bounds=[1.0], expectation="unlearn")
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DualdiffError)
    assert "expectation='unlearn'" in msg
    assert "ill-posed" in msg
    assert re.search(r"unbounded below|-inf", msg)  # why: the dual is -inf for every lam > 0
    assert "expectation='model'" in msg  # what to do instead
    assert "forward" in msg  # ... or the forward-KL problem (FU)


METHODS = ["dual", "dual_gradient", "dual_hessian", "target", "certificate"]


def _call(prob: Any, method: str, lam: Any) -> Any:
    if method == "certificate":
        return prob.certificate(P0, lam)
    return getattr(prob, method)(lam)


MULTIPLIER_CASES: list[tuple[str, Callable[[], Any], Any, type[BaseException], list[str]]] = [
    ("negative", _ru, [-0.1], DualDomainError, [r"'lam'=\[-0\.1\]", ">= 0", "dual domain"]),
    ("negative-LU", _lu, [-1.0], DualDomainError, [r"'lam'=\[-1\.0\]", ">= 0"]),
    (
        "RU-sum-at-least-one",
        _ru2,
        [0.6, 0.5],
        DualDomainError,
        [r"'lam'=\[0\.6, 0\.5\]", r"sum\(lam\) = 1\.1", "< 1"],
    ),
    ("RU-sum-equal-one", _ru, [1.0], DualDomainError, [r"'lam'=\[1\.0\]", "must be < 1"]),
    (
        "FU-above-lam-max",
        _fu,
        [0.35],
        DualDomainError,
        [r"'lam'=\[0\.35\]", "lam_max", r"0\.3\b"],
    ),
    (
        "LU-log-tilt-not-normalisable",
        _lu,
        [1.5],
        DualDomainError,
        [r"'lam'=\[1\.5\]", "not normalisable"],
    ),
    ("nan", _lu, [math.nan], NonFiniteError, ["'lam'", "NaN or inf", "must be finite"]),
    ("inf", _fu, [math.inf], NonFiniteError, ["'lam'", "NaN or inf", "must be finite"]),
    (
        "wrong-length",
        _lu,
        [0.1, 0.2],
        ValueError,
        ["'lam'", r"\[0\.1, 0\.2\]", "one multiplier per constraint", "m=1"],
    ),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("make", "lam", "exc", "patterns"),
    [c[1:] for c in MULTIPLIER_CASES],
    ids=[c[0] for c in MULTIPLIER_CASES],
)
def test_multipliers_outside_the_domain(
    method: str, make: Callable[[], Any], lam: Any, exc: type[BaseException], patterns: list[str]
) -> None:
    prob = make()
    _check(lambda: _call(prob, method, lam), exc, [re.escape(method), *patterns])
    assert not prob.in_domain(lam)


def test_multiplier_errors_are_value_errors() -> None:
    """Typed errors stay catchable as ValueError (the standard library's contract)."""
    for exc in (DualDomainError, NonFiniteError, IllPosedProblemError):
        assert issubclass(exc, ValueError) and issubclass(exc, DualdiffError)


def test_certificate_candidate_without_log_prob() -> None:
    _check(
        lambda: _ru().certificate("not a model", [0.1]),
        TypeError,
        ["'candidate'", "str", "log_prob"],
    )


def test_certificate_candidate_with_wrong_output_shape() -> None:
    class Bad:
        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 2, dtype=torch.float64)

    _check(lambda: _ru().certificate(Bad(), [0.1]), ValueError, ["log_prob", r"\(N,\)"])


def test_certificate_candidate_returning_nan() -> None:
    class Nan:
        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full(x.shape[:-1], math.nan, dtype=torch.float64)

    _check(lambda: _fu().certificate(Nan(), [0.1]), NonFiniteError, ["log_prob", "NaN"])
