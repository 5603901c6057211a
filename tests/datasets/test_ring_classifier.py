"""The ring classifier log p(c|x) against the exact Bayes posterior of the mixture."""

import pytest
import torch

from dualdiff.datasets.ring import ring_mixture, sample_labelled
from dualdiff.datasets.ring_classifier import (
    ClassLogProbability,
    RingClassifier,
    exact_log_posterior,
    train_ring_classifier,
)


def test_sample_labelled_draws_each_component_with_its_label():
    mix = ring_mixture()
    x, labels = sample_labelled(mix, 40000, torch.Generator().manual_seed(1))
    assert x.shape == (40000, 2) and labels.shape == (40000,) and labels.dtype == torch.long
    for c in (0, 3):
        xc = x[labels == c]
        # 5000 draws per class: the mean's standard error is 0.5/sqrt(5000) ~ 0.007
        torch.testing.assert_close(xc.mean(0), mix.means[c], atol=0.04, rtol=0)
        assert abs(float(xc.var(0).mean()) - 0.25) < 0.02  # std 0.5
    assert abs(float((labels == 5).double().mean()) - 1 / 8) < 0.01


def test_exact_posterior_is_bayes_rule():
    mix = ring_mixture()
    x = torch.randn(7, 2, dtype=torch.float64) * 4
    cov = 0.25 * torch.eye(2, dtype=torch.float64)
    comp = torch.stack(
        [torch.distributions.MultivariateNormal(m, cov).log_prob(x) for m in mix.means], -1
    ) + torch.log(torch.tensor(1 / 8, dtype=torch.float64))
    ref = comp - torch.logsumexp(comp, -1, keepdim=True)
    torch.testing.assert_close(exact_log_posterior(x), ref)


def test_trained_classifier_matches_the_exact_posterior():
    clf = train_ring_classifier()
    x = ring_mixture().sample(4000, generator=torch.Generator().manual_seed(2))
    err = (clf(x) - exact_log_posterior(x)).abs()
    # log p(c|x) reaches -180 nats on the ring; parameter errors of order 1/sqrt(20000) put the
    # fitted log-probabilities within ~1% of it (measured: mean error 0.27 nats at log p ~ -65).
    assert float((err / exact_log_posterior(x).abs().clamp_min(1.0)).mean()) < 0.01
    lp = ClassLogProbability(clf, 0)(x)
    assert lp.shape == (4000,)
    ref = exact_log_posterior(x)[:, 0]
    assert abs(float(lp.mean() - ref.mean())) < 0.02 * abs(float(ref.mean()))


def test_classifier_errors_are_typed():
    with pytest.raises(ValueError, match=r"RingClassifier.forward: parameter 'x' must have "
                       r"shape \(n, 2\), got \(3, 3\)"):
        RingClassifier()(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"train_ring_classifier: parameter 'n_samples' must be "
                       r"an int >= 16, got 3"):
        train_ring_classifier(n_samples=3)
    with pytest.raises(TypeError, match=r"ClassLogProbability: parameter 'classifier' must be "
                       r"callable"):
        ClassLogProbability(3, 0)
    with pytest.raises(ValueError, match=r"class cls=9 is out of range for a classifier of 8"):
        ClassLogProbability(RingClassifier(), 9)(torch.zeros(2, 2))
