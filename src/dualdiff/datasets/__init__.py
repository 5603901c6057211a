"""Data sets and pretrained models shipped with dualdiff (real data; nothing is downloaded).

- :mod:`dualdiff.datasets.ring`: a 2-D ring of eight Gaussians and the MLP noise predictors
  pretrained on it.
- :mod:`dualdiff.datasets.digits`: scikit-learn's 8x8 handwritten digits, fixed split, forget set.
- :mod:`dualdiff.datasets.digits_model`: the class-conditional digits DDPM (diffusers UNet).
- :mod:`dualdiff.datasets.digits_classifier`: the evaluation classifier of digits.

The digits modules need the ``[digits]`` extra; they import scikit-learn / diffusers only when
called, and ``import dualdiff`` imports none of them.
"""

from .digits import (
    FORGET_SIZE,
    N_HELDOUT,
    N_TRAIN,
    NULL_CLASS,
    NUM_CLASSES,
    DigitsSplit,
    forget_indices,
    load_digits_split,
    tensor_sampler,
)
from .ring import load_pretrained_ring, pretrain_ring_model, ring_mixture

__all__ = [
    "FORGET_SIZE",
    "NULL_CLASS",
    "NUM_CLASSES",
    "N_HELDOUT",
    "N_TRAIN",
    "DigitsSplit",
    "forget_indices",
    "load_digits_split",
    "load_pretrained_ring",
    "pretrain_ring_model",
    "ring_mixture",
    "tensor_sampler",
]
