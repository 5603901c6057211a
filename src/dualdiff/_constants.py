"""Constants with one owner each.

``FLOAT64`` is the dtype of certificates, references, dual variables and every estimate that
enters a multiplier (the dtype policy of :mod:`dualdiff.problems.contract`); networks may train
in another dtype.
"""

from __future__ import annotations

import math

import torch

__all__ = ["FLOAT64", "LOG_2PI"]

#: :math:`\log 2\pi`, the Gaussian normalising constant per dimension.
LOG_2PI = math.log(2.0 * math.pi)
#: dtype of certificates, references, multipliers and estimates.
FLOAT64 = torch.float64
