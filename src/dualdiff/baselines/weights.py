r"""Weight-based baselines as pure maps between their knobs and the problems' multipliers.

ESD's guidance :math:`\eta` <-> RU's :math:`\lambda` (:func:`esd_lambda`, :func:`esd_eta`), the
ESD and SISS targets (:func:`ESD`, :func:`SISS`), and NegGrad's FU multiplier
(:func:`neggrad_lambda`). Nothing here trains; see :mod:`.training`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from .._constants import FLOAT64 as _DTYPE
from .._validation import as_tensor, check_choice, check_positive
from ..targets import GeometricTarget, SignedMixtureTarget

__all__ = [
    "ESD",
    "SISS",
    "esd_eta",
    "esd_lambda",
    "neggrad_lambda",
]

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
    This function gives the *target* of SISS's objective. Its published training step is
    :func:`~dualdiff.siss_loss` (standalone) and the engine's ``primal="siss"``
    (:class:`~dualdiff.engine.ImportanceSampledSignedLoss`, e.g.
    ``FixedWeightTrainer(problem, model, lam, primal="siss", primal_options={"kappa": 0.5,
    "scaling_norm": s}, grad_clip=1.0)``):

    * the *importance-sampled estimator*: one noisy point per pair (all-data sample
      :math:`x`, forget sample :math:`a`, shared noise and time) drawn from the defensive
      mixture :math:`(1-\kappa)\,q(x_t\mid x) + \kappa\,q(x_t\mid a)` (:math:`\kappa=1/2` in
      the paper; SISS calls it :math:`\lambda`), with both loss terms reweighted by the
      Gaussian transition-density ratios, so that one network evaluation serves both terms.
      It is an unbiased estimator of the same objective: it changes the variance and cost of
      a step, not its target;
    * the *gradient-norm handling* ``scaling_norm``: the released code rescales the forget
      term's gradient to a fixed norm each step (then clips the total gradient norm to 1).
      That makes the effective weight of the forget term batch-dependent,
      :math:`\lambda_t = s/\|\nabla\hat L_a\|`, so SISS as run in practice is not a
      fixed-weight FU Lagrangian and its target is not exactly this one.

    ``primal="composed"`` is the same objective with independent batches of :math:`p_0` and
    :math:`q_i` (two network evaluations); ``"reweighted_dsm"`` trains on the same target by
    reweighting samples of :math:`p_0` (closed-form problems only). Not reproduced: SISS's
    discrete DDPM timesteps (dualdiff draws continuous times uniformly on
    :math:`[t_{\min}, t_{\max}]` of the model's schedule) and its learning-rate schedule.
    """
    owner = "SISS"
    _require_kind(problem, "FU", owner, "a forward-KL unlearning problem")
    target = problem.target(lam)
    assert isinstance(target, SignedMixtureTarget)
    return target


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
