r"""The evaluation classifier of the 8x8 digits: a small CNN with a feature layer.

:class:`DigitsClassifier` maps ``(n, 1, 8, 8)`` images in :math:`[-1, 1]` to class log-probabilities
:math:`\log p(c \mid x)`, ``(n, 10)``, and exposes its penultimate layer (``FEATURE_DIM = 64``
features) as the embedding of the Fréchet distance and KID in :mod:`dualdiff.experiments.metrics`
(instead of downloaded Inception weights). The shipped weights ``digits_classifier.pt`` were made
by::

    OMP_NUM_THREADS=1 python -m dualdiff.datasets.digits_classifier \
        --output src/dualdiff/datasets/digits_classifier.pt

(:func:`train_digits_classifier` with its defaults: seed 0, a few seconds on one core), trained
on the training split of :func:`~dualdiff.datasets.digits.load_digits_split` only, with random
one-pixel shifts as augmentation; the held-out accuracy is printed by the command and stated in
the documentation.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

import torch
from torch import nn

from .digits import NUM_CLASSES, load_digits_split

__all__ = [
    "CLASSIFIER_CHECKPOINT",
    "FEATURE_DIM",
    "DigitsClassifier",
    "accuracy",
    "load_digits_classifier",
    "train_digits_classifier",
]

#: Dimension of :meth:`DigitsClassifier.features`.
FEATURE_DIM = 64
CLASSIFIER_CHECKPOINT = "digits_classifier.pt"


class DigitsClassifier(nn.Module):
    r"""CNN classifier of ``(n, 1, 8, 8)`` digits in :math:`[-1, 1]`.

    Layers: conv 3x3 (1->32), conv 3x3 (32->64), max-pool to 4x4, conv 3x3 (64->64), linear
    (1024->``FEATURE_DIM``), all with ReLU, then a linear head (``FEATURE_DIM``->10).
    ``forward`` returns the logits.
    """

    #: Read by torchmetrics' Fréchet distance to size its state without a dummy forward pass.
    num_features = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(
                f"DigitsClassifier: parameter 'x' must be a floating torch.Tensor, got {got}"
            )
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(
                "DigitsClassifier: parameter 'x' must have shape (n, 1, 8, 8), got "
                f"{tuple(x.shape)}"
            )
        w = self.head.weight
        return x.to(dtype=w.dtype, device=w.device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, ``(n, 1, 8, 8) -> (n, FEATURE_DIM)``."""
        return self.body(self._check(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``(n, 1, 8, 8) -> (n, 10)``."""
        return self.head(self.features(x))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(c \mid x)` for every class, ``(n, 1, 8, 8) -> (n, 10)``."""
        return torch.log_softmax(self(x), dim=-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable class, ``(n, 1, 8, 8) -> (n,)`` int64."""
        return self(x).argmax(-1)


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift every image by a random offset in {-1, 0, 1}^2 pixels, filling with background -1."""
    n = x.shape[0]
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    off = torch.randint(0, 3, (n, 2), generator=gen)
    rows = off[:, 0, None] + torch.arange(8)
    cols = off[:, 1, None] + torch.arange(8)
    idx_n = torch.arange(n)[:, None, None]
    return pad[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train_digits_classifier(
    epochs: int = 40, batch_size: int = 64, lr: float = 2e-3, seed: int = 0
) -> DigitsClassifier:
    """Train :class:`DigitsClassifier` on the digits training split (Adam, cross-entropy).

    Parameters
    ----------
    epochs, batch_size, lr
        Passes over the 1500 training images, batch size and Adam learning rate (cosine decay).
    seed
        Seeds the initialisation, the batches and the one-pixel shift augmentation.

    Returns
    -------
    DigitsClassifier
        In eval mode, float32.
    """
    owner = "train_digits_classifier"
    checks = (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("seed", seed, 0))
    for name, value, low in checks:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{owner}: parameter '{name}' must be an int >= {low}, got {value!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"{owner}: parameter 'lr' must be a number > 0, got {lr!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    split = load_digits_split()
    x, y = split.train_images, split.train_labels
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = -(-x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(_shift(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` ``(n, 1, 8, 8)`` whose predicted class equals ``labels`` ``(n,)``."""
    if not isinstance(labels, torch.Tensor) or labels.shape != images.shape[:1]:
        raise ValueError(
            "accuracy: parameter 'labels' must be a tensor of shape (n,) matching 'images', got "
            f"{getattr(labels, 'shape', type(labels).__name__)}"
        )
    return float((model.predict(images) == labels).double().mean())


def load_digits_classifier() -> DigitsClassifier:
    """The shipped evaluation classifier (eval mode, float32, CPU, gradients disabled)."""
    model = DigitsClassifier()
    ref = resources.files("dualdiff.datasets").joinpath(CLASSIFIER_CHECKPOINT)
    with resources.as_file(ref) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    return model


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m dualdiff.datasets.digits_classifier --output FILE``."""
    ap = argparse.ArgumentParser(prog="python -m dualdiff.datasets.digits_classifier")
    ap.add_argument("--output", required=True, help="state-dict file to write (.pt)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = train_digits_classifier(seed=args.seed)
    torch.save(model.state_dict(), args.output)
    split = load_digits_split()
    acc = accuracy(model, split.heldout_images, split.heldout_labels)
    tr = accuracy(model, split.train_images, split.train_labels)
    print(f"saved {args.output}: train accuracy {tr:.4f}, held-out accuracy {acc:.4f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
