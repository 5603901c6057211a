r"""A small class-conditional MLP noise predictor with a null class (classifier-free guidance).

:class:`CondMLPScoreNet` predicts :math:`\hat\varepsilon_\theta(x, t, c)` for ``K`` classes and
a null class :math:`\varnothing`. Trained with condition dropout (the label replaced by the
null class with some probability), one network models every class-conditional distribution
:math:`p_0(\cdot\mid c)` *and* the marginal :math:`p_0 = \sum_c p(c)\,p_0(\cdot\mid c)` at the
null class. Wrapped by :class:`~dualdiff.models.ModuleScoreModel` and viewed through
:class:`~dualdiff.models.Conditioned`, it states an unlearning problem with networks only::

    net = ModuleScoreModel(CondMLPScoreNet(dim=2, n_classes=8), prediction="eps")
    p0, q = Conditioned(net, None), Conditioned(net, 3)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .module_adapter import SinusoidalTimeEmbedding
from .parametrization import broadcast_time

__all__ = ["NULL_CLASS", "CondMLPScoreNet"]

#: Label value that selects the null (unconditional) class inside a label tensor.
NULL_CLASS = -1


class CondMLPScoreNet(nn.Module):
    r"""Class-conditional MLP noise predictor :math:`\hat\varepsilon_\theta(x, t, c)`.

    Architecture: the input ``x``, a sinusoidal embedding of ``t`` (projected by a small MLP)
    and a learned embedding of the class ``c`` (``n_classes + 1`` rows, the last one the null
    class) are added in a hidden layer of width ``hidden``; each of the ``depth`` residual SiLU
    blocks also receives the class embedding (so the class acts at every depth); a linear
    read-out, initialised to zero, gives :math:`\hat\varepsilon`.

    Parameters
    ----------
    dim
        Data dimension ``d``.
    n_classes
        Number of classes ``K >= 1`` (the null class is extra).
    hidden
        Hidden width.
    depth
        Number of residual blocks (``>= 1``).
    time_embedding_dim
        Even dimension of the sinusoidal time embedding.

    Notes
    -----
    ``forward(x, t, cond=None)`` takes ``x`` of shape ``(n, d)``, ``t`` of shape ``(n,)`` (or a
    scalar) and ``cond``:

    - ``None``: the null class for every sample (the unconditional model);
    - an ``int`` in ``[0, K)``: that class for every sample;
    - an integer tensor of shape ``()`` or ``(n,)`` with entries in ``[0, K)`` or
      :data:`NULL_CLASS` (``-1``, the null class) — mixed batches, as in condition-dropout
      training.

    It returns shape ``(n, d)``.
    """

    def __init__(
        self,
        dim: int,
        n_classes: int,
        hidden: int = 128,
        depth: int = 3,
        time_embedding_dim: int = 32,
    ) -> None:
        super().__init__()
        for name, value in (
            ("dim", dim),
            ("n_classes", n_classes),
            ("hidden", hidden),
            ("depth", depth),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"CondMLPScoreNet: parameter '{name}' must be an int >= 1, got {value!r}"
                )
        self.dim = dim
        self.n_classes = n_classes
        self.time_embed = nn.Sequential(
            SinusoidalTimeEmbedding(time_embedding_dim),
            nn.Linear(time_embedding_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.class_embed = nn.Embedding(n_classes + 1, hidden)
        self.input = nn.Linear(dim, hidden)
        self.block_cond = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(depth)
        )
        self.norm_out = nn.SiLU()
        self.output = nn.Linear(hidden, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def class_index(self, cond: Any, n: int, device: torch.device) -> torch.Tensor:
        """Rows of the class embedding for ``cond`` (see the class notes), shape ``(n,)``.

        Raises
        ------
        TypeError
            ``cond`` is not ``None``, an ``int`` or an integer tensor.
        ValueError
            A label outside ``[0, K)`` other than :data:`NULL_CLASS`, or a tensor of the wrong
            shape.
        """
        owner = "CondMLPScoreNet.forward"
        k = self.n_classes
        if cond is None:
            return torch.full((n,), k, dtype=torch.long, device=device)
        if isinstance(cond, bool) or not isinstance(cond, (int, torch.Tensor)):
            raise TypeError(
                f"{owner}: parameter 'cond' must be None, an int class or an integer tensor of "
                f"labels, got {type(cond).__name__}"
            )
        if isinstance(cond, int):
            if not 0 <= cond < k:
                raise ValueError(
                    f"{owner}: parameter 'cond' must be a class in [0, {k}) (or None for the "
                    f"null class), got {cond}"
                )
            return torch.full((n,), cond, dtype=torch.long, device=device)
        if cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool:
            raise TypeError(
                f"{owner}: parameter 'cond' must be an integer tensor of labels, got dtype "
                f"{cond.dtype}"
            )
        if cond.ndim == 0:
            cond = cond.reshape(1).expand(n)
        if cond.shape != (n,):
            raise ValueError(
                f"{owner}: parameter 'cond' must have shape () or ({n},) (one label per "
                f"sample), got {tuple(cond.shape)}"
            )
        bad = (cond != NULL_CLASS) & ((cond < 0) | (cond >= k))
        if bool(bad.any()):
            raise ValueError(
                f"{owner}: parameter 'cond' labels must be in [0, {k}) or {NULL_CLASS} (the "
                f"null class), got {cond[bad][0].item()}"
            )
        idx = torch.where(cond == NULL_CLASS, torch.full_like(cond, k), cond)
        return idx.to(device=device, dtype=torch.long)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None
    ) -> torch.Tensor:
        """Predict the noise; ``x`` is ``(n, dim)``, ``t`` ``(n,)`` or a scalar, see the notes."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"CondMLPScoreNet.forward: parameter 'x' must have shape (n, {self.dim}), got "
                f"{tuple(x.shape)}"
            )
        tt = broadcast_time(t, x, "CondMLPScoreNet.forward")
        e = self.class_embed(self.class_index(cond, x.shape[0], x.device)).to(x.dtype)
        h = self.input(x) + self.time_embed(tt).to(x.dtype) + e
        for cond_proj, block in zip(self.block_cond, self.blocks, strict=True):
            h = h + block(h + cond_proj(e))
        out: torch.Tensor = self.output(self.norm_out(h))
        return out
