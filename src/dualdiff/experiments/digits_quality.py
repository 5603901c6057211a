r"""Quality of the pretrained digits DDPM, measured with the digits classifier.

Run (the numbers quoted in the documentation)::

    OMP_NUM_THREADS=1 python -m dualdiff.experiments.digits_quality

* per-class accuracy of class-conditional samples (``n_per_class`` DDIM samples per digit,
  scored by :class:`~dualdiff.datasets.digits_classifier.DigitsClassifier`) and its mean;
* class proportions of unconditional (null-class) samples;
* Fréchet distance and KID of the unconditional samples to the held-out real digits in the
  classifier's feature space, next to the same distances between the training and held-out
  real digits (the floor a perfect model would reach at these sample sizes).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NamedTuple

import torch

from ..datasets.digits import NULL_CLASS, NUM_CLASSES, load_digits_split
from .metrics import ClassProportions, RetainedAccuracy, class_proportions, frechet_distance, kid
from .metrics import retained_accuracy as _retained_accuracy

__all__ = ["DigitsQuality", "evaluate_pretrained_digits", "main"]


class DigitsQuality(NamedTuple):
    """Result of :func:`evaluate_pretrained_digits`.

    Attributes
    ----------
    conditional_accuracy : RetainedAccuracy
        Per-class accuracy of class-conditional samples (all ten classes) and its mean.
    null_proportions : ClassProportions
        Class proportions of unconditional samples.
    fd, kid
        Fréchet distance / KID (:class:`~dualdiff.Estimate`) of the unconditional samples to
        the held-out digits, in the classifier's feature space.
    fd_real, kid_real
        The same distances between the training and the held-out real digits.
    """

    conditional_accuracy: RetainedAccuracy
    null_proportions: ClassProportions
    fd: float
    kid: Any
    fd_real: float
    kid_real: Any

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        acc = self.conditional_accuracy
        return {
            "conditional_accuracy_per_class": {c: e.value for c, e in acc.per_class.items()},
            "conditional_accuracy_mean": acc.mean.value,
            "conditional_accuracy_mean_stderr": acc.mean.stderr,
            "null_class_proportions": self.null_proportions.proportions.tolist(),
            "fd_null_vs_heldout": self.fd,
            "kid_null_vs_heldout": [self.kid.value, self.kid.stderr],
            "fd_train_vs_heldout": self.fd_real,
            "kid_train_vs_heldout": [self.kid_real.value, self.kid_real.stderr],
        }


@torch.no_grad()
def evaluate_pretrained_digits(
    unet: Any = None,
    scheduler: Any = None,
    classifier: Any = None,
    *,
    n_per_class: int = 100,
    n_null: int = 1000,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 500,
) -> DigitsQuality:
    """Sample the digits model and score the samples with the digits classifier.

    Parameters
    ----------
    unet, scheduler
        The model (default: :func:`~dualdiff.datasets.digits_model.load_digits_ddpm`).
    classifier
        Evaluation classifier (default: the shipped one).
    n_per_class, n_null
        Conditional samples per class and unconditional samples (ints >= 2).
    num_inference_steps, guidance_scale
        DDIM steps and classifier-free guidance scale of the conditional samples.
    seed
        Seed of the sampler's noise and of KID's subsets.
    batch_size
        Samples per sampler call.

    Returns
    -------
    DigitsQuality
    """
    from ..datasets.digits_classifier import load_digits_classifier
    from ..datasets.digits_model import load_digits_ddpm, sample_digits

    owner = "evaluate_pretrained_digits"
    for name, value in (("n_per_class", n_per_class), ("n_null", n_null),
                        ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ValueError(f"{owner}: parameter '{name}' must be an int >= 2, got {value!r}")
    if unet is None or scheduler is None:
        unet, scheduler = load_digits_ddpm()
    clf = load_digits_classifier() if classifier is None else classifier
    gen = torch.Generator().manual_seed(seed)

    def draw(labels: torch.Tensor, w: float) -> torch.Tensor:
        return torch.cat([
            sample_digits(unet, scheduler, lab, num_inference_steps=num_inference_steps,
                          guidance_scale=w, generator=gen)
            for lab in labels.split(batch_size)
        ])

    target = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)
    cond = draw(target, guidance_scale)
    null = draw(torch.full((n_null,), NULL_CLASS, dtype=torch.int64), 1.0)
    acc = _retained_accuracy(clf.predict(cond), target)
    props = class_proportions(clf.predict(null), NUM_CLASSES)
    split = load_digits_split()
    held = split.heldout_images
    m = min(held.shape[0], n_null)
    return DigitsQuality(
        acc,
        props,
        frechet_distance(held, null, clf.features),
        kid(held, null, clf.features, subset_size=m, seed=seed),
        frechet_distance(held, split.train_images, clf.features),
        kid(held, split.train_images, clf.features, subset_size=m, seed=seed),
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m dualdiff.experiments.digits_quality [--checkpoint DIR]``."""
    ap = argparse.ArgumentParser(prog="python -m dualdiff.experiments.digits_quality")
    ap.add_argument("--checkpoint", default=None, help="save_pretrained dir (default: shipped)")
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--n-null", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from ..datasets.digits_model import load_digits_ddpm

    unet, sched = load_digits_ddpm(args.checkpoint)
    q = evaluate_pretrained_digits(
        unet, sched, n_per_class=args.n_per_class, n_null=args.n_null,
        num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
    )
    print(json.dumps(q.to_dict(), indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
