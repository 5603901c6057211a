"""Training with a hand-set weight: the NegGrad loss and the fixed-weight trainer.

See :mod:`dualdiff.baselines` for the overview.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._constants import FLOAT64 as _DTYPE
from .._errors import DualDomainError
from .._validation import as_tensor, check_positive
from ..diffusion.losses import denoising_score_matching_loss
from ..engine.history import TrainingHistory
from ..engine.trainer import PrimalDualTrainer, check_problem
from ..models.interface import check_score_model
from ..models.schedule import NoiseSchedule
from ..problems.dual_domain import DualDomainProjection

__all__ = [
    "FixedWeightTrainer",
    "neggrad_loss",
    "train_fixed_weight",
]



# ------------------------------------------------------------------------------------ NegGrad
def neggrad_loss(
    model: Any,
    x_retain: torch.Tensor | None,
    x_forget: torch.Tensor,
    weight: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    forget_weight: float = 1.0,
    t: float | None = None,
    noise: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    r"""NegGrad loss: gradient *ascent* on the forget set's denoising loss, plus a retain term.

    .. math::
        \mathcal L(\theta) = \mu\,\frac1{n_r}\sum_{j}\ell_\theta(x^{r}_j)
        \;-\;\nu\,\frac1{n_f}\sum_{j}\ell_\theta(x^{f}_j),

    with :math:`\ell_\theta` the per-sample denoising score-matching loss
    (:func:`~dualdiff.diffusion.losses.denoising_score_matching_loss`), :math:`\mu` = ``weight`` and
    :math:`\nu` = ``forget_weight``. Without retain samples (``x_retain=None``) it is pure
    NegGrad, :math:`-\nu\,\overline{\ell_\theta}(x^f)`.

    Relation to FU (:doc:`/mathematics`): if :math:`p_0=(1-a)q_r+a\,q` the population loss is, up to
    the positive factor :math:`\mu/(1-a)`, FU's Lagrangian at
    :math:`\lambda = a + \nu(1-a)/\mu` (:func:`neggrad_lambda`). Whenever the retained data
    do not cover the forget data (:math:`\lambda_{\max} = a`), every :math:`\nu>0` asks for
    :math:`\lambda>\lambda_{\max}`: the objective is unbounded below and NegGrad must be
    stopped early. Pure NegGrad (:math:`\mu=0`) is unbounded for every weight.

    Parameters
    ----------
    model
        A score model (``score(x, t)``, optionally ``eps``), trainable.
    x_retain
        Retain samples ``(n_r, *event)``, or ``None`` for pure NegGrad.
    x_forget
        Forget samples ``(n_f, *event)``.
    weight
        Retain weight :math:`\mu \ge 0` (ignored when ``x_retain`` is ``None``).
    generator
        Random generator of the diffusion times and noise. The retain batch draws first (its
        times, then its noise), then the forget batch.
    forget_weight
        Forget weight :math:`\nu > 0`.
    t
        Optional fixed diffusion time for every sample (default: uniform in
        :math:`[t_{\min}, t_{\max}]`).
    noise
        Optional fixed noise ``(noise_retain, noise_forget)`` with the shapes of the batches
        (``noise_retain`` may be ``None`` without retain samples).
    schedule
        Noise schedule (default ``model.schedule`` or a VP schedule).

    Returns
    -------
    torch.Tensor
        Scalar loss, differentiable in the model's parameters. Minimise it.

    Raises
    ------
    TypeError
        ``model`` is not a score model, ``noise`` is not a pair.
    ValueError
        Negative ``weight``, non-positive ``forget_weight``, bad shapes (from the
        denoising loss).

    References
    ----------
    A. Golatkar, A. Achille, S. Soatto. *Eternal Sunshine of the Spotless Net: Selective
    Forgetting in Deep Networks.* CVPR 2020 (fine-tuning with gradient ascent on the forget
    set as a baseline); M. Kurmanji et al., *Towards Unbounded Machine Unlearning*, NeurIPS
    2023 ("NegGrad+", with a retain term).
    """
    owner = "neggrad_loss"
    check_score_model(model, "model", owner)
    mu = check_positive(weight, "weight", owner, strict=False)
    nu = check_positive(forget_weight, "forget_weight", owner)
    if noise is not None and (not isinstance(noise, tuple) or len(noise) != 2):
        raise TypeError(
            f"{owner}: parameter 'noise' must be a pair (noise_retain, noise_forget), got "
            f"{type(noise).__name__}"
        )
    noise_r, noise_f = noise if noise is not None else (None, None)
    loss_r: torch.Tensor | None = None
    if x_retain is not None:
        loss_r = denoising_score_matching_loss(
            model, x_retain, t=t, generator=generator, noise=noise_r, schedule=schedule
        )
    loss_f = denoising_score_matching_loss(
        model, x_forget, t=t, generator=generator, noise=noise_f, schedule=schedule
    )
    out = -nu * loss_f
    if loss_r is not None:
        out = out + mu * loss_r
    return out


# ------------------------------------------------------------------------- fixed-weight training
_DUAL_OPTIONS = (
    "dual_lr",
    "dual_optimizer",
    "dual_optimizer_options",
    "formulation",
    "penalty",
    "init_multipliers",
    "lam_max",
    "dual_update",
)


class FixedWeightTrainer(PrimalDualTrainer):
    r"""Train a score model at a *fixed* multiplier with the engine's primal step.

    This is how weight-based baselines are trained (ESD with a hand-set guidance scale, SISS
    with a hand-set weight): the primal step is exactly :class:`PrimalDualTrainer`'s
    (same primal form, optimiser, batches, gradient guard and clipping, history and
    checkpoints), and the dual step is disabled — the Cooper dual optimiser runs with step
    size 0, so

    .. math::
        \theta \leftarrow \text{primal step on } \mathcal J(\theta;\lambda_{\text{fixed}}),
        \qquad \lambda \leftarrow \lambda .

    Constraint estimates are still made every ``estimate_every`` steps and recorded in
    :attr:`history` (``record.estimate``): they report the separation the fixed weight
    reaches, they do not move :math:`\lambda`. With the same options and ``seed`` a fixed-
    weight run and a primal-dual run draw the same batches.

    Parameters
    ----------
    problem
        :class:`~dualdiff.KLConstrainedProblem` or
        :class:`~dualdiff.LikelihoodConstrainedProblem`. Its levels only enter the recorded
        violations.
    model
        Trainable score model (see :class:`PrimalDualTrainer`).
    multipliers
        The fixed :math:`\lambda`, a float or shape ``(m,)``, inside the dual domain (with the
        engine's ``domain_margin``). Use :func:`esd_lambda` to convert ESD guidance scales.
    **options
        Any other :class:`PrimalDualTrainer` option (``primal``, ``optimizer``,
        ``primal_optimizer``, ``primal_lr``, ``batch_size``, ``estimator``,
        ``estimate_every``, ``grad_clip``, ``seed``, ...). Options of the dual step
        (``dual_lr``, ``dual_optimizer``, ``dual_optimizer_options``, ``formulation``,
        ``penalty``, ``init_multipliers``, ``lam_max``) are rejected.

    Raises
    ------
    TypeError
        A dual-step option was passed.
    DualDomainError
        ``multipliers`` outside the (margin-shrunk) dual domain.
    """

    def __init__(self, problem: Any, model: Any, multipliers: Any, **options: Any) -> None:
        owner = "FixedWeightTrainer"
        bad = sorted(k for k in options if k in _DUAL_OPTIONS)
        if bad:
            raise TypeError(
                f"{owner}: option(s) {', '.join(bad)} configure the dual step, which a "
                "fixed-weight trainer does not take; pass the weight as 'multipliers'"
            )
        check_problem(problem, owner)
        lam = as_tensor(multipliers, "multipliers", owner, dtype=_DTYPE).reshape(-1)
        if lam.numel() != problem.m:
            raise ValueError(
                f"{owner}: parameter 'multipliers' must have one value per constraint "
                f"(m={problem.m}), got {lam.tolist()}"
            )
        margin = options.get("domain_margin", 1e-3)
        if not DualDomainProjection(problem, margin=margin).contains(lam):
            raise DualDomainError(
                f"{owner}: parameter 'multipliers'={lam.tolist()} is outside the dual domain "
                f"({problem.domain_description}) shrunk by domain_margin={margin}"
            )
        # The dual step is switched off by the "frozen" dual-update rule: no estimate drives a
        # dual step, so the multipliers stay at init_multipliers (no step size is involved).
        super().__init__(
            problem, model, init_multipliers=lam, formulation="lagrangian",
            dual_optimizer="sgd", dual_update="frozen", **options,
        )
        self.fixed_multipliers = lam.clone()

    def __repr__(self) -> str:
        return (
            f"FixedWeightTrainer(kind={self.problem.kind}, primal={self.primal_name!r}, "
            f"multipliers={self.fixed_multipliers.tolist()}, step={self.step_count})"
        )

    def config(self) -> dict[str, Any]:  # noqa: D102
        cfg = super().config()
        cfg["fixed_multipliers"] = self.fixed_multipliers.tolist()
        return cfg


def train_fixed_weight(
    problem: Any,
    model: Any,
    lam: Any,
    steps: int,
    *,
    progress: bool = False,
    callbacks: Sequence[Any] = (),
    **options: Any,
) -> TrainingHistory:
    r"""Train ``model`` in place for ``steps`` steps at the fixed multiplier ``lam``.

    Shorthand for ``FixedWeightTrainer(problem, model, lam, **options).fit(steps)``; see
    :class:`FixedWeightTrainer`.

    Parameters
    ----------
    problem, model
        As for :class:`PrimalDualTrainer`.
    lam
        Fixed multiplier(s), a float or shape ``(m,)``.
    steps
        Number of primal steps.
    progress
        Show a progress bar.
    callbacks
        ``callback(trainer, record)`` after every step; returning ``True`` stops early.
    **options
        Primal options of :class:`PrimalDualTrainer` (``primal``, ``primal_lr``,
        ``batch_size``, ``estimate_every``, ``seed``, ...).

    Returns
    -------
    TrainingHistory
        One record per step; ``record.multipliers`` stays equal to ``lam``.
    """
    trainer = FixedWeightTrainer(problem, model, lam, callbacks=callbacks, **options)
    return trainer.fit(steps, progress=progress)
