"""Samplers follow the model's dtype; data far from the schedule's scale warn (issue 11)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from dualdiff import (
    DataScaleWarning,
    GaussianMixture,
    elbo,
    ode_log_likelihood,
    sample_ode,
    sample_sde,
)
from dualdiff.models import MLPScoreNet, ModuleScoreModel
from dualdiff.models.protocol import model_dtype


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    return ModuleScoreModel(MLPScoreNet(2).to(dtype))


@pytest.mark.parametrize("sampler", [sample_ode, sample_sde])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samplers_follow_the_model_dtype(sampler, dtype):
    kw = {"steps": 5} if sampler is sample_sde else {"method": "euler", "steps": 5}
    x = sampler(_net(dtype), (50, 2), generator=torch.Generator().manual_seed(1), **kw)
    assert x.dtype == dtype and x.shape == (50, 2)
    assert bool(torch.isfinite(x).all())


def test_analytic_models_keep_float64_and_explicit_dtype_wins():
    p = GaussianMixture([1.0], [[0.0, 0.0]], 1.0)
    assert model_dtype(p) == torch.float64  # an analytic mixture states its dtype
    assert sample_ode(p, (10, 2), method="euler", steps=4).dtype == torch.float64
    assert model_dtype(object()) is None
    x = sample_ode(p, (10, 2), method="euler", steps=4, dtype=torch.float32)
    assert x.dtype == torch.float32  # an analytic model takes any floating dtype
    with pytest.raises(TypeError, match=r"sample_ode: parameter 'dtype' is torch.float64 but "
                                        r"the model's parameters are torch.float32"):
        sample_ode(_net(), (10, 2), method="euler", steps=4, dtype=torch.float64)


def test_a_dtype_mismatch_in_an_estimator_is_a_clear_type_error():
    x = torch.randn(8, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"ode_log_likelihood: parameter 'x0' has dtype "
                                        r"torch.float64 but the model's parameters are "
                                        r"torch.float32"):
        ode_log_likelihood(_net(), x)
    with pytest.raises(TypeError, match=r"elbo: parameter 'x0' has dtype"):
        elbo(_net(), x)


def test_data_far_from_the_schedule_scale_warn_and_the_bias_is_real():
    """Variance 1e6 against a unit VP prior: the ODE likelihood of the exact model is biased.

    Reference: the mixture's exact log-density (closed form). The exact score of p is used, so
    the bias is the prior mismatch alone, which the warning names.
    """
    wide = GaussianMixture([1.0], [[0.0, 0.0]], 1e6)
    x = wide.sample(64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DataScaleWarning, match=r"far from the noise schedule's scale"):
        ll = ode_log_likelihood(wide, x, rtol=1e-6, atol=1e-6)
    bias = float((wide.log_prob(x) - ll).mean())
    assert abs(bias) > 10.0  # tens of nats off: the warning is not a false alarm
    with pytest.warns(DataScaleWarning):
        elbo(wide, x, n_t=4)


def test_data_at_the_schedule_scale_do_not_warn_and_are_accurate():
    unit = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], 0.3)
    x = unit.sample(64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataScaleWarning)
        ll = ode_log_likelihood(unit, x, rtol=1e-6, atol=1e-6)
    err = float((unit.log_prob(x) - ll).abs().max())
    assert err < 0.05 and math.isfinite(err)
