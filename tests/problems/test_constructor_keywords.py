"""The dispatching constructors: model-level keywords refused, by name, on a GaussianMixture."""

import pytest

from dualdiff import GaussianMixture, KLConstrainedProblem, LikelihoodConstrainedProblem


def _p0() -> GaussianMixture:
    return GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], 1.0)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_kl_problem_refuses_model_level_keywords_on_a_mixture(direction: str) -> None:
    p0 = _p0()
    with pytest.raises(TypeError, match=r"\['log_ratio', 'pool_size'\].*score model"):
        KLConstrainedProblem(p0, [p0.component(0)], [1.0], direction=direction,  # type: ignore[call-overload]
                             log_ratio=lambda x: x, pool_size=10)


def test_likelihood_problem_refuses_model_level_keywords_on_a_mixture() -> None:
    p0 = _p0()
    with pytest.raises(TypeError, match=r"\['pretrained_data'\].*score model"):
        LikelihoodConstrainedProblem(p0, [p0.component(0)], [-5.0],  # type: ignore[call-overload]
                                     pretrained_data=p0.sample(8))


def test_mixture_keywords_still_build_the_closed_form_problem() -> None:
    p0 = _p0()
    prob = KLConstrainedProblem(p0, [p0.component(0)], [1.0], integration="grid")
    assert prob.has_closed_form and prob.kind == "RU"
