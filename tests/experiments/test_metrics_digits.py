"""Metrics on the real digits DDPM through the diffusers adapter (checks that can fail)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from dualdiff.datasets import load_digits_split
from dualdiff.datasets.digits_model import load_digits_score_model
from dualdiff.experiments.metrics import deviation, elbo_nll, nll


@pytest.fixture(scope="module")
def model():
    return load_digits_score_model()


@pytest.fixture(scope="module")
def heldout():
    return load_digits_split()


def test_elbo_prefers_the_true_class_of_held_out_digits(model, heldout):
    # The conditional model must explain a digit better under its own label than under another
    # (the implicit classifier); common random numbers (same seed) for the two conditions.
    x = heldout.heldout_images[heldout.heldout_labels == 3][:16]
    right = elbo_nll(model, x, cond=3, n_t=8, generator=torch.Generator().manual_seed(0))
    wrong = elbo_nll(model, x, cond=5, n_t=8, generator=torch.Generator().manual_seed(0))
    null = elbo_nll(model, x, cond=None, n_t=8, generator=torch.Generator().manual_seed(0))
    assert right.nats.value < null.nats.value < wrong.nats.value
    assert right.nats.n == 16


@pytest.mark.slow
def test_held_out_digits_are_likelier_than_their_pixel_shuffles(model, heldout):
    x = heldout.heldout_images[:12]
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = x.reshape(12, 64)[:, perm].reshape(x.shape)
    gen = torch.Generator().manual_seed(2)
    real = nll(model, x, rtol=1e-3, atol=1e-3, generator=gen)
    fake = nll(model, shuffled, rtol=1e-3, atol=1e-3, generator=gen)
    # Same pixel histogram, destroyed structure: the model must tell them apart by far more than
    # the standard errors (Hutchinson probes in D = 64 included).
    assert real.bits_per_dim.value + 4 * (real.bits_per_dim.stderr + fake.bits_per_dim.stderr) \
        < fake.bits_per_dim.value


def test_deviation_between_two_classes_is_positive_and_zero_for_the_same_class(model, heldout):
    # 128 training 3s, 4 time draws each: the per-sample path-KL terms are heavy-tailed.
    x = heldout.train_images[heldout.train_labels == 3][:128]
    far = deviation(model, model, x, cond_model=3, cond_reference=8, n_t=4,
                    generator=torch.Generator().manual_seed(3))
    same = deviation(model, model, x, cond_model=3, cond_reference=3,
                     generator=torch.Generator().manual_seed(3))
    assert far.value > 4 * far.stderr > 0
    assert same.value == 0.0
