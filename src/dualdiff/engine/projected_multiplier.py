r"""Lagrange multipliers that never leave the problem's dual domain.

Cooper's :class:`~cooper.multipliers.DenseMultiplier` only clamps inequality multipliers at
zero after each dual step. The unlearning duals have smaller domains (owned by each problem,
:class:`~dualdiff.problems.DualDomain`); :class:`ProjectedMultiplier` applies the problem's
:class:`~dualdiff.problems.DualDomainProjection` in Cooper's ``post_step_`` hook, which every
Cooper constrained optimiser calls after every dual (and dual extrapolation) step.
"""

from __future__ import annotations

from typing import Any

import torch
from cooper.multipliers import DenseMultiplier

from .._constants import FLOAT64 as _DTYPE
from .._errors import DualDomainError
from .._validation import as_tensor
from ..problems.dual_domain import DualDomainProjection

__all__ = ["ProjectedMultiplier"]



class ProjectedMultiplier(DenseMultiplier):
    r"""A :class:`cooper.multipliers.DenseMultiplier` projected into the dual domain.

    After every dual step Cooper calls :meth:`post_step_`; instead of Cooper's
    :math:`\max(0,\lambda)` it applies :class:`DualDomainProjection`. A dual step therefore
    computes :math:`\lambda \leftarrow \Pi_{\mathcal D}(\lambda + \eta\,\hat c)` with
    :math:`\hat c` the estimated violations (the dual step of
    :ref:`the primal–dual algorithm <primal-dual>`), however large the step :math:`\eta` is.

    Parameters
    ----------
    projection
        The domain map.
    init
        Initial multipliers ``(m,)`` (default zeros); must lie in the domain.
    device
        Device of the multiplier (float64).
    """

    def __init__(
        self,
        projection: DualDomainProjection,
        init: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        m = projection.m
        if init is None:
            init = torch.zeros(m, dtype=_DTYPE)
        init = as_tensor(init, "init_multipliers", "ProjectedMultiplier", dtype=_DTYPE).reshape(-1)
        if init.numel() != m:
            raise ValueError(
                f"ProjectedMultiplier: parameter 'init_multipliers' must have one value per "
                f"constraint (m={m}), got {init.tolist()}"
            )
        if not projection.contains(init):
            raise DualDomainError(
                f"ProjectedMultiplier: parameter 'init_multipliers'={init.tolist()} is outside "
                f"the dual domain ({projection.problem.domain_description}; upper bounds "
                f"{projection.upper.tolist()}, sum bound {projection.cap})"
            )
        dev = None if device is None else torch.device(device)
        super().__init__(num_constraints=m, init=init.clone(), device=dev, dtype=_DTYPE)
        self.projection = projection
        self._projected: torch.Tensor | None = None

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Load the multipliers like ``torch.nn.Module.load_state_dict``; clear the cache."""
        self._projected = None
        return super().load_state_dict(*args, **kwargs)

    @torch.no_grad()
    def post_step_(self) -> None:
        """Project the multipliers in place into the dual domain (called by Cooper).

        Cooper calls this after every dual step, also when no constraint was observed; the
        projection is skipped when the multipliers did not change since the last one.
        """
        if self._projected is not None and torch.equal(self.weight.data, self._projected):
            return
        projected = self.projection(self.weight.data)
        self.weight.data.copy_(projected.to(self.weight.device))
        self._projected = self.weight.data.clone()

    def __repr__(self) -> str:
        return f"ProjectedMultiplier(num_constraints={self.weight.shape[0]}, {self.projection!r})"
