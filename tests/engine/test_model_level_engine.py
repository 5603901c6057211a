"""PrimalDualTrainer on problems stated with networks, with image-shaped events (n, C, H, W).

Smoke-and-contract checks (a few steps each on a tiny conv net): every primal form and the
estimator run on (n, 1, 4, 4) tensors, multipliers stay in the domain, the ESS comes from
estimated log-ratios, and ``init_multipliers="estimate"`` warm-starts lambda.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dualdiff import (
    KLConstrainedProblem,
    LikelihoodConstrainedProblem,
    ModuleScoreModel,
    PrimalDualTrainer,
)
from dualdiff.engine import ConstraintEstimator

EVENT = (1, 4, 4)


class TinyConv(nn.Module):
    """Noise predictor on (n, 1, 4, 4) images with a time input."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 4, 4)
        return self.conv2(torch.tanh(self.conv1(torch.cat([x, tt], 1))))


def _net(seed: int) -> ModuleScoreModel:
    return ModuleScoreModel(TinyConv(seed).double(), prediction="eps")


def _data(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return shift + torch.randn(n, *EVENT, dtype=torch.float64, generator=g)


def _ell(x: torch.Tensor) -> torch.Tensor:
    """A differentiable 'likelihood' of images: the mean pixel value, (n, *event) -> (n,)."""
    return x.flatten(1).mean(1)


def _estimator(prob: object) -> ConstraintEstimator:
    return ConstraintEstimator(
        prob, method="elbo", n_samples=8, sampler_kwargs={"method": "euler", "steps": 8}
    )


def _check(trainer: PrimalDualTrainer, steps: int) -> None:
    hist = trainer.fit(steps, progress=False)
    assert len(hist.records) == steps
    assert all(r.skipped is None for r in hist.records), [r.skipped for r in hist.records]
    lam = trainer.multipliers
    assert bool(torch.isfinite(lam).all()) and bool((lam >= 0).all())
    assert trainer.problem.in_domain(lam)


@pytest.mark.parametrize("primal", ["reweighted_dsm", "composed", "sampler"])
def test_lu_on_images(primal: str) -> None:
    p0 = _net(0)
    prob = LikelihoodConstrainedProblem(p0, [_ell], bounds=[-0.1], pretrained_data=_data(64, 1))
    assert prob.event_shape == EVENT
    model = copy.deepcopy(p0)
    trainer = PrimalDualTrainer(
        prob, model, primal=primal, batch_size=8, estimator=_estimator(prob), dual_lr=1.0,
        primal_options={"steps": 4} if primal == "sampler" else None, seed=0,
    )
    _check(trainer, 3)
    if primal == "reweighted_dsm":
        assert trainer.history.population_ess  # from the likelihood values on the data


def test_lu_init_multipliers_estimate() -> None:
    p0 = _net(0)
    data = _data(256, 1)
    prob = LikelihoodConstrainedProblem(p0, [_ell], bounds=[-0.1], pretrained_data=data)
    est = prob.estimate_dual()
    assert float(est.multipliers[0]) > 0
    trainer = PrimalDualTrainer(
        prob, copy.deepcopy(p0), init_multipliers="estimate", estimator=_estimator(prob),
        batch_size=8,
    )
    assert float(trainer.multipliers[0]) == pytest.approx(float(est.multipliers[0]), rel=1e-9)
    trainer2 = PrimalDualTrainer(
        prob, copy.deepcopy(p0), init_multipliers=est, estimator=_estimator(prob), batch_size=8
    )
    assert torch.equal(trainer2.multipliers, trainer.multipliers)


def test_fu_signed_loss_on_images() -> None:
    p0 = _net(0)
    retain = _data(56, 2)
    forget = _data(8, 3, shift=1.5)
    prob = KLConstrainedProblem(  # p0's samples: the whole training set, forget set included
        p0, [forget], bounds=[0.5], direction="forward",
        pretrained_data=torch.cat([retain, forget]), training_set_size=64,
    )
    assert prob.lam_max.tolist() == pytest.approx([0.125])
    trainer = PrimalDualTrainer(
        prob, copy.deepcopy(p0), primal="composed", batch_size=8, estimator=_estimator(prob),
        dual_lr=10.0, seed=0,
    )
    _check(trainer, 3)
    assert float(trainer.multipliers[0]) <= 0.125
    est = trainer.last_estimate
    assert est is not None and est.method == "elbo" and est.objective is not None


@pytest.mark.parametrize("primal", ["composed", "sampler", "reweighted_dsm"])
def test_ru_on_images(primal: str) -> None:
    p0, q = _net(0), _net(1)
    prob = KLConstrainedProblem(
        p0, [q], bounds=[5.0], pretrained_data=_data(32, 4),
        log_ratio=lambda x: (0.1 * x.flatten(1).sum(1))[None],  # a stand-in implicit classifier
    )
    trainer = PrimalDualTrainer(
        prob, copy.deepcopy(p0), primal=primal, batch_size=8, estimator=_estimator(prob),
        primal_options={"steps": 4} if primal == "sampler" else None, dual_lr=0.05, seed=0,
    )
    _check(trainer, 2)
    assert float(trainer.multipliers.sum()) < 1.0
    if primal == "reweighted_dsm":
        assert trainer.history.population_ess


def test_fu_has_no_sampler_form() -> None:
    from dualdiff import EngineConfigurationError

    p0 = _net(0)
    prob = KLConstrainedProblem(
        p0, [_data(8, 3)], bounds=[0.5], direction="forward", pretrained_data=_data(56, 2),
        training_set_size=64,
    )
    with pytest.raises(EngineConfigurationError, match=r"does not apply to ModelForwardKLProblem"):
        PrimalDualTrainer(prob, copy.deepcopy(p0), primal="sampler")
    with pytest.raises(TypeError, match=r"reweighted DSM needs the density ratio"):
        PrimalDualTrainer(prob, copy.deepcopy(p0), primal="reweighted_dsm", batch_size=8,
                          estimator=_estimator(prob)).fit(1, progress=False)


# the untrained random net's default-sampler samples are far from the schedule's scale
@pytest.mark.filterwarnings("ignore::dualdiff.DataScaleWarning")
def test_trainer_accepts_the_elbo_estimator_by_name() -> None:
    # docs/own_model.rst passes estimator="elbo": the trainer builds the same estimator as
    # ConstraintEstimator(method="elbo") and its estimates say so
    p0 = _net(0)
    prob = LikelihoodConstrainedProblem(p0, [_ell], bounds=[-0.1], pretrained_data=_data(64, 1))
    trainer = PrimalDualTrainer(prob, copy.deepcopy(p0), estimator="elbo", estimate_samples=4,
                                batch_size=8, seed=0)
    assert isinstance(trainer.estimator, ConstraintEstimator)
    assert trainer.estimator.method == "elbo" and trainer.estimator.n_samples == 4
    trainer.step()
    est = trainer.last_estimate
    assert est is not None and est.method == "elbo" and est.n == 4
    with pytest.raises(ValueError, match=r"estimator='ebo'.*'auto', 'exact', 'ode', 'elbo'"):
        PrimalDualTrainer(prob, copy.deepcopy(p0), estimator="ebo")
