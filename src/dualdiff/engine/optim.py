"""Cooper's constrained optimisers, selected by name, with a pre-step guard.

The guard runs between Cooper's backward pass and its primal (extrapolation) step: it
computes the global gradient norm, raises :class:`~dualdiff.engine.cmp.NonFiniteStep` when it
is not finite (so no parameter is touched) and clips the gradients when asked. It is added by
subclassing each Cooper optimiser and overriding ``primal_step`` /
``primal_extrapolation_step`` only; Cooper's ``roll`` is used unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from cooper.optim import (
    AlternatingDualPrimalOptimizer,
    AlternatingPrimalDualOptimizer,
    ConstrainedOptimizer,
    ExtrapolationConstrainedOptimizer,
    SimultaneousOptimizer,
)
from cooper.optim.torch_optimizers import ExtraAdam, ExtraSGD, nuPI

from .options import (
    DUAL_OPTIMIZERS,
    OPTIMIZERS,
    PRIMAL_OPTIMIZERS,
    EngineConfigurationError,
    resolve,
)

__all__ = ["build_constrained_optimizer"]

Guard = Callable[[], None]


class _ExtraSGD(ExtraSGD):
    """:class:`cooper.optim.ExtraSGD` whose ``load_state_dict`` works.

    Cooper 1.0.1's ``ExtraSGD.__setstate__`` calls ``super(torch.optim.SGD, self)`` although
    ``ExtraSGD`` does not derive from ``torch.optim.SGD``, so loading a state dict raises
    ``TypeError``; this subclass restores the plain ``Optimizer.__setstate__``.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        torch.optim.Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)


class _Guarded:
    """Mixin: call ``self.guard()`` before every primal step; skip empty dual steps.

    Cooper calls ``dual_step`` on every roll. When no constraint contributed to the dual
    Lagrangian (not an estimation step) no multiplier has a gradient, every dual optimiser
    step is a no-op and the multipliers are already projected, so the call is skipped.
    """

    guard: Guard | None = None
    after_primal: Guard | None = None
    cmp: Any
    _dual_params: list[torch.Tensor] | None = None

    def primal_step(self) -> None:
        if self.guard is not None:
            self.guard()
        super().primal_step()  # type: ignore[misc]
        if self.after_primal is not None:
            self.after_primal()

    def _has_dual_gradient(self) -> bool:
        if self._dual_params is None:
            self._dual_params = list(self.cmp.dual_parameters())
        return any(p.grad is not None for p in self._dual_params)

    def dual_step(self) -> None:
        if self._has_dual_gradient():
            super().dual_step()  # type: ignore[misc]


class GuardedSimultaneousOptimizer(_Guarded, SimultaneousOptimizer):
    """:class:`cooper.optim.SimultaneousOptimizer` with the pre-step guard."""


class GuardedAlternatingPrimalDualOptimizer(_Guarded, AlternatingPrimalDualOptimizer):
    """:class:`cooper.optim.AlternatingPrimalDualOptimizer` with the pre-step guard."""


class GuardedAlternatingDualPrimalOptimizer(_Guarded, AlternatingDualPrimalOptimizer):
    """:class:`cooper.optim.AlternatingDualPrimalOptimizer` with the pre-step guard."""


class GuardedExtrapolationOptimizer(_Guarded, ExtrapolationConstrainedOptimizer):
    """:class:`cooper.optim.ExtrapolationConstrainedOptimizer` with the pre-step guard.

    The optimisers' states (e.g. ``ExtraAdam``'s ``step``, ``exp_avg``, ``exp_avg_sq``) are
    saved before each extrapolation half-step, so :meth:`restore_extrapolation` undoes both
    the parameters and the optimiser states when the update half-step is skipped.
    """

    _saved_states: list[tuple[Any, dict[Any, Any]]]

    def roll(self, *args: Any, **kwargs: Any) -> Any:
        self._saved_states = []
        return super().roll(*args, **kwargs)

    def _save_states(self, opts: Iterable[Any]) -> None:
        if not hasattr(self, "_saved_states"):
            self._saved_states = []
        for opt in opts:
            self._saved_states.append(
                (opt, {p: copy.deepcopy(st) for p, st in opt.state.items()})
            )

    def primal_extrapolation_step(self) -> None:
        if self.guard is not None:
            self.guard()
        self._save_states(self.primal_optimizers or [])
        super().primal_extrapolation_step()

    def dual_extrapolation_step(self) -> None:
        if self._has_dual_gradient():
            self._save_states(self.dual_optimizers or [])
            super().dual_extrapolation_step()

    def restore_extrapolation(self) -> None:
        """Undo a pending extrapolation (after a skipped second half-step).

        Restores the parameters saved by the extrapolation and the optimiser states from
        before it.
        """
        opts: list[Any] = [*(self.primal_optimizers or []), *(self.dual_optimizers or [])]
        for opt in opts:
            copies = getattr(opt, "params_copy", None)
            if copies:
                params = [p for group in opt.param_groups for p in group["params"]]
                with torch.no_grad():
                    for p, saved in zip(params, copies, strict=True):
                        p.data = saved
                opt.params_copy = []
        for opt, state in getattr(self, "_saved_states", []):
            opt.state.clear()
            opt.state.update(state)
        self._saved_states = []


def _construct(
    cls: Any, params: list[Any], lr: float, options: dict[str, Any], name: str, owner: str
) -> torch.optim.Optimizer:
    """``cls(params, lr=lr, **options)`` with torch's errors turned into ones naming ``name``."""
    try:
        return cls(params, lr=lr, **options)  # type: ignore[no-any-return]
    except (TypeError, ValueError, KeyError) as exc:
        raise EngineConfigurationError(
            f"{owner}: parameter '{name}'={options!r} is not accepted by {cls.__name__} "
            f"({type(exc).__name__}: {exc})"
        ) from None


_CLASSES: dict[str, type[ConstrainedOptimizer]] = {
    "simultaneous": GuardedSimultaneousOptimizer,
    "alternating": GuardedAlternatingPrimalDualOptimizer,
    "alternating_dual_primal": GuardedAlternatingDualPrimalOptimizer,
    "extragradient": GuardedExtrapolationOptimizer,
}


def build_constrained_optimizer(
    cmp: Any,
    primal_params: Iterable[torch.nn.Parameter],
    *,
    optimizer: str = "simultaneous",
    primal_optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
    primal_lr: float = 1e-3,
    dual_optimizer: str = "sgd",
    dual_lr: float = 1e-2,
    primal_options: dict[str, Any] | None = None,
    dual_options: dict[str, Any] | None = None,
    guard: Guard | None = None,
) -> ConstrainedOptimizer:
    """Build one of Cooper's constrained optimisers for ``cmp``.

    Parameters
    ----------
    cmp
        The :class:`~cooper.ConstrainedMinimizationProblem`.
    primal_params
        Model parameters.
    optimizer
        ``"simultaneous"``, ``"alternating"`` (primal then dual),
        ``"alternating_dual_primal"`` or ``"extragradient"``.
    primal_optimizer
        ``"adam"`` or ``"sgd"`` (Cooper's ``ExtraAdam`` / ``ExtraSGD`` for
        ``"extragradient"``), or a factory ``fn(params, lr=...) -> torch.optim.Optimizer``.
    primal_lr
        Step size of the primal optimiser.
    dual_lr
        Step size of the dual optimiser.
    dual_optimizer
        ``"sgd"`` (projected gradient ascent; ``ExtraSGD`` for extragradient) or ``"nupi"``
        (:class:`cooper.optim.nuPI`, options ``Kp``, ``Ki``, ``ema_nu`` in ``dual_options``).
    primal_options
        Extra keyword arguments of the primal optimiser.
    dual_options
        Extra keyword arguments of the dual optimiser.
    guard
        Called before every primal (extrapolation) step.

    Raises
    ------
    UnknownOptionError
        An unknown name.
    EngineConfigurationError
        ``"nupi"`` with ``"extragradient"`` (nuPI has no extrapolation step).
    """
    owner = "PrimalDualTrainer"
    optimizer = resolve(optimizer, "optimizer", owner, OPTIMIZERS)
    dual_optimizer = resolve(dual_optimizer, "dual_optimizer", owner, DUAL_OPTIMIZERS)
    extra = optimizer == "extragradient"
    popts = dict(primal_options or {})
    dopts = dict(dual_options or {})
    params = list(primal_params)
    if callable(primal_optimizer):
        primal = primal_optimizer(params, lr=primal_lr, **popts)
    else:
        name = resolve(primal_optimizer, "primal_optimizer", owner, PRIMAL_OPTIMIZERS)
        if name == "adam":
            cls: Any = ExtraAdam if extra else torch.optim.Adam
        else:
            cls = _ExtraSGD if extra else torch.optim.SGD
        primal = _construct(cls, params, primal_lr, popts, "primal_optimizer_options", owner)
    dual_params = list(cmp.dual_parameters())
    if dual_optimizer == "nupi":
        if extra:
            raise EngineConfigurationError(
                f"{owner}: dual_optimizer='nupi' cannot be combined with "
                "optimizer='extragradient' (nuPI has no extrapolation step); use "
                "dual_optimizer='sgd' or another optimizer"
            )
        dual: torch.optim.Optimizer = _construct(
            nuPI, dual_params, dual_lr, {"maximize": True, **dopts}, "dual_optimizer_options",
            owner,
        )
    else:
        dual = _construct(
            _ExtraSGD if extra else torch.optim.SGD, dual_params, dual_lr,
            {"maximize": True, **dopts}, "dual_optimizer_options", owner,
        )
    try:
        opt = _CLASSES[optimizer](cmp, primal_optimizers=primal, dual_optimizers=dual)
    except RuntimeError as exc:  # Cooper: optimisers without extrapolation
        raise EngineConfigurationError(
            f"{owner}: optimizer='extragradient' needs primal and dual optimisers with an "
            f"extrapolation step (Cooper's ExtraAdam/ExtraSGD): {exc}"
        ) from exc
    opt.guard = guard  # type: ignore[attr-defined]
    return opt
