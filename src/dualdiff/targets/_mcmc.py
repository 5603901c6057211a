"""Metropolis-adjusted Langevin refinement used to sample targets without an exact sampler."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["mala"]


def mala(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    score: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    steps: int,
    step_size: float = 0.05,
    generator: torch.Generator | None = None,
    target_accept: float = 0.57,
) -> torch.Tensor:
    r"""Run ``steps`` MALA transitions from ``x`` ``(n, d)`` (one chain per row).

    The step size is adapted (Robbins–Monro on the log scale) during the first half of the
    run and frozen for the second half, so the second half leaves the target invariant.
    """
    with torch.no_grad():
        lp = log_prob(x)
        g = score(x)
        log_h = torch.log(torch.tensor(step_size, dtype=x.dtype))
        for i in range(steps):
            h = torch.exp(log_h)
            noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
            y = x + h * g + torch.sqrt(2 * h) * noise
            lp_y = log_prob(y)
            g_y = score(y)
            fwd = -((y - x - h * g) ** 2).sum(-1) / (4 * h)
            bwd = -((x - y - h * g_y) ** 2).sum(-1) / (4 * h)
            log_acc = lp_y - lp + bwd - fwd
            u = torch.rand(x.shape[0], dtype=x.dtype, device=x.device, generator=generator)
            accept = (torch.log(u) < log_acc) & torch.isfinite(lp_y)
            x = torch.where(accept[:, None], y, x)
            lp = torch.where(accept, lp_y, lp)
            g = torch.where(accept[:, None], g_y, g)
            if i < steps // 2:
                rate = float(accept.to(x.dtype).mean())
                log_h = log_h + 2.0 * (rate - target_accept) / (1 + i) ** 0.6
    return x
