r"""A view of a conditional score model with its condition bound.

A class-conditional (or text-conditional) diffusion network is one score model
:math:`s_\theta(x, t, c)` of many distributions: :math:`p_0(\cdot\mid c)` for each condition and,
with classifier-free-guidance training, the marginal :math:`p_0` at the null condition. The
unlearning problems take one :class:`~dualdiff.models.ScoreModel` per distribution;
:class:`Conditioned` turns the network into those without copying it::

    p0 = Conditioned(net, None)   # the unconditional (null-condition) model
    q = Conditioned(net, 3)       # the concept "class 3"

Every call forwards to the same network, so a view of a trainable network trains with it and
a view of a frozen network stays frozen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .protocol import ScoreModel

__all__ = ["Conditioned"]


class Conditioned:
    r"""Bind the condition ``cond`` of a conditional score model.

    ``Conditioned(model, cond).score(x, t) == model.score(x, t, cond=cond)``; the same for
    ``eps`` when the model has it. ``cond=None`` is the model's unconditional (null) condition.

    Parameters
    ----------
    model
        A score model whose ``score(x, t, cond)`` accepts conditions (e.g.
        :class:`~dualdiff.models.ModuleScoreModel` of a conditional network, or the diffusers
        adapter).
    cond
        The condition to bind (a class index, a label tensor, an embedding, ...), or ``None``.

    Notes
    -----
    The view forwards ``schedule``, ``module``, ``parameters()``, ``train()``/``eval()`` and
    ``dtype`` of the wrapped model, so an engine that checkpoints ``view.module`` saves the
    underlying network. Passing a different ``cond`` to a bound view raises
    :class:`ValueError` (the view is of one distribution).
    """

    def __init__(self, model: Any, cond: Any = None) -> None:
        if not isinstance(model, ScoreModel):
            raise TypeError(
                "Conditioned: parameter 'model' must be a score model with "
                f"score(x, t, cond), got {type(model).__name__}"
            )
        self.model = model
        self.cond = cond

    def __repr__(self) -> str:
        return f"Conditioned({self.model!r}, cond={self.cond!r})"

    def _cond(self, cond: Any, method: str) -> Any:
        if cond is not None and cond is not self.cond:
            raise ValueError(
                f"Conditioned.{method}: this view is bound to cond={self.cond!r}; got "
                f"cond={cond!r} (call the wrapped model directly for another condition)"
            )
        return self.cond

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        """Score of the bound condition's noised marginal at ``(x, t)``, shaped like ``x``."""
        return self.model.score(x, t, cond=self._cond(cond, "score"))

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        """Noise prediction of the bound condition (needs ``model.eps``)."""
        fn = getattr(self.model, "eps", None)
        if not callable(fn):
            raise AttributeError(
                f"Conditioned.eps: the wrapped {type(self.model).__name__} has no eps(x, t, cond)"
            )
        out: torch.Tensor = fn(x, t, cond=self._cond(cond, "eps"))
        return out

    # ------------------------------------------------------------------ forwarding
    @property
    def schedule(self) -> Any:
        """The wrapped model's noise schedule (``None`` if it has none)."""
        return getattr(self.model, "schedule", None)

    @property
    def module(self) -> Any:
        """The wrapped model's ``nn.Module`` (``None`` if it has none)."""
        return getattr(self.model, "module", None)

    @property
    def dtype(self) -> torch.dtype | None:
        """The wrapped model's dtype (of its first parameter, or its ``dtype`` attribute)."""
        params = getattr(self.model, "parameters", None)
        if callable(params):
            for p in params():
                return p.dtype
        return getattr(self.model, "dtype", None)

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """The wrapped model's parameters (none if it has no ``parameters()``)."""
        params = getattr(self.model, "parameters", None)
        if callable(params):
            return iter(params(recurse=recurse))
        return iter(())

    def train(self, mode: bool = True) -> Conditioned:
        """Set the wrapped model's training mode; returns ``self``."""
        fn = getattr(self.model, "train", None)
        if callable(fn):
            fn(mode)
        return self

    def eval(self) -> Conditioned:
        """Put the wrapped model in evaluation mode; returns ``self``."""
        return self.train(False)
