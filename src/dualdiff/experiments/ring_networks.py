r"""The ring problems stated with networks only (the demo's problems; the mixture is the referee).

One class-conditional network (:func:`~dualdiff.datasets.load_pretrained_conditional_ring`)
and a small classifier (:func:`~dualdiff.datasets.train_ring_classifier`) state the three
problems of forgetting ring component ``c``:

* RU: ``pretrained = Conditioned(net, None)``, concept ``Conditioned(net, c)``; the log-ratios
  :math:`\log p_0 - \log q = \log p(c) - \log p(c\mid x)` of reweighted denoising score matching
  and of ``estimate_dual`` come from the classifier (the implicit-classifier identity), and the
  concept's log-density in the constraint estimate
  :math:`\mathrm{KL}(p_\theta\|q) = E_{p_\theta}[\log p_\theta - \log q]` from Bayes' rule,
  :math:`\log q(x) = \log\hat p_0(x) + \log p(c\mid x) - \log p(c)` with :math:`\hat p_0` the
  null-class network's probability-flow ODE density (:class:`BayesConcept`). The concept view's
  own ODE log-likelihood is not used there: it is accurate on the concept's support but wrong by
  tens of nats on the other components (measured: +15 to +84 nats on components 2-6 for
  component 0; the network never saw class-0 data there at small noise), which is exactly where
  an RU-unlearned model puts its mass;
* FU: forget examples = draws of component ``c`` inside a training set ``N = |A|/w_c`` (so
  :math:`\lambda_{\max} = |A|/N = w_c`), the retain side the null-class network's samples; the
  levels are on the forget set's log-likelihood drop :math:`E_A[\log\hat p_0 - \log p_\theta]`;
* LU: :math:`\ell(x) = \log p(c\mid x)`, the classifier's log-probability
  (:class:`~dualdiff.datasets.ClassLogProbability`).

Pretrained samples are draws of the null-class network's ODE sampler (:func:`pretrained_pool`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import Conditioned, sample_ode
from ..datasets import (
    ClassLogProbability,
    RingClassifier,
    load_pretrained_conditional_ring,
    ring_mixture,
    train_ring_classifier,
)
from ..engine.dual_update import DualUpdateRule, EveryEstimate, SettledPrimal
from ..models import ModuleScoreModel
from ..problems.contract import DensityEstimator, UnlearningProblem
from ..problems.model_level import (
    ModelForwardKLProblem,
    ModelLikelihoodProblem,
    ModelReverseKLProblem,
    classifier_log_ratio,
)

__all__ = [
    "BayesConcept",
    "RingNetworks",
    "make_network_problem",
    "pretrained_pool",
    "warm_start_rule",
]

#: ODE tolerances of the frozen networks' samples and log-likelihoods.
ODE_TOL = 1e-4


class BayesConcept(Conditioned):
    r"""The class-``c`` view of a conditional network, with its log-density by Bayes' rule.

    .. math::
        \log q(x) = \log\hat p_0(x) + \log p(c\mid x) - \log p(c),

    :math:`\hat p_0` the null-class view's probability-flow ODE density (``density``),
    :math:`p(c\mid x)` a classifier. ``score``/``eps`` are the class-``c`` network's (the
    :class:`~dualdiff.models.Conditioned` view); ``log_prob`` is what a
    :class:`~dualdiff.problems.contract.DensityEstimator` uses for this model.

    Parameters
    ----------
    model
        The conditional score model.
    cond
        The class ``c``.
    classifier
        ``classifier(x) -> (n, K)`` log-probabilities.
    log_prior
        :math:`\log p(c)`.
    density
        How :math:`\log\hat p_0` is computed (default ODE, tolerances :data:`ODE_TOL`).
    """

    def __init__(
        self,
        model: Any,
        cond: int,
        classifier: Any,
        log_prior: float,
        density: DensityEstimator | None = None,
    ) -> None:
        super().__init__(model, cond)
        self.class_log_prob = ClassLogProbability(classifier, cond)
        self.log_prior = float(log_prior)
        self.null = Conditioned(model, None)
        self.density = density if density is not None else _density()

    def __repr__(self) -> str:
        return f"BayesConcept({self.model!r}, cond={self.cond!r})"

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log q(x)`, shape ``(n,)`` float64, for ``x`` of shape ``(n, d)``."""
        lp0 = self.density.log_prob(self.null, x)
        with torch.no_grad():
            lc = self.class_log_prob(x.to(torch.float64)).to(torch.float64)
        return lp0 + lc - self.log_prior


class _WarmEvery(EveryEstimate):
    def _decide(self, estimate: Any, change: float | None) -> tuple[bool, str]:
        if self.previous is None:
            return False, "warm_start"
        return super()._decide(estimate, change)


class _WarmSettled(SettledPrimal):
    def _decide(self, estimate: Any, change: float | None) -> tuple[bool, str]:
        if self.previous is None:
            return False, "warm_start"
        return super()._decide(estimate, change)


def warm_start_rule(name: str, **options: Any) -> DualUpdateRule:
    r"""The dual-update rule ``name`` (``"every"``/``"settled"``) without its first dual step.

    After a warm start at :math:`\hat\lambda` (``estimate_dual``) the first constraint
    estimate is of the *pretrained* model, which has not moved towards
    :math:`p_{\hat\lambda}` yet; a dual step on it throws the multipliers away from the
    estimate (measured on the ring, RU: 0.0147 -> 0.0228 with the demo's dual step). These
    rules record that estimate and step from the second one on (``reason == "warm_start"``).
    ``options`` go to :class:`~dualdiff.engine.SettledPrimal`.
    """
    if name == "every":
        return _WarmEvery()
    if name == "settled":
        return _WarmSettled(**options)
    raise ValueError(
        f"warm_start_rule: unknown name={name!r}; allowed values are 'every', 'settled'"
    )


def _density() -> DensityEstimator:
    tol = {"rtol": ODE_TOL, "atol": ODE_TOL}
    return DensityEstimator(ode_kwargs=dict(tol), sampler_kwargs=dict(tol))


@functools.lru_cache(maxsize=4)
def pretrained_pool(n: int = 8192, seed: int = 0) -> torch.Tensor:
    """``n`` draws of the shipped null-class network's ODE sampler, ``(n, 2)`` float64 (cached)."""
    net = load_pretrained_conditional_ring()
    with torch.no_grad():
        x = sample_ode(
            Conditioned(net, None),
            (n, 2),
            rtol=ODE_TOL,
            atol=ODE_TOL,
            dtype=torch.float32,
            generator=torch.Generator().manual_seed(seed),
        )
    return x.detach().to(torch.float64)


@dataclass
class RingNetworks:
    r"""The networks that state the ring problems.

    Attributes
    ----------
    model
        The shipped conditional network (frozen), a :class:`~dualdiff.models.ModuleScoreModel`.
    classifier
        The ring classifier :math:`\log p(c\mid x)`.
    forget
        The forgotten class ``c``.
    pool
        Pretrained samples (the null-class network's), ``(N, 2)`` float64.
    """

    model: ModuleScoreModel
    classifier: RingClassifier
    forget: int
    pool: torch.Tensor

    @classmethod
    def load(cls, forget: int = 0, pool_size: int = 8192, seed: int = 0) -> RingNetworks:
        """Shipped network, classifier trained with ``seed``, pool of ``pool_size`` draws."""
        model = load_pretrained_conditional_ring()
        for p in model.parameters():
            p.requires_grad_(False)
        clf = train_ring_classifier(seed=seed)
        return cls(model, clf, forget, pretrained_pool(pool_size, seed))

    @property
    def pretrained(self) -> Conditioned:
        """The null-class view, the pretrained model :math:`p_0`."""
        return Conditioned(self.model, None)

    @property
    def log_prior(self) -> float:
        r""":math:`\log p(c)` of the forgotten class (the classes are equally likely)."""
        return math.log(1.0 / self.classifier.n_classes)

    def concept(self) -> BayesConcept:
        """The class-``c`` view (with its Bayes log-density, see :class:`BayesConcept`)."""
        return BayesConcept(self.model, self.forget, self.classifier, self.log_prior)

    def forget_set(self, n: int = 1024, seed: int = 1) -> torch.Tensor:
        """``n`` draws of component ``c`` of the ring, ``(n, 2)`` float64 (the FU forget set)."""
        q = ring_mixture().component(self.forget)
        return q.sample(n, generator=torch.Generator().manual_seed(seed))

    def trainable(self) -> Conditioned:
        """A trainable copy of the network, viewed at its null class (fine-tuned as ``p``)."""
        net = load_pretrained_conditional_ring()
        for p in net.parameters():
            p.requires_grad_(True)
        return Conditioned(net, None)


def make_network_problem(
    kind: str, bounds: list[float], nets: RingNetworks, *, forget_size: int = 1024
) -> UnlearningProblem:
    r"""The ring problem of ``kind`` stated with networks only, at levels ``bounds``.

    ``bounds`` are the levels of :func:`~dualdiff.experiments.ring.make_problem` (the referee):
    RU and LU use them as they are; FU's model-level levels are on the forget set's
    log-likelihood drop, :math:`b - \mathrm{KL}(q\|p_0)`, so the caller passes the offset
    ``delta`` there. The classes are those that
    :class:`~dualdiff.KLConstrainedProblem` (``direction="reverse"``/``"forward"``) and
    :class:`~dualdiff.LikelihoodConstrainedProblem` build when ``pretrained`` is a score
    model; they are named here for the type checker.
    """
    density = _density()
    if kind == "RU":
        log_ratio = classifier_log_ratio(
            lambda x: nets.classifier(x.to(torch.float64))[:, nets.forget : nets.forget + 1].T,
            [nets.log_prior],
        )
        return ModelReverseKLProblem(
            nets.pretrained, [nets.concept()], bounds=bounds,
            log_ratio=log_ratio, pretrained_data=nets.pool, density=density,
        )
    if kind == "LU":
        return ModelLikelihoodProblem(
            nets.pretrained, [ClassLogProbability(nets.classifier, nets.forget)], bounds=bounds,
            pretrained_data=nets.pool, density=density,
        )
    forget = nets.forget_set(forget_size)
    size = round(forget_size / math.exp(nets.log_prior))
    return ModelForwardKLProblem(
        nets.pretrained, [forget], bounds=bounds,
        pretrained_data=nets.pool, training_set_size=size, density=density,
    )

