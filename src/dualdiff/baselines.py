r"""Weight-based unlearning baselines as fixed-multiplier special cases (see :doc:`/baselines`).

The usual unlearning baselines for diffusion models use *the same operators* as the
constrained problems, with the multiplier set by hand instead of by duality. This module
introduces no new formula; it converts each baseline's hyperparameter into a multiplier and
hands it to the existing operators:

* **ESD** (Gandikota et al., *Erasing Concepts from Diffusion Models*, ICCV 2023) — the RU
  target at a fixed :math:`\lambda`: its negative-guidance score
  :math:`s_0 + \eta\,(s_0 - s_q)` is :math:`s_\lambda` with
  :math:`\lambda = \eta/(1+\eta)` (:func:`esd_lambda`, :func:`esd_eta`, :func:`ESD`).
* **SISS** (Alberti, Hasanaliyev, Shah & Ermon, *Data Unlearning in Diffusion Models*,
  ICLR 2025, arXiv:2503.01034) — at the population level, the FU Lagrangian at a fixed
  :math:`\lambda`, whose minimiser is the signed mixture :math:`(p_0-\lambda q)/(1-\lambda)`
  (:func:`SISS`).
* **NegGrad** (gradient ascent on the forget loss; Golatkar, Achille & Soatto, *Eternal
  Sunshine of the Spotless Net*, CVPR 2020, and the standard "NegGrad+" with a retain term) —
  :func:`neggrad_loss`, built on :func:`~dualdiff.losses.denoising_score_matching_loss`; with a
  retain term it is the FU Lagrangian at :func:`neggrad_lambda`.

Training with a hand-set weight uses the engine's own primal step:
:class:`FixedWeightTrainer` is a :class:`~dualdiff.engine.PrimalDualTrainer` whose dual step
is switched off, and :func:`train_fixed_weight` runs it. A baseline and a constrained run with
the same options and seed therefore differ *only* in how :math:`\lambda` is chosen.

See the documentation page *Baselines as fixed multipliers* for the derivations and for why a
fixed weight needs a sweep to reach a requested level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from ._errors import DualDomainError
from ._validation import as_tensor, check_choice, check_positive
from .engine.history import TrainingHistory
from .problems.dual_domain import DualDomainProjection
from .engine.trainer import PrimalDualTrainer, check_problem
from .losses import check_score_model, denoising_score_matching_loss
from .models.schedule import NoiseSchedule
from .targets import GeometricTarget, SignedMixtureTarget

__all__ = [
    "ESD",
    "SISS",
    "Anchor",
    "FixedWeightTrainer",
    "esd_eta",
    "esd_lambda",
    "neggrad_lambda",
    "neggrad_loss",
    "train_fixed_weight",
]

_DTYPE = torch.float64
Anchor = Literal["unconditional", "conditional"]
_ANCHORS: tuple[str, ...] = ("unconditional", "conditional")


def _nonnegative_vector(value: Any, name: str, owner: str) -> torch.Tensor:
    t = as_tensor(value, name, owner, dtype=_DTYPE).reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{owner}: parameter '{name}' must not be empty")
    if bool((t < 0).any()):
        raise ValueError(f"{owner}: parameter '{name}' must be >= 0, got {t.tolist()}")
    return t


# ---------------------------------------------------------------------------------------- ESD
def esd_lambda(eta: Any, anchor: Anchor = "unconditional") -> torch.Tensor:
    r"""RU multipliers equivalent to ESD guidance scales.

    ESD's original formulation (anchored on the unconditional prediction) trains towards

    .. math::
        s_{\mathrm{ESD}} = s_0 + \sum_i \eta_i\,(s_0 - s_i),

    which is the RU target score :math:`s_\lambda = (s_0 - \sum_i\lambda_i s_i)/(1-\Lambda)`
    (:doc:`/mathematics`) for

    .. math::
        \lambda_i = \frac{\eta_i}{1+\sum_j\eta_j},\qquad \Lambda = \frac{\sum_j\eta_j}
        {1+\sum_j\eta_j} < 1

    (one concept: :math:`\lambda = \eta/(1+\eta)`). ESD's current code anchors on the
    *conditional* prediction, :math:`(1-\eta)\,s_c + \eta\,s_0 = s_0 + (\eta-1)(s_0-s_c)`:
    the same form with guidance :math:`\eta-1`, i.e. :math:`\lambda = 1 - 1/\eta`, defined for
    one concept and :math:`\eta \ge 1` (``anchor="conditional"``).

    Parameters
    ----------
    eta
        Guidance scale(s) :math:`\eta_i \ge 0`, a float or shape ``(m,)``
        (``anchor="conditional"``: one value :math:`\ge 1`).
    anchor
        ``"unconditional"`` (ESD paper and original code) or ``"conditional"`` (current code).

    Returns
    -------
    torch.Tensor
        :math:`\lambda`, shape ``(m,)``, float64, in the RU domain :math:`\lambda\ge0`,
        :math:`\Lambda<1`.

    Raises
    ------
    ValueError
        Negative ``eta``, ``eta < 1`` or several values with ``anchor="conditional"``, or an
        unknown ``anchor``.

    References
    ----------
    R. Gandikota, J. Materzyńska, J. Fiotto-Kaufman, D. Bau. *Erasing Concepts from Diffusion
    Models.* ICCV 2023.
    """
    owner = "esd_lambda"
    check_choice(anchor, "anchor", owner, _ANCHORS)
    e = _nonnegative_vector(eta, "eta", owner)
    if anchor == "conditional":
        if e.numel() != 1 or float(e[0]) < 1.0:
            raise ValueError(
                f"{owner}: with anchor='conditional' parameter 'eta' must be one value >= 1 "
                f"((1-eta) s_c + eta s_0 has guidance eta-1 >= 0), got {e.tolist()}"
            )
        return 1.0 - 1.0 / e
    return e / (1.0 + e.sum())


def esd_eta(lam: Any, anchor: Anchor = "unconditional") -> torch.Tensor:
    r"""ESD guidance scales equivalent to RU multipliers (inverse of :func:`esd_lambda`).

    .. math::
        \eta_i = \frac{\lambda_i}{1-\Lambda}\quad(\text{unconditional anchor}),\qquad
        \eta = \frac{1}{1-\lambda}\quad(\text{conditional anchor, one concept}).

    These are the coefficients of :math:`(s_0 - s_i)` in the RU target score
    (:doc:`/mathematics`).

    Parameters
    ----------
    lam
        Multipliers :math:`\lambda_i\ge0` with :math:`\Lambda=\sum_i\lambda_i<1`, a float or
        shape ``(m,)``.
    anchor
        ``"unconditional"`` or ``"conditional"`` (see :func:`esd_lambda`).

    Returns
    -------
    torch.Tensor
        :math:`\eta`, shape ``(m,)``, float64.

    Raises
    ------
    ValueError
        Negative multipliers, :math:`\Lambda \ge 1` (outside the RU domain: no ESD scale
        corresponds), several multipliers with ``anchor="conditional"``, unknown ``anchor``.
    """
    owner = "esd_eta"
    check_choice(anchor, "anchor", owner, _ANCHORS)
    lam_t = _nonnegative_vector(lam, "lam", owner)
    total = float(lam_t.sum())
    if not total < 1.0:
        raise ValueError(
            f"{owner}: parameter 'lam' must sum to < 1 (the RU dual domain), got {lam_t.tolist()} "
            f"(sum {total})"
        )
    if anchor == "conditional":
        if lam_t.numel() != 1:
            raise ValueError(
                f"{owner}: anchor='conditional' is defined for one concept, got {lam_t.numel()} "
                "multipliers"
            )
        return 1.0 / (1.0 - lam_t)
    return lam_t / (1.0 - total)


def _require_kind(problem: Any, kind: str, owner: str, what: str) -> None:
    if getattr(problem, "kind", None) != kind:
        raise TypeError(
            f"{owner}: parameter 'problem' must be {what} (kind {kind!r}), got "
            f"{type(problem).__name__} (kind {getattr(problem, 'kind', None)!r})"
        )


def ESD(problem: Any, eta: Any, anchor: Anchor = "unconditional") -> GeometricTarget:
    r"""The ESD target at guidance scale ``eta``: the RU target at :math:`\lambda=\eta/(1+\eta)`.

    .. math::
        p_{\mathrm{ESD}} \propto p_0\prod_i\Big(\frac{p_0}{q_i}\Big)^{\eta_i},\qquad
        s_{\mathrm{ESD}} = s_0 + \sum_i\eta_i\,(s_0 - s_i)\ \text{ at } t = 0,

    i.e. ``problem.target(esd_lambda(eta))``. Its ``score(x, t)`` at :math:`t>0` is the
    *composed* score :math:`s_{0,t} + \sum_i\eta_i(s_{0,t}-s_{i,t})` of the noised models —
    exactly what ESD regresses on, and only an approximation of the noised target
    (:ref:`diffusion-view`; :class:`~dualdiff.ExactNoisedTarget` gives the exact one in low
    dimension).

    Parameters
    ----------
    problem
        A :class:`~dualdiff.ReverseKLProblem` (``KLConstrainedProblem(...,
        direction="reverse")``) whose unlearning distributions are the concepts
        :math:`q_i = p_0(\cdot\mid c_i)`; its levels are not used.
    eta
        Guidance scale(s), a float or shape ``(m,)``.
    anchor
        ``"unconditional"`` (default) or ``"conditional"``; see :func:`esd_lambda`.

    Returns
    -------
    GeometricTarget
        Density, score and sampler of the ESD target; ``.multipliers`` is :math:`\lambda`.

    Raises
    ------
    TypeError
        ``problem`` is not a reverse-KL (RU) problem.
    ValueError
        Bad ``eta`` (see :func:`esd_lambda`) or one scale per concept not given.
    DualDomainError
        The tilt is not normalisable at that :math:`\lambda` (e.g. Gaussians whose variances
        make :math:`p_0^{1+\eta}q^{-\eta}` non-integrable): no distribution corresponds.

    Notes
    -----
    What is reproduced: ESD's training target (negative guidance with the frozen model's
    unconditional and concept scores) and its implied distribution at :math:`t=0`. What is
    not: ESD fine-tunes only the *conditional* branch of a text-to-image model (prompted with
    the concept) and leaves the unconditional one and other prompts to the network's
    generalisation; here the model is a distribution over one space and the whole of it is
    the target. Train towards it with :class:`FixedWeightTrainer` (``primal="composed"`` is
    ESD's regression; ``"reweighted_dsm"`` learns the exact target).
    """
    owner = "ESD"
    _require_kind(problem, "RU", owner, "a reverse-KL unlearning problem")
    lam = esd_lambda(eta, anchor)
    if lam.numel() == 1 and problem.m > 1:
        raise ValueError(
            f"{owner}: parameter 'eta' must have one guidance scale per concept "
            f"(m={problem.m}), got 1"
        )
    if lam.numel() != problem.m:
        raise ValueError(
            f"{owner}: parameter 'eta' must have one guidance scale per concept "
            f"(m={problem.m}), got {lam.numel()}"
        )
    target = problem.target(lam)
    assert isinstance(target, GeometricTarget)
    return target


# --------------------------------------------------------------------------------------- SISS
def SISS(problem: Any, lam: Any) -> SignedMixtureTarget:
    r"""The SISS target at a fixed weight: the FU signed mixture at multiplier ``lam``.

    At the population level SISS minimises the subtracted denoising loss

    .. math::
        \mathbb E_{x\sim p_0}[\ell_\theta(x)] - \sum_i\lambda_i\,\mathbb E_{x\sim q_i}
        [\ell_\theta(x)],

    FU's Lagrangian with :math:`\lambda` fixed by hand, whose minimiser over score functions
    is the noised signed mixture

    .. math::
        p_\lambda = \frac{p_0 - \sum_i\lambda_i q_i}{1-\Lambda}

    at *every* diffusion time (mixtures commute with noising; :ref:`diffusion-view`), provided
    :math:`\lambda` lies in FU's domain (:math:`p_0-\sum_i\lambda_iq_i\ge0`, for one forget set
    :math:`\lambda\le\lambda_{\max}=\operatorname{ess\,inf}p_0/q`). This returns
    ``problem.target(lam)``. With a pretraining mixture :math:`p_0=(1-a)\,q_r+a\,q` and
    :math:`\lambda=a` it is the model retrained without the forget data (SISS's "naive
    deletion" objective, which its importance-sampled loss estimates without bias).

    Parameters
    ----------
    problem
        A :class:`~dualdiff.ForwardKLProblem` (``KLConstrainedProblem(...,
        direction="forward")``); its levels are not used.
    lam
        Fixed weight(s), a float or shape ``(m,)``, in FU's dual domain.

    Returns
    -------
    SignedMixtureTarget
        Exact density and score of the target at every ``t``.

    Raises
    ------
    TypeError
        ``problem`` is not a forward-KL (FU) problem.
    DualDomainError
        ``lam`` outside FU's dual domain (the subtracted objective is then unbounded below:
        the model can drive its density to zero on the forget support).

    Notes
    -----
    What is reproduced: the population objective and its minimiser (the training step of
    :class:`FixedWeightTrainer` with ``primal="composed"`` is the signed denoising loss with
    independent batches of :math:`p_0` and :math:`q_i`; ``"reweighted_dsm"`` trains on the
    same target by reweighting samples of :math:`p_0`).

    What is not reproduced, from the SISS paper and its released code:

    * the *importance-sampled estimator*: one noisy point per pair (retain/all-data sample
      :math:`x`, forget sample :math:`a`, shared noise and time) drawn from the defensive
      mixture :math:`(1-\kappa)\,q(x_t\mid x) + \kappa\,q(x_t\mid a)` (:math:`\kappa=1/2` in
      the paper), with both loss terms reweighted by the Gaussian transition-density ratios,
      so that one network evaluation serves both terms. It is an unbiased estimator of the
      same objective, so it changes the variance and cost of a step, not its target;
    * the *gradient-norm handling*: the released code rescales the forget term's gradient to a
      fixed norm each step (then clips the total gradient norm to 1). That makes the
      effective weight of the forget term batch-dependent, :math:`\lambda_t\propto
      1/\|\nabla\mathbb E_q\ell\|`, so SISS as run in practice is not exactly a fixed-weight
      FU Lagrangian; ``FixedWeightTrainer(..., grad_clip=c)`` clips the *total* gradient only.
    """
    owner = "SISS"
    _require_kind(problem, "FU", owner, "a forward-KL unlearning problem")
    target = problem.target(lam)
    assert isinstance(target, SignedMixtureTarget)
    return target


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
    (:func:`~dualdiff.losses.denoising_score_matching_loss`), :math:`\mu` = ``weight`` and
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


def neggrad_lambda(weight: float, forget_fraction: float, forget_weight: float = 1.0) -> float:
    r"""FU multiplier whose Lagrangian the NegGrad loss with a retain term is.

    .. math::
        \lambda = a + \frac{\nu\,(1-a)}{\mu},

    for a pretraining mixture :math:`p_0 = (1-a)\,q_r + a\,q` (:doc:`/mathematics`; the docs page
    *Baselines as fixed multipliers*). :math:`\nu = 0` (retain-only fine-tuning, "naive
    deletion") gives :math:`\lambda = a`, the model retrained without the forget data.

    Parameters
    ----------
    weight
        Retain weight :math:`\mu > 0`.
    forget_fraction
        Mass :math:`a \in (0, 1)` of the forget distribution in the pretraining mixture.
    forget_weight
        Forget weight :math:`\nu \ge 0`.

    Returns
    -------
    float
        :math:`\lambda`. It may exceed FU's :math:`\lambda_{\max}` (then the NegGrad objective
        is unbounded below) or 1 (then no distribution corresponds at all).

    Raises
    ------
    ValueError
        ``weight <= 0``, ``forget_weight < 0`` or ``forget_fraction`` outside ``(0, 1)``.
    """
    owner = "neggrad_lambda"
    mu = check_positive(weight, "weight", owner)
    nu = check_positive(forget_weight, "forget_weight", owner, strict=False)
    a = float(forget_fraction)
    if not 0.0 < a < 1.0 or math.isnan(a):
        raise ValueError(
            f"{owner}: parameter 'forget_fraction' must be in (0, 1), got {forget_fraction!r}"
        )
    return a + nu * (1.0 - a) / mu


# ------------------------------------------------------------------------- fixed-weight training
_DUAL_OPTIONS = (
    "dual_lr",
    "dual_optimizer",
    "dual_optimizer_options",
    "formulation",
    "penalty",
    "init_multipliers",
    "lam_max",
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
        super().__init__(
            problem, model, init_multipliers=lam, dual_lr=1.0, formulation="lagrangian",
            dual_optimizer="sgd", **options,
        )
        # Switch the dual step off: projected SGD with step 0 leaves lambda unchanged
        # (the projection is the identity inside the domain).
        for opt in self.constrained_optimizer.dual_optimizers or []:
            for group in opt.param_groups:
                group["lr"] = 0.0
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
