r"""Real handwritten digits shipped with scikit-learn, as an image data set for diffusion models.

The data are the 1,797 8x8 grey-level digits of :func:`sklearn.datasets.load_digits` (UCI
optical recognition of handwritten digits; pixel values are integers 0-16, ten classes). Nothing
is downloaded: scikit-learn ships the file inside its package. Images are scaled to
:math:`[-1, 1]` by :math:`x \mapsto x/8 - 1` and returned with shape ``(n, 1, 8, 8)``.

The split is fixed: a stratified split (:func:`sklearn.model_selection.train_test_split`,
``random_state=SPLIT_SEED``) into ``N_TRAIN = 1500`` training and ``N_HELDOUT = 297`` held-out
images, the same every time on every platform (it only depends on the integer data and
scikit-learn's permutation with a fixed seed).

Requires the ``[digits]`` extra (scikit-learn); ``import dualdiff`` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

__all__ = [
    "FORGET_SEED",
    "FORGET_SIZE",
    "NULL_CLASS",
    "NUM_CLASSES",
    "N_HELDOUT",
    "N_TRAIN",
    "SPLIT_SEED",
    "DigitsSplit",
    "forget_indices",
    "load_digits_split",
    "tensor_sampler",
]

#: Number of digit classes; class ``c`` is the digit ``c``.
NUM_CLASSES = 10
#: Index of the null (unconditional) class of the class-conditional digits model.
NULL_CLASS = 10
#: Seed of the fixed stratified train / held-out split.
SPLIT_SEED = 0
#: Sizes of the fixed split (1500 + 297 = 1797).
N_TRAIN = 1500
N_HELDOUT = 297
#: Size and seed of the fixed forget set of :func:`forget_indices`.
FORGET_SIZE = 30
FORGET_SEED = 1

DataSampler = Callable[[int, "torch.Generator | None"], torch.Tensor]


class DigitsSplit(NamedTuple):
    """The fixed train / held-out split of the scikit-learn digits.

    Attributes
    ----------
    train_images : torch.Tensor
        ``(N_TRAIN, 1, 8, 8)`` images in :math:`[-1, 1]`.
    train_labels : torch.Tensor
        ``(N_TRAIN,)`` int64 digit labels in ``0..9``.
    heldout_images : torch.Tensor
        ``(N_HELDOUT, 1, 8, 8)`` images in :math:`[-1, 1]`.
    heldout_labels : torch.Tensor
        ``(N_HELDOUT,)`` int64 labels.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    heldout_images: torch.Tensor
    heldout_labels: torch.Tensor


def _import_sklearn(owner: str) -> Any:
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{owner} needs scikit-learn: install the extra with "
            "`pip install 'dualdiff-unlearning[digits]'`"
        ) from exc
    return sklearn


def load_digits_split(dtype: torch.dtype = torch.float32) -> DigitsSplit:
    r"""The digits as ``(n, 1, 8, 8)`` tensors in :math:`[-1, 1]`, split into train / held-out.

    Parameters
    ----------
    dtype
        Floating dtype of the images (default float32).

    Returns
    -------
    DigitsSplit
        ``N_TRAIN = 1500`` training and ``N_HELDOUT = 297`` held-out images and labels; the
        split is stratified by class with ``random_state=SPLIT_SEED``, so every class keeps its
        proportion (about 10%) in both parts. Pixel :math:`v \in \{0, \dots, 16\}` becomes
        :math:`v/8 - 1`.

    Raises
    ------
    TypeError
        If ``dtype`` is not a floating torch dtype.
    """
    owner = "load_digits_split"
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{owner}: parameter 'dtype' must be a floating torch.dtype, got {dtype!r}")
    sk = _import_sklearn(owner)
    data = sk.datasets.load_digits()
    idx_train, idx_held = sk.model_selection.train_test_split(
        torch.arange(len(data.target)).numpy(),
        test_size=N_HELDOUT,
        stratify=data.target,
        random_state=SPLIT_SEED,
    )
    images = torch.as_tensor(data.images, dtype=torch.float64).div(8.0).sub(1.0)
    images = images.reshape(-1, 1, 8, 8).to(dtype)
    labels = torch.as_tensor(data.target, dtype=torch.int64)
    tr = torch.as_tensor(idx_train)
    he = torch.as_tensor(idx_held)
    return DigitsSplit(images[tr], labels[tr], images[he], labels[he])


def forget_indices(
    n_train: int = N_TRAIN, size: int = FORGET_SIZE, seed: int = FORGET_SEED
) -> torch.Tensor:
    """Fixed indices into the training split: the forget set for data unlearning.

    Parameters
    ----------
    n_train
        Size of the training set the indices point into (default ``N_TRAIN``).
    size
        Number of forgotten images (default ``FORGET_SIZE = 30``), ``1 <= size <= n_train``.
    seed
        Seed of the ``torch.Generator`` drawing them without replacement (``torch.randperm``).

    Returns
    -------
    torch.Tensor
        ``(size,)`` sorted distinct int64 indices in ``[0, n_train)``.
    """
    owner = "forget_indices"
    for name, value, low in (("n_train", n_train, 1), ("size", size, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{owner}: parameter '{name}' must be an int >= {low}, got {value!r}")
    if size > n_train:
        raise ValueError(
            f"{owner}: parameter 'size' must be <= n_train = {n_train}, got {size}"
        )
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_train, generator=gen)[:size].sort().values


def tensor_sampler(data: torch.Tensor) -> DataSampler:
    """A sampler drawing rows of ``data`` uniformly with replacement.

    Parameters
    ----------
    data
        ``(N, *event)`` tensor, ``N >= 1``.

    Returns
    -------
    callable
        ``sampler(n, generator=None) -> (n, *event)``: ``data[torch.randint(N, (n,),
        generator=generator)]``, so the draw is reproducible with a seeded generator. This is the
        ``DataSampler`` signature the engine's primal steps accept.
    """
    owner = "tensor_sampler"
    if not isinstance(data, torch.Tensor):
        raise TypeError(
            f"{owner}: parameter 'data' must be a torch.Tensor, got {type(data).__name__}"
        )
    if data.ndim < 1 or data.shape[0] < 1:
        raise ValueError(
            f"{owner}: parameter 'data' must have shape (N, *event) with N >= 1, got "
            f"{tuple(data.shape)}"
        )
    rows = data.shape[0]

    def sampler(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"tensor_sampler: parameter 'n' must be an int >= 1, got {n!r}")
        idx = torch.randint(rows, (n,), generator=generator, device="cpu")
        return data[idx.to(data.device)]

    return sampler
