"""The digits data set, its classifier and the shipped DDPM (against sklearn's raw data)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch

pytest.importorskip("sklearn")

from dualdiff.datasets import (
    FORGET_SIZE,
    N_HELDOUT,
    N_TRAIN,
    forget_indices,
    load_digits_split,
    tensor_sampler,
)


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def test_split_sizes_shapes_and_pixel_grid(split):
    assert split.train_images.shape == (N_TRAIN, 1, 8, 8) == (1500, 1, 8, 8)
    assert split.heldout_images.shape == (N_HELDOUT, 1, 8, 8) == (297, 1, 8, 8)
    assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.int64
    pix = (split.train_images + 1) * 8  # back to sklearn's integer levels 0..16
    assert torch.equal(pix, pix.round()) and pix.min() == 0 and pix.max() == 16
    assert load_digits_split(torch.float64).heldout_images.dtype == torch.float64


def test_split_is_a_stratified_partition_of_sklearn_digits(split):
    from sklearn.datasets import load_digits

    raw = load_digits()
    ours = torch.cat([split.train_images, split.heldout_images]).add(1).mul(8).reshape(-1, 64)
    lab = torch.cat([split.train_labels, split.heldout_labels])
    # Same multiset of (image, label) rows as the raw data: a partition, nothing lost or doubled.
    rows = sorted(map(tuple, np.column_stack([ours.numpy(), lab.numpy()]).tolist()))
    ref = sorted(map(tuple, np.column_stack([raw.data, raw.target]).astype(float).tolist()))
    assert rows == ref
    # Stratified: each class keeps its overall share in the held-out part (to rounding).
    overall = np.bincount(raw.target, minlength=10) / len(raw.target)
    held = np.bincount(split.heldout_labels.numpy(), minlength=10)
    assert np.all(np.abs(held - overall * N_HELDOUT) <= 1)
    # Fixed: a second call gives the same split.
    again = load_digits_split()
    assert torch.equal(again.heldout_images, split.heldout_images)
    assert torch.equal(again.train_labels, split.train_labels)


def test_forget_indices_are_fixed_distinct_and_in_range():
    idx = forget_indices()
    assert idx.shape == (FORGET_SIZE,) == (30,) and idx.dtype == torch.int64
    assert len(set(idx.tolist())) == 30 and int(idx.min()) >= 0 and int(idx.max()) < N_TRAIN
    assert torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, forget_indices())
    assert not torch.equal(idx, forget_indices(seed=2))
    assert forget_indices(10, 10).tolist() == list(range(10))
    with pytest.raises(ValueError, match=r"forget_indices: parameter 'size' must be <= n_train"):
        forget_indices(10, 11)
    with pytest.raises(ValueError, match=r"forget_indices: parameter 'size' must be an int >= 1"):
        forget_indices(size=0)


def test_tensor_sampler_is_uniform_reproducible_and_checks_input():
    data = torch.arange(5.0)[:, None].repeat(1, 3)
    sample = tensor_sampler(data)
    a = sample(5000, torch.Generator().manual_seed(0))
    b = sample(5000, torch.Generator().manual_seed(0))
    assert a.shape == (5000, 3) and torch.equal(a, b)
    counts = np.bincount(a[:, 0].long().numpy(), minlength=5)
    # Uniform with replacement: chi-square goodness of fit (5 cells, 5000 draws).
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    with pytest.raises(ValueError, match=r"tensor_sampler: parameter 'n' must be an int >= 1"):
        sample(0)
    with pytest.raises(TypeError, match=r"tensor_sampler: parameter 'data' must be a torch"):
        tensor_sampler([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(N, \*event\) with N >= 1, got \(0, 2\)"):
        tensor_sampler(torch.zeros(0, 2))


def test_load_digits_split_refuses_bad_dtype():
    with pytest.raises(TypeError, match=r"load_digits_split: parameter 'dtype' must be a floating"):
        load_digits_split(torch.int64)


def test_import_dualdiff_imports_no_optional_dependency():
    code = (
        "import sys, dualdiff, dualdiff.datasets, dualdiff.experiments; "
        "print([m for m in ('sklearn', 'diffusers', 'torchmetrics', 'peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- classifier
def test_shipped_classifier_is_accurate_on_held_out_digits(split):
    from dualdiff.datasets.digits_classifier import FEATURE_DIM, accuracy, load_digits_classifier

    clf = load_digits_classifier()
    acc = accuracy(clf, split.heldout_images, split.heldout_labels)
    assert acc >= 0.97  # measured 0.9966 (296/297) for the shipped weights
    x = split.heldout_images[:7].double()
    assert clf.features(x).shape == (7, FEATURE_DIM)
    lp = clf.log_prob(x)
    assert lp.shape == (7, 10)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(7), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"DigitsClassifier: parameter 'x' must have shape"):
        clf(torch.zeros(3, 64))
    with pytest.raises(TypeError, match=r"DigitsClassifier: parameter 'x' must be a floating"):
        clf(torch.zeros(3, 1, 8, 8, dtype=torch.int64))


@pytest.mark.slow
def test_classifier_training_reproduces_the_shipped_accuracy(split):
    from dualdiff.datasets.digits_classifier import accuracy, train_digits_classifier

    clf = train_digits_classifier()
    assert accuracy(clf, split.heldout_images, split.heldout_labels) >= 0.97


# ---------------------------------------------------------------------- the DDPM
def test_shipped_ddpm_loads_and_samples_recognisable_digits():
    pytest.importorskip("diffusers")
    from dualdiff.datasets.digits_classifier import load_digits_classifier
    from dualdiff.datasets.digits_model import UNET_CONFIG, load_digits_ddpm, sample_digits

    unet, sched = load_digits_ddpm()
    assert unet.config.num_class_embeds == 11 == UNET_CONFIG["num_class_embeds"]
    assert sched.config.prediction_type == "epsilon"
    labels = torch.arange(10).repeat_interleave(5)
    x = sample_digits(unet, sched, labels, num_inference_steps=20,
                      generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, 1, 8, 8) and float(x.abs().max()) <= 1.0
    acc = float((load_digits_classifier().predict(x) == labels).double().mean())
    # Measured 0.974 with 1000 samples and 50 steps (docs/digits.rst), 0.94-1.0 for this
    # configuration over seeds 0-2; with 50 samples at p = 0.95, P(acc < 0.8) ~ 1e-4.
    assert acc >= 0.8


def test_sample_digits_refuses_bad_input():
    pytest.importorskip("diffusers")
    from dualdiff.datasets.digits_model import load_digits_ddpm, sample_digits

    unet, sched = load_digits_ddpm()
    with pytest.raises(ValueError, match=r"sample_digits: parameter 'labels' must be non-empty"):
        sample_digits(unet, sched, torch.tensor([11]))
    with pytest.raises(TypeError, match=r"sample_digits: parameter 'labels' must be a 1-D int64"):
        sample_digits(unet, sched, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"parameter 'num_inference_steps' must be an int >= 1"):
        sample_digits(unet, sched, torch.tensor([1]), num_inference_steps=0)
    with pytest.raises(ValueError, match=r"parameter 'guidance_scale' must be a number >= 0"):
        sample_digits(unet, sched, torch.tensor([1]), guidance_scale=-1.0)
    with pytest.raises(FileNotFoundError, match=r"load_digits_ddpm: parameter 'path' must be a"):
        load_digits_ddpm("/nonexistent")


@pytest.mark.slow
def test_pretraining_script_runs_saves_a_loadable_checkpoint_and_the_loss_falls(tmp_path):
    pytest.importorskip("diffusers")
    from dualdiff.datasets.digits_model import load_digits_ddpm
    from dualdiff.datasets.digits_pretrain import main

    out = tmp_path / "ckpt"
    assert main(["--output", str(out), "--steps", "40", "--log-every", "10", "--quiet"]) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert len(log["loss"]) == 4 and log["loss"][-1] < 0.8 * log["loss"][0]
    unet, sched = load_digits_ddpm(out)
    assert unet.config.sample_size == 8 and sched.config.num_train_timesteps == 1000
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow
def test_pretraining_is_deterministic_on_cpu(tmp_path):
    pytest.importorskip("diffusers")
    from dualdiff.datasets.digits_model import load_digits_ddpm
    from dualdiff.datasets.digits_pretrain import pretrain_digits_ddpm

    logs = [pretrain_digits_ddpm(tmp_path / str(i), steps=8, log_every=4) for i in range(2)]
    assert logs[0]["loss"] == logs[1]["loss"]
    a, b = (load_digits_ddpm(tmp_path / str(i))[0].state_dict() for i in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
