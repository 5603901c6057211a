r"""The primal-dual trainer: :ref:`the primal–dual algorithm <primal-dual>` on top of Cooper.

.. math::
    \theta \leftarrow \text{primal step on } \mathcal J(\theta;\lambda),\qquad
    \lambda \leftarrow \Pi_{\mathcal D}\big(\lambda + \eta_{\text{dual}}\,(b - \hat C(\theta))\big)

(for LU the violation is :math:`\hat C - \tau`), with :math:`\mathcal J` one of the primal
forms of :mod:`dualdiff.engine.primal`, :math:`\hat C` a model-based estimate
(:mod:`dualdiff.engine.constraints`) refreshed every ``estimate_every`` steps, and
:math:`\Pi_{\mathcal D}` the projection into the dual domain
(:meth:`dualdiff.problems.DualDomain.project`). Each step is one ``roll`` of a Cooper constrained
optimiser on the :class:`~dualdiff.engine.UnlearningCMP`.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from typing import Any

import torch
from torch import nn

from .._errors import NonFiniteError
from .._validation import check_int, check_positive
from ..duality import DualSolution
from ..models.protocol import model_dtype
from ..problems.contract import UnlearningProblem
from ..problems.dual_domain import DualDomainProjection
from .averaging import WeightAverage, state_module
from .cmp import NonFiniteStep, UnlearningCMP
from .constraints import ESTIMATOR_METHODS, ConstraintEstimate, ConstraintEstimator
from .dual_update import DualUpdateRule, RuleSnapshot, make_dual_update_rule
from .history import StepRecord, TrainingHistory
from .optim import GuardedExtrapolationOptimizer, build_constrained_optimizer
from .options import (
    FORMULATIONS,
    PRIMALS,
    EngineConfigurationError,
    LowEffectiveSampleSizeWarning,
    NonFiniteStepWarning,
    UnknownOptionError,
    resolve,
)
from .primal import DataSampler, PrimalForm, TargetCache, make_primal_form

__all__ = ["Callback", "PrimalDualTrainer"]

Callback = Callable[["PrimalDualTrainer", StepRecord], "bool | None"]
"""``callback(trainer, record)`` after every step; returning ``True`` stops :meth:`fit`."""


def _user_stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` pointing at the first frame outside the engine.

    That is the user's call of ``fit`` or ``step``.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def check_problem(problem: Any, owner: str) -> None:
    """Raise ``TypeError`` unless ``problem`` implements :class:`~dualdiff.UnlearningProblem`."""
    if not isinstance(problem, UnlearningProblem):
        raise TypeError(
            f"{owner}: parameter 'problem' must be a KLConstrainedProblem or "
            f"LikelihoodConstrainedProblem, got {type(problem).__name__}"
        )


def initial_multipliers(problem: Any, init: Any, projection: DualDomainProjection) -> Any:
    """Resolve ``init_multipliers``: ``None``, values ``(m,)``, ``"estimate"`` or a solution.

    ``"estimate"`` solves the dual (closed form) or estimates it (``problem.estimate_dual()``,
    Monte Carlo over pretrained samples); a :class:`~dualdiff.duality.DualSolution` gives its
    multipliers. Both are projected into the margin-shrunk domain the engine works in.
    """
    if isinstance(init, str):
        if init != "estimate":
            raise ValueError(
                "PrimalDualTrainer: parameter 'init_multipliers' must be None, values (m,), "
                f"'estimate' or a DualSolution, got {init!r}"
            )
        init = problem.solve_dual() if problem.has_closed_form else problem.estimate_dual()
    if isinstance(init, DualSolution):
        return projection(init.multipliers.detach().to(torch.float64))
    return init


def _int(value: Any, name: str, low: int) -> int:
    return check_int(value, name, "PrimalDualTrainer", low=low)


@contextmanager
def _as_trainer_error(renames: dict[str, str]) -> Iterator[None]:
    """Re-raise a helper's typed error as the trainer's, with the trainer's parameter names.

    ``DualDomainProjection: parameter 'margin' ...`` becomes ``PrimalDualTrainer: parameter
    'domain_margin' ... (from DualDomainProjection)``; the exception class is kept.
    """
    try:
        yield
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        helper, sep, rest = msg.partition(": ")
        if not sep or helper.startswith("PrimalDualTrainer"):
            raise
        for old, new in renames.items():
            rest = rest.replace(f"'{old}'", f"'{new}'")
        try:
            err = type(exc)(f"PrimalDualTrainer: {rest} (from {helper})")
        except Exception:
            raise exc from None
        raise err from None


def _check_model_dim(problem: Any, model: Any, owner: str) -> None:
    """Score two points of the problem's event shape; refuse a model of another dimension.

    Without it a d=2 model on a d=1 problem is accepted and fails at the first estimate with
    a shape error from deep inside torch. The event shape is ``problem.event_shape`` when the
    problem knows it, else ``(problem.dim,)``; nothing is checked when neither is known.
    """
    try:
        event = tuple(int(v) for v in problem.event_shape)
    except Exception:
        d = getattr(problem, "dim", None)
        if not isinstance(d, int) or isinstance(d, bool):
            return
        event = (d,)
    dtype = model_dtype(model) or torch.float64
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    x = torch.zeros(2, *event, dtype=dtype, device=device)
    shape = f"(2, {', '.join(map(str, event))})"
    try:
        with torch.no_grad():
            out = model.score(x, 0.5)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ValueError(
            f"{owner}: the model cannot score points of the problem's event shape {event} "
            f"with score(x, t) on x of shape {shape}: {type(exc).__name__}: "
            f"{str(exc)[:200]}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{owner}: the model's score(x, t) on x of shape {shape} (the problem's event "
            f"shape) returned {got}; it must return a tensor shaped like x"
        )


def _device(device: Any, owner: str) -> torch.device:
    """``torch.device(device)`` or a ``ValueError`` naming the parameter; ``meta`` is refused."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{owner}: parameter 'device'={device!r} is not a torch device ({exc}); use e.g. "
            "'cpu' or 'cuda:0'"
        ) from None
    if dev.type == "meta":
        raise ValueError(
            f"{owner}: parameter 'device'={device!r}: the meta device holds no data and cannot "
            "train; use e.g. 'cpu' or 'cuda:0'"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{owner}: parameter 'device'={device!r} but CUDA is not available on this machine"
        )
    return dev


class PrimalDualTrainer:
    r"""Fine-tune a score model on an unlearning problem by primal-dual training on Cooper.

    Parameters
    ----------
    problem
        :class:`~dualdiff.KLConstrainedProblem` (RU/FU) or
        :class:`~dualdiff.LikelihoodConstrainedProblem` (LU).
    model
        The trainable score model, initialised at the pretrained weights: an ``nn.Module`` with
        ``score(x, t)`` (e.g. :class:`~dualdiff.engine.TrainableGaussianMixture`) or a wrapper
        with ``.module`` and ``parameters()`` (e.g. :class:`~dualdiff.models.ModuleScoreModel`).
    primal
        ``"reweighted_dsm"`` (default; exact for RU/FU/LU), ``"composed"`` (ESD-style
        composed-score regression; signed denoising loss for FU), ``"sampler"`` (pathwise
        KL + constraint through the sampler; RU and LU) or ``"siss"`` (FU with one forget set:
        the signed loss estimated by SISS's importance sampling,
        :class:`~dualdiff.engine.ImportanceSampledSignedLoss`).
    formulation
        ``"lagrangian"`` or ``"augmented_lagrangian"`` (Cooper formulations).
    optimizer
        Cooper constrained optimiser: ``"simultaneous"``, ``"alternating"`` (primal then dual,
        the dual at the updated model), ``"alternating_dual_primal"`` or ``"extragradient"``.
    dual_optimizer
        ``"sgd"`` (projected gradient ascent) or ``"nupi"`` (Cooper's nuPI controller).
    primal_optimizer
        ``"adam"`` (default) or ``"sgd"``, or a factory ``fn(params, lr=...)``.
    primal_lr
        Step size of the primal optimiser.
    dual_lr
        Step size of the dual optimiser.
    batch_size
        Samples per primal step.
    pretrained_data
        ``sampler(n, generator) -> (n, *event)`` of clean pretrained samples (default
        ``problem.pretrained_sampler()``: the mixture's sampler, the user's data given to a
        model-level problem, or a pool drawn once from the frozen model's sampler).
    unlearn_data
        Samplers of the unlearning distributions (FU signed loss; default
        ``problem.unlearn_samplers()``: the mixtures, or the forget sets).
    estimator
        ``"auto"``, ``"exact"``, ``"ode"``, ``"elbo"`` (see
        :class:`~dualdiff.engine.ConstraintEstimator`) or a callable ``fn(model, generator)``
        returning a
        :class:`~dualdiff.engine.ConstraintEstimate` or constraint values ``(m,)``
        (:meth:`ConstraintEstimate.from_values <dualdiff.ConstraintEstimate.from_values>`
        builds one from per-sample values). The ODE methods solve ``estimate_samples`` ODEs
        per estimate, minutes on a CPU for images: pass a cheap callable there.
    estimate_every
        Estimate the constraints every this many steps; with ``dual_update="every"`` each
        estimate is a dual step (the primal takes ``estimate_every`` steps at fixed
        multipliers).
    dual_update
        Which estimates drive a dual step: ``"every"`` (default), ``"settled"`` (only once the
        model has settled at the current multipliers: inexact dual ascent with a
        relative-error test, :class:`~dualdiff.engine.SettledPrimal` with its defaults) or a
        :class:`~dualdiff.engine.DualUpdateRule` instance (e.g. ``SettledPrimal(kappa=0.1)``).
    estimate_samples
        Monte Carlo sample size of the ODE estimator.
    estimate_objective
        Also estimate the objective (extra ODE pass for the ODE estimator).
    grad_clip
        Clip the global gradient norm of the model to this value (``None``: no clipping).
    ess_warning
        Warn (:class:`~dualdiff.engine.LowEffectiveSampleSizeWarning`) when the population
        effective sample size of the reweighting drops below this (reweighted DSM).
    penalty
        Augmented-Lagrangian penalty :math:`\rho` (default ``dual_lr``).
    lam_max
        Optional user upper bounds on the multipliers (float or ``(m,)``).
    domain_margin
        Relative margin kept from the open boundary of the dual domain.
    init_multipliers
        Initial multipliers ``(m,)`` (default zeros), ``"estimate"`` (warm start from
        ``problem.solve_dual()`` or, for problems stated with models,
        ``problem.estimate_dual()``) or a :class:`~dualdiff.duality.DualSolution` (e.g. the
        result of ``estimate_dual``); the latter two are projected into the domain.
    primal_options
        Extra options of the primal form (sampler: ``steps``, ``reference``,
        ``constraint_gradient``; siss: ``kappa``, ``scaling_norm``; every denoising form
        (reweighted_dsm, composed, siss): ``time_sampling``, ``"uniform"`` (default) or
        ``"log_snr"``, the likelihood weighting, see :class:`~dualdiff.engine.PrimalForm`).
    primal_optimizer_options
        Extra keyword arguments of the primal optimiser.
    dual_optimizer_options
        Extra keyword arguments of the dual optimiser (e.g. nuPI's ``Kp``, ``Ki``, ``ema_nu``).
    callbacks
        ``callback(trainer, record)`` after every step; returning ``True`` stops :meth:`fit`.
    seed
        Seed of the trainer's own generator (batches, noise, estimates).
    device
        Device of batches and multipliers (default: the model's).
    max_skipped_steps
        Stop with :class:`~dualdiff.NonFiniteError` once this many consecutive steps were
        skipped as non-finite (a :class:`~dualdiff.engine.NonFiniteStepWarning` is issued at
        the first skip of such a run); ``None`` never stops.
    ema_decay
        Keep an exponential moving average of the trained weights with this decay in
        ``[0, 1)`` (:class:`~dualdiff.engine.WeightAverage`, updated after every applied
        primal step, checkpointed); :attr:`averaged_model` is the averaged score model.
        ``None`` (default): no average. Fine-tuning a converged diffusion model at a constant
        learning rate leaves the iterates in a noise ball as wide as the changes an unlearning
        level asks for; the average is the model to keep.
    estimate_on
        Which model the constraint estimates (and so the dual steps) are made on:
        ``"model"`` (the iterate) or ``"average"`` (the weight average, so the constraint is
        enforced on the model that is kept; needs ``ema_decay``). ``None`` (default):
        ``"average"`` when ``ema_decay`` is set, else ``"model"``.

    Attributes
    ----------
    history
        :class:`~dualdiff.engine.TrainingHistory` of every step taken (cumulative over
        :meth:`fit` calls; skipped steps included).
    problem
        The unlearning problem.
    model
        The score model being trained.
    module
        The ``nn.Module`` whose ``state_dict`` is the model's trainable state (``model`` itself,
        or its ``.module``).
    form
        The primal step form (a :class:`~dualdiff.engine.PrimalForm`).
    estimator
        The constraint estimator, ``estimator(model, generator)``.
    projection
        The :class:`~dualdiff.engine.DualDomainProjection` applied after every dual step.
    cmp
        The Cooper problem, an :class:`~dualdiff.engine.UnlearningCMP`.
    constrained_optimizer
        The Cooper constrained optimiser that performs each step.
    generator
        The trainer's random generator (seeded with ``seed``).
    average
        The :class:`~dualdiff.engine.WeightAverage` (``None`` without ``ema_decay``).

    Notes
    -----
    A step whose batch, loss, gradient or estimate is not finite is skipped: no parameter is
    updated, the multipliers are restored, and the reason is recorded in
    :attr:`history` (``history.skipped``). The first skip after a good step warns
    (:class:`~dualdiff.engine.NonFiniteStepWarning`); ``max_skipped_steps`` skips in a row raise
    :class:`~dualdiff.NonFiniteError` (a run that cannot make progress stops loudly). An
    exception other than a non-finite value raised by a custom ``estimator`` callable (or a
    data sampler) is not caught: it propagates out of :meth:`step` / :meth:`fit` unchanged,
    after which the trainer is in the state before the failed step only for the
    multipliers; reload a checkpoint to continue. With ``optimizer="alternating"`` the dual
    estimate comes after the primal step; if only it fails, the primal step stands and the
    record says the dual step was skipped.

    Examples
    --------
    >>> prob = KLConstrainedProblem(p0, [q], bounds=[1.0], direction="forward")  # doctest: +SKIP
    >>> model = TrainableGaussianMixture.from_mixture(p0)  # doctest: +SKIP
    >>> trainer = PrimalDualTrainer(prob, model, primal_lr=0.02, dual_lr=0.5)  # doctest: +SKIP
    >>> history = trainer.fit(500)  # doctest: +SKIP
    """

    def __init__(
        self,
        problem: Any,
        model: Any,
        *,
        primal: str = "reweighted_dsm",
        formulation: str = "lagrangian",
        optimizer: str = "simultaneous",
        dual_optimizer: str = "sgd",
        primal_optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
        primal_lr: float = 1e-3,
        dual_lr: float = 0.1,
        batch_size: int = 256,
        pretrained_data: DataSampler | None = None,
        unlearn_data: Sequence[DataSampler] | None = None,
        estimator: str | Callable[..., Any] = "auto",
        estimate_every: int = 1,
        dual_update: str | DualUpdateRule = "every",
        estimate_samples: int = 256,
        estimate_objective: bool = True,
        grad_clip: float | None = None,
        ess_warning: float = 0.05,
        penalty: float | None = None,
        lam_max: Any = None,
        domain_margin: float = 1e-3,
        init_multipliers: Any = None,
        primal_options: dict[str, Any] | None = None,
        primal_optimizer_options: dict[str, Any] | None = None,
        dual_optimizer_options: dict[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        device: torch.device | str | None = None,
        max_skipped_steps: int | None = 10,
        ema_decay: float | None = None,
        estimate_on: str | None = None,
    ) -> None:
        owner = "PrimalDualTrainer"
        check_problem(problem, owner)
        if not callable(getattr(model, "score", None)) or not callable(
            getattr(model, "parameters", None)
        ):
            raise TypeError(
                f"{owner}: parameter 'model' must be a trainable score model with score(x, t) "
                f"and parameters(), got {type(model).__name__}"
            )
        self.problem = problem
        self.model = model
        self.module = state_module(model)
        _check_model_dim(problem, model, owner)
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError(f"{owner}: the model has no trainable parameters")
        self.primal_name = resolve(primal, "primal", owner, PRIMALS)
        self.formulation_name = resolve(formulation, "formulation", owner, FORMULATIONS)
        self.optimizer_name = optimizer
        self.dual_optimizer_name = dual_optimizer
        self.primal_lr = check_positive(primal_lr, "primal_lr", owner)
        self.dual_lr = check_positive(dual_lr, "dual_lr", owner)
        self.batch_size = _int(batch_size, "batch_size", 2)
        self.estimate_every = _int(estimate_every, "estimate_every", 1)
        self.dual_rule = make_dual_update_rule(dual_update, owner)
        self.grad_clip = (
            None if grad_clip is None else check_positive(grad_clip, "grad_clip", owner)
        )
        self.ess_warning = check_positive(ess_warning, "ess_warning", owner, strict=False)
        if not 0.0 <= self.ess_warning <= 1.0:
            raise ValueError(
                f"{owner}: parameter 'ess_warning' must be in [0, 1], got {ess_warning}"
            )
        self.seed = _int(seed, "seed", 0)
        self.max_skipped_steps = (
            None if max_skipped_steps is None else _int(max_skipped_steps, "max_skipped_steps", 1)
        )
        self.device = _device(device, owner) if device is not None else self._params[0].device
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not callable(cb):
                raise TypeError(
                    f"{owner}: parameter 'callbacks' must hold callables "
                    f"callback(trainer, record), got {cb!r}"
                )

        if pretrained_data is None:
            pretrained_data = problem.pretrained_sampler()
        unlearn: Sequence[DataSampler | None]
        if unlearn_data is None:
            unlearn = problem.unlearn_samplers() or [None] * problem.m
        else:
            unlearn = unlearn_data
        if len(unlearn) != problem.m:
            raise ValueError(
                f"{owner}: parameter 'unlearn_data' must have one sampler per constraint "
                f"(m={problem.m}), got {len(unlearn)}"
            )
        unlearn_data = unlearn  # type: ignore[assignment]
        self.targets = TargetCache(problem)
        try:
            self.form: PrimalForm = make_primal_form(
                self.primal_name,
                problem,
                self.targets,
                pretrained_data,
                unlearn,
                **(primal_options or {}),
            )
        except TypeError as exc:  # an unknown keyword of the primal form
            raise TypeError(
                f"{owner}: parameter 'primal_options'={primal_options!r} is not accepted by "
                f"primal={self.primal_name!r} ({exc})"
            ) from None
        except UnknownOptionError as exc:  # a string option of the form (e.g. time_sampling)
            raise UnknownOptionError(
                f"{owner}: parameter 'primal_options'={primal_options!r}: {exc}"
            ) from None
        if not isinstance(estimate_objective, bool):
            raise TypeError(
                f"{owner}: parameter 'estimate_objective' must be True or False, got "
                f"{estimate_objective!r}"
            )
        if isinstance(estimator, str):
            resolve(estimator, "estimator", owner, ESTIMATOR_METHODS)
            self.estimator: Callable[..., Any] = ConstraintEstimator(
                problem,
                method=estimator,  # type: ignore[arg-type]
                n_samples=_int(estimate_samples, "estimate_samples", 2),
                estimate_objective=estimate_objective,
            )
        elif callable(estimator):
            self.estimator = estimator
        else:
            raise TypeError(
                f"{owner}: parameter 'estimator' must be 'auto', 'exact', 'ode', 'elbo' or a "
                f"callable fn(model, generator), got {estimator!r}"
            )
        with _as_trainer_error({"margin": "domain_margin"}):
            self.projection = DualDomainProjection(
                problem, margin=domain_margin, lam_max=lam_max
            )
            init_multipliers = initial_multipliers(problem, init_multipliers, self.projection)
        self.penalty = (
            self.dual_lr if penalty is None else check_positive(penalty, "penalty", owner)
        )
        with _as_trainer_error({}):
            self.cmp = UnlearningCMP(
                problem,
                model,
                self.form,
                self.estimator,
                self.projection,
                formulation=self.formulation_name,
                penalty=self.penalty,
                init_multipliers=init_multipliers,
                device=self.device,
                dual_rule=self.dual_rule,
            )
        self.generator = torch.Generator().manual_seed(self.seed)
        self.cmp.generator = self.generator
        self.average = (
            None if ema_decay is None
            else WeightAverage(model, self._params, ema_decay, owner=owner)
        )
        if estimate_on is None:
            estimate_on = "model" if self.average is None else "average"
        self.estimate_on = resolve(estimate_on, "estimate_on", owner, ("model", "average"))
        if self.estimate_on == "average":
            if self.average is None:
                raise EngineConfigurationError(
                    f"{owner}: parameter 'estimate_on'='average' needs a weight average; pass "
                    "ema_decay (e.g. 0.99) or use estimate_on='model'"
                )
            self.cmp.estimate_model = self.average.model
        self.constrained_optimizer = build_constrained_optimizer(
            self.cmp,
            self._params,
            optimizer=optimizer,
            primal_optimizer=primal_optimizer,
            primal_lr=self.primal_lr,
            dual_optimizer=dual_optimizer,
            dual_lr=self.dual_lr,
            primal_options=primal_optimizer_options,
            dual_options=dual_optimizer_options,
            guard=self._guard,
        )
        self.constrained_optimizer.after_primal = self._after_primal  # type: ignore[attr-defined]
        #: :class:`~dualdiff.engine.TrainingHistory` of every step taken (cumulative over
        #: :meth:`fit` calls; skipped steps included).
        self.history = TrainingHistory()
        self._step = 0
        self._grad_norm: float | None = None
        self._primal_applied = False
        self._ess_key: tuple[float, ...] | None = None
        self._ess_low = False
        self._consecutive_skips = 0
        self._estimate_failing = False

    def __repr__(self) -> str:
        return (
            f"PrimalDualTrainer(kind={self.problem.kind}, primal={self.primal_name!r}, "
            f"formulation={self.formulation_name!r}, optimizer={self.optimizer_name!r}, "
            f"dual_optimizer={self.dual_optimizer_name!r}, dual_update={self.dual_rule!r}, "
            f"step={self._step}, "
            f"multipliers={self.multipliers.tolist()})"
        )

    # ------------------------------------------------------------------ state
    @property
    def multipliers(self) -> torch.Tensor:
        r"""Current :math:`\lambda` ``(m,)`` (float64 copy)."""
        return self.cmp.multiplier_values()

    @property
    def step_count(self) -> int:
        """Number of steps taken (skipped ones included)."""
        return self._step

    @property
    def averaged_model(self) -> Any:
        """The score model holding the weight average (``None`` without ``ema_decay``)."""
        return None if self.average is None else self.average.model

    @property
    def last_estimate(self) -> ConstraintEstimate | None:
        """The latest finite constraint estimate."""
        return self.cmp.last_estimate

    def config(self) -> dict[str, Any]:
        """The options a checkpoint must agree on."""
        return {
            "kind": self.problem.kind,
            "m": self.problem.m,
            "primal": self.primal_name,
            "formulation": self.formulation_name,
            "optimizer": self.optimizer_name,
            "dual_optimizer": self.dual_optimizer_name,
            "dual_update": self.dual_rule.config(),
            **({"primal_options": form_cfg} if (form_cfg := self.form.config()) else {}),
            **({} if self.average is None else {"ema_decay": self.average.decay,
                                                "estimate_on": self.estimate_on}),
        }

    def target(self) -> Any:
        r"""Closed-form target :math:`p_\lambda` at the current multipliers."""
        return self.problem.target(self.multipliers.cpu())

    def certificate(self) -> Any:
        """Duality certificate of the model at the current multipliers.

        Needs an analytic ``log_prob``; see :meth:`~dualdiff.UnlearningProblem.certificate`.
        """
        return self.problem.certificate(self.model, self.multipliers.cpu())

    # ------------------------------------------------------------------ one step
    def _after_primal(self) -> None:
        """Called by the constrained optimiser right after each applied primal update."""
        if self.average is not None:
            self.average.update()

    def _guard(self) -> None:
        grads = [p.grad for p in self._params if p.grad is not None]
        self._primal_applied = False
        if not grads:
            self._grad_norm = None
            return
        total_norm = getattr(nn.utils, "get_total_norm", None)
        if total_norm is not None:
            norm = total_norm(grads)
        else:  # torch < 2.6
            norms = [torch.linalg.vector_norm(g) for g in grads]
            norm = torch.linalg.vector_norm(torch.stack(norms))
        value = float(norm)
        self._grad_norm = value
        if not math.isfinite(value):
            raise NonFiniteStep(f"non-finite gradient (global norm {value})")
        if self.grad_clip is not None and value > self.grad_clip:
            coef = self.grad_clip / (value + 1e-6)
            torch._foreach_mul_(grads, coef)
        self._primal_applied = True

    def _recover(
        self,
        multipliers: torch.Tensor,
        estimate: ConstraintEstimate | None,
        rule_state: RuleSnapshot,
    ) -> None:
        opt = self.constrained_optimizer
        if isinstance(opt, GuardedExtrapolationOptimizer):
            opt.restore_extrapolation()
            self._primal_applied = False
        with torch.no_grad():
            self.cmp.multiplier.weight.data.copy_(multipliers)
        if not self._primal_applied:
            self.cmp.last_estimate = estimate
            self.dual_rule.restore(rule_state)
        opt.zero_grad()

    def step(self) -> StepRecord:
        """One primal-dual step (one Cooper ``roll``); returns its :class:`StepRecord`."""
        k = self._step
        due = k % self.estimate_every == 0
        cmp = self.cmp
        cmp.begin_step()
        self._grad_norm = None
        self._primal_applied = False
        saved_lam = cmp.multiplier.weight.detach().clone()
        saved_est = cmp.last_estimate
        saved_rule = self.dual_rule.snapshot()
        record = StepRecord(step=k)
        try:
            batch = self.form.sample_batch(self.model, self.batch_size, self.generator)
            if not batch.is_finite():
                raise NonFiniteStep("non-finite batch (NaN or inf in the sampled data)")
            if self.optimizer_name == "alternating":
                roll = self.constrained_optimizer.roll(  # type: ignore[call-arg]
                    compute_cmp_state_kwargs={"batch": batch, "estimate": False},
                    compute_violations_kwargs={"estimate": due},
                )
            else:
                roll = self.constrained_optimizer.roll(
                    compute_cmp_state_kwargs={"batch": batch, "estimate": due}
                )
            record.loss = float(roll.loss.detach())
        except NonFiniteError as exc:
            self._recover(saved_lam, saved_est, saved_rule)
            reason = str(exc)
            if self._primal_applied:
                reason = f"dual step skipped (the primal step was applied): {reason}"
            record.skipped = reason
        self._step += 1
        record.multipliers = cmp.multiplier_values().tolist()
        if cmp.step_primal_multipliers is not None:
            record.primal_multipliers = cmp.step_primal_multipliers.tolist()
        stats = dict(cmp.step_stats)
        record.ess = stats.pop("ess", None)
        record.stats = stats
        record.grad_norm = self._grad_norm
        if cmp.step_estimate is not None and record.skipped is None:
            record.estimate = cmp.step_estimate.to_dict()
            record.dual_step = bool(cmp.step_dual)
            record.dual_reason = self.dual_rule.last_reason
        self.history.records.append(record)
        self._check_population_ess(k)
        self._count_skip(record, due)
        return record

    def _count_skip(self, record: StepRecord, due: bool) -> None:
        """Warn at the first of consecutive skipped steps; raise after ``max_skipped_steps``.

        Skipped steps are counted until a step succeeds; while the estimates fail, successful
        steps between two estimation steps do not reset the count (the dual cannot move).
        """
        if record.skipped is None:
            if due or not self._estimate_failing:
                self._consecutive_skips = 0
                self._estimate_failing = False
            return
        self._estimate_failing = self._estimate_failing or due
        self._consecutive_skips += 1
        n, limit = self._consecutive_skips, self.max_skipped_steps
        if n == 1:
            msg = (
                f"PrimalDualTrainer: step {record.step} was skipped: {record.skipped}. "
                + (
                    "max_skipped_steps=None: the trainer does not stop on skipped steps."
                    if limit is None
                    else f"The trainer stops after {limit} skipped steps in a row "
                    "(max_skipped_steps)."
                )
            )
            warnings.warn(msg, NonFiniteStepWarning, stacklevel=_user_stacklevel())
            self.history.warnings.append(msg)
        if limit is not None and n >= limit:
            recent = [r.skipped for r in self.history.records[-n:] if r.skipped]
            reasons = list(dict.fromkeys(recent))[:3]
            raise NonFiniteError(
                f"PrimalDualTrainer: {n} steps in a row (the last at step {record.step}) were "
                f"skipped as non-finite, max_skipped_steps={limit}; the run cannot make "
                f"progress. Reasons: {'; '.join(reasons)}. Check the model's "
                "parameters (trainer.module), the data samplers, the estimator and the step "
                "sizes; the history (trainer.history.skipped) lists every skip"
            )

    def _check_population_ess(self, step: int) -> None:
        """Record (and warn about) the population ESS of each new reweighting.

        ``problem.population_ess(lam)``: on the integration rule for closed-form problems,
        from the estimated log-ratios on pretrained samples at model level (skipped when the
        problem cannot tell).
        """
        lam = self.cmp.step_primal_multipliers
        if not self.form.uses_weights or lam is None:
            return
        key = tuple(lam.tolist())
        if key == self._ess_key:
            return
        self._ess_key = key
        ess = self.problem.population_ess(lam.detach().to(device="cpu", dtype=torch.float64))
        if ess is None:
            return
        value = float(ess)
        self.history.population_ess.append({"step": step, "multipliers": list(key), "value": value})
        if value < self.ess_warning:
            if not self._ess_low:
                msg = (
                    f"PrimalDualTrainer: the population effective sample size of the "
                    f"reweighting w_lam under p0 is {value:.3g} < ess_warning="
                    f"{self.ess_warning} at multipliers {list(key)} (step {step}). Reweighted "
                    "denoising score matching cannot learn targets that move mass off p0's "
                    "support: expect a biased model and unreliable multipliers. Use "
                    "primal='composed' or 'sampler', or less demanding constraint levels."
                )
                warnings.warn(msg, LowEffectiveSampleSizeWarning, stacklevel=_user_stacklevel())
                self.history.warnings.append(msg)
            self._ess_low = True
        else:
            self._ess_low = False

    # ------------------------------------------------------------------ loop
    def fit(self, steps: int, progress: bool = True) -> TrainingHistory:
        """Run ``steps`` primal-dual steps (fewer if a callback returns ``True``).

        Parameters
        ----------
        steps
            Number of steps.
        progress
            Show a tqdm progress bar with the loss and the multipliers when stderr is a
            terminal (tqdm's ``disable=None`` convention: nothing is written into logs).

        Returns
        -------
        TrainingHistory
            :attr:`history` (cumulative over calls).
        """
        steps = _int(steps, "steps", 0)
        from tqdm.auto import tqdm

        # disable=None: tqdm's convention, no bar when stderr is not a terminal (logs, CI)
        bar = tqdm(total=steps, desc="primal-dual", disable=None if progress else True,
                   leave=False)
        try:
            for _ in range(steps):
                record = self.step()
                if progress:
                    bar.update(1)
                    bar.set_postfix(
                        loss=record.loss if record.loss is not None else float("nan"),
                        lam=[round(v, 4) for v in record.multipliers],
                        refresh=False,
                    )
                stop = False
                for cb in self.callbacks:
                    if cb(self, record) is True:
                        stop = True
                if stop:
                    break
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | PathLike[str]) -> None:
        """Save everything needed to resume bit-for-bit (:func:`~.save_checkpoint`)."""
        from .checkpoint import save_checkpoint

        save_checkpoint(self, path)

    def load_checkpoint(
        self, path: str | PathLike[str], *, override_settings: bool = False
    ) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` into this trainer.

        All or nothing: the file is validated (readable, same problem and settings, finite
        values, multipliers in the dual domain) before anything is applied; see
        :func:`~dualdiff.engine.checkpoint.load_checkpoint` for ``override_settings``.
        """
        from .checkpoint import load_checkpoint

        load_checkpoint(self, path, override_settings=override_settings)

    def state_dict(self) -> dict[str, Any]:
        """The complete state (model, optimisers, multipliers, history, RNGs) as a dictionary.

        For users who checkpoint with their own tools; :meth:`load_state_dict` restores it.
        The dictionary holds copies (tensors and plain containers, safe for
        ``torch.save``/``torch.load(weights_only=True)``).
        """
        from .checkpoint import trainer_state

        return trainer_state(self)

    def load_state_dict(self, state: dict[str, Any], *, override_settings: bool = False) -> None:
        """Restore a :meth:`state_dict` into this trainer (all or nothing).

        See :meth:`load_checkpoint` for the checks and ``override_settings``.
        """
        from .checkpoint import load_trainer_state

        load_trainer_state(self, state, override_settings=override_settings)
