"""``primal_options={"time_sampling": ...}``: the training-time density of the denoising forms.

References: the log-SNR is computed here from the schedule's own alpha and sigma (numpy), and
the uniformity of times or log-SNRs is judged by scipy's Kolmogorov-Smirnov test; the learned
signed mixture is checked against its closed-form weight.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from dualdiff import GaussianMixture, KLConstrainedProblem
from dualdiff.baselines import FixedWeightTrainer, train_fixed_weight
from dualdiff.engine import (
    EngineConfigurationError,
    PrimalDualTrainer,
    TrainableGaussianMixture,
    UnknownOptionError,
)

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)
FU = KLConstrainedProblem(P0, [P0.component(1)], bounds=[1.0], direction="forward")
RU = KLConstrainedProblem(P0, [P0.component(1)], bounds=[7.0])
N = 4000


def _model(**kw):
    return TrainableGaussianMixture.from_mixture(P0, **kw)


def _unit(model, t: torch.Tensor, scale: str) -> np.ndarray:
    """Map times to [0, 1]: linearly in t, or linearly in the log-SNR (1 at t_min)."""
    sched = model.schedule
    lo, hi = float(sched.t_min), float(sched.t_max)
    tt = t.numpy()
    if scale == "time":
        return (tt - lo) / (hi - lo)

    def lsnr(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        a = torch.as_tensor(sched.alpha(v), dtype=torch.float64).numpy()
        s = torch.as_tensor(sched.sigma(v), dtype=torch.float64).numpy()
        return np.log(a**2 / s**2)

    l_hi, l_lo = lsnr(torch.tensor(lo)), lsnr(torch.tensor(hi))
    return (lsnr(t) - l_lo) / (l_hi - l_lo)


@pytest.mark.parametrize("primal", ["reweighted_dsm", "composed", "siss"])
def test_log_snr_times_are_uniform_in_the_log_snr_and_uniform_times_are_not(primal):
    prob = FU if primal != "reweighted_dsm" else RU
    model = _model()
    trainers = {
        how: FixedWeightTrainer(prob, model, 0.1, primal=primal, seed=0,
                                primal_options={"time_sampling": how})
        for how in ("uniform", "log_snr")
    }
    for how, tr in trainers.items():
        batch = tr.form.sample_batch(model, N, torch.Generator().manual_seed(5))
        times = [batch.t] + [tq for _, tq, _ in batch.unlearn]
        for t in times:
            assert t.dtype == torch.float64 and t.shape == (N,)
            right = "log_snr" if how == "log_snr" else "time"
            wrong = "time" if how == "log_snr" else "log_snr"
            assert stats.kstest(_unit(model, t, right), "uniform").pvalue > 1e-3
            assert stats.kstest(_unit(model, t, wrong), "uniform").pvalue < 1e-6


def test_the_default_is_uniform_and_left_out_of_the_config():
    model = _model()
    tr = PrimalDualTrainer(FU, model, primal="composed", seed=0)
    assert tr.form.time_sampling == "uniform"
    assert "primal_options" not in tr.config()
    same = PrimalDualTrainer(FU, _model(), primal="composed", seed=0,
                             primal_options={"time_sampling": "uniform"})
    assert same.config() == tr.config()
    ls = PrimalDualTrainer(FU, _model(), primal="composed", seed=0,
                           primal_options={"time_sampling": "log_snr"})
    assert ls.config()["primal_options"] == {"time_sampling": "log_snr"}
    siss = FixedWeightTrainer(FU, _model(), 0.1, primal="siss",
                              primal_options={"time_sampling": "log_snr"})
    assert siss.config()["primal_options"] == {
        "kappa": 0.5, "scaling_norm": None, "time_sampling": "log_snr"}


def test_bad_time_sampling_is_refused_with_its_name_and_the_choices():
    with pytest.raises(UnknownOptionError, match=r"PrimalDualTrainer: parameter 'primal_options'.*"
                       r"time_sampling='cosine'.*'uniform', 'log_snr'"):
        PrimalDualTrainer(FU, _model(), primal="composed",
                          primal_options={"time_sampling": "cosine"})
    with pytest.raises(UnknownOptionError, match="time_sampling=1"):
        PrimalDualTrainer(FU, _model(), primal="composed", primal_options={"time_sampling": 1})
    # the sampler form draws no training times: the option is not one of its
    lu = KLConstrainedProblem(P0, [P0.component(1)], bounds=[7.0])
    with pytest.raises(TypeError, match="not accepted by primal='sampler'"):
        PrimalDualTrainer(lu, _model(), primal="sampler",
                          primal_options={"steps": 4, "time_sampling": "log_snr"})


def test_a_checkpoint_refuses_another_time_sampling(tmp_path):
    opts = {"primal": "composed", "batch_size": 32, "seed": 1}
    a = FixedWeightTrainer(FU, _model(), 0.1, primal_options={"time_sampling": "log_snr"},
                           **opts)
    a.fit(2, progress=False)
    a.save_checkpoint(tmp_path / "c.pt")
    b = FixedWeightTrainer(FU, _model(), 0.1, **opts)
    with pytest.raises(EngineConfigurationError, match="differently configured"):
        b.load_checkpoint(tmp_path / "c.pt")
    c = FixedWeightTrainer(FU, _model(), 0.1, primal_options={"time_sampling": "log_snr"},
                           **opts)
    c.load_checkpoint(tmp_path / "c.pt")
    a.fit(2, progress=False)
    c.fit(2, progress=False)
    for p, q in zip(a.model.parameters(), c.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("primal", ["composed", "reweighted_dsm"])
def test_likelihood_weighted_training_still_learns_the_signed_mixture(primal):
    """FU at lam = 0.2: the forget component's weight (0.3 - 0.2) / 0.8 = 0.125 either way.

    The weighting over times does not move the minimiser of an exact form; same budget and
    tolerance as the uniform-time check of test_siss.
    """
    model = _model(learn=("weights",))
    train_fixed_weight(FU, model, 0.2, 300, primal=primal, primal_lr=0.05, batch_size=512,
                       seed=0, estimate_every=100,
                       primal_options={"time_sampling": "log_snr"})
    assert float(model.weights[1].detach()) == pytest.approx(0.125, abs=0.03)
