r"""An exponential moving average of the trained weights (``PrimalDualTrainer(ema_decay=...)``).

.. math::
    \bar\theta_0 = \theta_0,\qquad
    \bar\theta_{k+1} = \beta\,\bar\theta_k + (1-\beta)\,\theta_{k+1}

after every applied primal step, with :math:`\beta` = ``ema_decay``. Fine-tuning a converged
diffusion model at a constant learning rate leaves its iterates in a noise ball around a
minimiser whose size does not shrink with more steps (on the shipped digits DDPM one Adam
step at lr 2e-4 raises every ELBO NLL by 3-5 nats; :doc:`/digits`); the average removes it,
which is why diffusion models are released as weight averages. The average lives in a deep
copy of the score model (same class, same wrapper, so it is a ``ScoreModel`` for the
estimators, samplers and metrics); its parameters never require gradients. The update is
torch's :func:`torch.optim.swa_utils.get_ema_multi_avg_fn` (a fused ``lerp``); buffers are
copied from the model. Frozen parameters (e.g. a LoRA adapter's base weights) are copied
once and never change, at the cost of a second copy of them in memory.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage", "state_module"]


def state_module(model: Any, owner: str = "PrimalDualTrainer") -> nn.Module:
    """The ``nn.Module`` whose ``state_dict`` is the model's trainable state."""
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module):
        return inner
    raise TypeError(
        f"{owner}: parameter 'model' must be a torch.nn.Module or wrap one as "
        f"'.module' (e.g. ModuleScoreModel), got {type(model).__name__}"
    )


class WeightAverage:
    r"""EMA :math:`\bar\theta` of a score model's trainable parameters in a copy of the model.

    Parameters
    ----------
    model
        The score model being trained (an ``nn.Module`` or a wrapper with ``.module``).
    params
        Its trainable parameters (the ones the primal optimiser updates).
    decay
        :math:`\beta \in [0, 1)`; ``0`` makes the average the last iterate.
    owner
        Name used in error messages (the trainer passes its own).

    Attributes
    ----------
    model
        The averaged score model (a deep copy of ``model`` holding :math:`\bar\theta`).
    updates
        Number of updates applied (primal steps averaged).
    """

    def __init__(self, model: Any, params: list[nn.Parameter], decay: float,
                 owner: str = "WeightAverage") -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (
            math.isfinite(decay) and 0.0 <= decay < 1.0
        ):
            raise ValueError(
                f"{owner}: parameter 'ema_decay' must be None or a number in [0, 1), "
                f"got {decay!r}"
            )
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self._module = state_module(model, owner)  # before the copy: refuse without copying
        self.decay = float(decay)
        memo: dict[int, Any] = {}
        self.model = copy.deepcopy(model, memo)
        # deepcopy's memo maps each original object's id to its copy
        self._pairs = [(memo[id(p)], p) for p in params]
        self._avg_module = state_module(self.model, owner)
        for q in self._avg_module.parameters():
            q.requires_grad_(False)
        self._update = get_ema_multi_avg_fn(self.decay)
        self.updates = 0

    def __repr__(self) -> str:
        return f"WeightAverage(decay={self.decay}, updates={self.updates})"

    @torch.no_grad()
    def update(self) -> None:
        r"""One EMA step towards the model's current parameters; copy its buffers."""
        avg = [q for q, _ in self._pairs]
        cur = [p.detach() for _, p in self._pairs]
        self._update(avg, cur, None)
        for b_avg, b in zip(self._avg_module.buffers(), self._module.buffers(), strict=True):
            b_avg.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "updates", "model"}`` (the averaged module's ``state_dict``, copied)."""
        return {
            "decay": self.decay,
            "updates": self.updates,
            "model": {k: v.detach().clone() for k, v in self._avg_module.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (validated by the checkpoint loader)."""
        self._avg_module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
