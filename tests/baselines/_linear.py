"""A one-parameter linear score model with closed-form denoising losses (shared by the tests)."""

from __future__ import annotations

import torch
from torch import nn


class LinearScore(nn.Module):
    """score(x, t) = -theta * x (one parameter): eps_hat = sigma_t * theta * x_t."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def score(self, x, t=0.0, cond=None):
        return -self.theta * x
