r"""SISS's published estimator: the importance-sampled subtracted denoising loss.

Alberti, Hasanaliyev, Shah & Ermon, *Data Unlearning in Diffusion Models*, ICLR 2025
(arXiv:2503.01034; released code ``github.com/claserken/SISS``,
``losses/ddpm_deletion_loss.py::importance_sampling_with_mixture`` and the training loops'
``scaling_norm``). The formulas live in :mod:`dualdiff.diffusion.losses`
(:func:`~dualdiff.diffusion.losses.siss_terms`,
:func:`~dualdiff.diffusion.losses.mixture_importance_weights`,
:func:`~dualdiff.diffusion.losses.gradient_norm_scale`), shared with the engine's
``primal="siss"`` form; this module draws the pairs and checks the arguments.
"""

from __future__ import annotations

from typing import Any

import torch

from .._constants import FLOAT64 as _DTYPE
from .._validation import check_positive
from ..diffusion.losses import check_siss_options, gradient_norm_scale, siss_terms
from ..models.interface import check_score_model, resolve_schedule
from ..models.schedule import NoiseSchedule

__all__ = ["siss_loss"]


def _pair_shape(x: Any, name: str, owner: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else (
            type(x).__name__
        )
        raise ValueError(
            f"{owner}: parameter '{name}' must be a floating tensor of shape (n, *event), got "
            f"{got}"
        )
    if not bool(torch.isfinite(x).all()):
        from .._errors import NonFiniteError

        raise NonFiniteError(f"{owner}: parameter '{name}' holds NaN or inf")
    return x


def siss_loss(
    model: Any,
    x_all: torch.Tensor,
    a_forget: torch.Tensor,
    lam: float,
    generator: torch.Generator | None = None,
    *,
    kappa: float = 0.5,
    scaling_norm: float | None = None,
    weight: float = 1.0,
    t: torch.Tensor | float | None = None,
    noise: torch.Tensor | None = None,
    from_forget: torch.Tensor | None = None,
    schedule: NoiseSchedule | None = None,
    parameters: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""SISS: the subtracted denoising loss estimated by importance sampling, one pass per pair.

    The target is the subtracted ("naive deletion") objective

    .. math::
        \mathcal L(\theta) = \mu\,E_{x\sim X}[\ell_\theta(x)] - \lambda\,E_{a\sim A}
        [\ell_\theta(a)],

    :math:`\ell_\theta` the per-sample denoising loss of
    :func:`~dualdiff.diffusion.losses.denoising_score_matching_loss`, :math:`\mu` = ``weight``,
    :math:`\lambda` = ``lam``. Row :math:`j` pairs a data point :math:`x_j` (``x_all``) with a
    forget point :math:`a_j` (``a_forget``); they share the time :math:`t_j` and the noise
    :math:`\varepsilon_j`, and one noisy point is drawn from the *defensive mixture*

    .. math::
        x_t \sim (1-\kappa)\,q(x_t\mid x_j) + \kappa\,q(x_t\mid a_j),\qquad
        q(x_t\mid y) = \mathcal N(\alpha_t y, \sigma_t^2 I)

    (SISS's :math:`\lambda`; :math:`\kappa=1/2` in the paper). One network evaluation
    :math:`\hat\varepsilon_\theta(x_t,t)` serves both terms, each reweighted by its
    transition-density ratio (:func:`~dualdiff.diffusion.losses.siss_terms`):

    .. math::
        \hat{\mathcal L} = \frac1n\sum_j\Big[\mu\,\frac{q(x_t\mid x_j)}{m_\kappa(x_t)}
        \big\|\hat\varepsilon - \tfrac{x_t-\alpha_tx_j}{\sigma_t}\big\|^2/D
        - \lambda\,\frac{q(x_t\mid a_j)}{m_\kappa(x_t)}
        \big\|\hat\varepsilon - \tfrac{x_t-\alpha_ta_j}{\sigma_t}\big\|^2/D\Big],

    an unbiased estimator of :math:`\mathcal L` and of its gradient (for every fixed
    :math:`\theta`). With :math:`X` the whole training set of :math:`N` points, :math:`A\subset X`
    of :math:`k` points, :math:`\mu = 1/(1-\lambda)` and :math:`\lambda = k/N` it is the loss on
    the retained data :math:`E_{X\setminus A}[\ell_\theta]` (SISS's naive-deletion identity), which
    is FU's Lagrangian at :math:`\lambda_{\max} = k/N` (:func:`~dualdiff.SISS`).

    ``scaling_norm`` (the released code's gradient handling): when given, the forget term's
    gradient is rescaled to that norm at every call,

    .. math::
        \nabla\hat{\mathcal L} = \mu\,\nabla\hat L_x - s\,\frac{\nabla\hat L_a}{\|\nabla\hat L_a\|},

    (:math:`\hat L_x, \hat L_a` the two batch means above, :math:`s` = ``scaling_norm``), by
    multiplying :math:`\hat L_a` with the detached factor
    :math:`s/\|\nabla\hat L_a\|` (:func:`~dualdiff.diffusion.losses.gradient_norm_scale`; one
    extra backward pass). ``lam`` then no longer enters the gradient. The released code then
    clips the total gradient norm to 1: do that in the optimiser step (the trainers'
    ``grad_clip=1.0``). The README of the released code recommends ``scaling_norm`` about 10% of
    the naive-deletion term's gradient norm.

    Parameters
    ----------
    model
        Trainable score model (``eps`` if it has one, else ``-sigma * score``).
    x_all
        Data points (SISS: the full training set, forget points included), ``(n, *event)``.
    a_forget
        Forget points, the same shape as ``x_all`` (row ``j`` pairs with row ``j``).
    lam
        Weight :math:`\lambda \ge 0` of the subtracted term.
    generator
        Draws, in order, the times, the noise and the mixture labels (those not given).
    kappa
        Mixture weight of the forget transition, in ``(0, 1)``.
    scaling_norm
        ``None`` (plain loss) or the norm :math:`s > 0` of the forget term's gradient.
    weight
        :math:`\mu \ge 0`, weight of the data term.
    t
        Times: ``None`` draws :math:`t_j\sim\mathcal U(t_{\min}, t_{\max})`; a float or ``(n,)``.
    noise
        Shared noise ``(n, *event)``; default standard normal.
    from_forget
        Mixture labels :math:`b_j` ``(n,)`` (1: :math:`x_t` noised from :math:`a_j`); default
        :math:`b_j\sim\mathrm{Bernoulli}(\kappa)`.
    schedule
        Noise schedule; default ``model.schedule`` (e.g. the diffusers adapter's) or VP.
    parameters
        Parameters of the gradient norm (default: ``model.parameters()`` that require grad).

    Returns
    -------
    torch.Tensor
        Scalar loss in the dtype of ``x_all``; minimise it.

    Raises
    ------
    TypeError
        ``model`` is not a score model; ``kappa`` not a number; ``scaling_norm`` given for a
        model without ``parameters()``.
    ValueError
        ``kappa`` outside ``(0, 1)``, negative ``lam`` or ``weight``, bad ``scaling_norm``,
        ``x_all`` and ``a_forget`` of different shapes, bad ``noise`` / ``from_forget`` shapes.
    NonFiniteError
        Non-finite inputs; with ``scaling_norm``, a zero or non-finite forget gradient.

    References
    ----------
    S. Alberti, K. Hasanaliyev, M. Shah, S. Ermon. *Data Unlearning in Diffusion Models.*
    ICLR 2025, arXiv:2503.01034 (Subtracted Importance-Sampled Scores).
    """
    owner = "siss_loss"
    check_score_model(model, "model", owner)
    k, s = check_siss_options(kappa, scaling_norm, owner)
    lam_f = check_positive(lam, "lam", owner, strict=False)
    mu = check_positive(weight, "weight", owner, strict=False)
    x = _pair_shape(x_all, "x_all", owner)
    a = _pair_shape(a_forget, "a_forget", owner)
    if a.shape != x.shape:
        raise ValueError(
            f"{owner}: parameters 'x_all' and 'a_forget' must have the same shape (one forget "
            f"point per data point), got {tuple(x.shape)} and {tuple(a.shape)}"
        )
    a = a.to(dtype=x.dtype, device=x.device)
    sched = resolve_schedule(model, schedule, owner)
    n = x.shape[0]
    if t is None:
        u = torch.rand(n, dtype=x.dtype, generator=generator).to(x.device)
        t = float(sched.t_min) + (float(sched.t_max) - float(sched.t_min)) * u
    if noise is None:
        noise = torch.randn(x.shape, dtype=x.dtype, generator=generator).to(x.device)
    elif noise.shape != x.shape:
        raise ValueError(
            f"{owner}: parameter 'noise' must have the shape of x_all {tuple(x.shape)}, got "
            f"{tuple(noise.shape)}"
        )
    if from_forget is None:
        from_forget = torch.rand(n, dtype=_DTYPE, generator=generator).to(x.device) < k
    elif tuple(from_forget.shape) != (n,):
        raise ValueError(
            f"{owner}: parameter 'from_forget' must have shape ({n},), got "
            f"{tuple(from_forget.shape)}"
        )
    params = parameters
    if s is not None and params is None:
        if not callable(getattr(model, "parameters", None)):
            raise TypeError(
                f"{owner}: scaling_norm needs the model's parameters (model.parameters() or "
                f"parameters=...), {type(model).__name__} has none"
            )
        params = [p for p in model.parameters() if p.requires_grad]
    l_x, l_a, _, _ = siss_terms(model, x, a, t, noise, from_forget, k, schedule=sched)
    data_term = l_x.mean()
    forget_term = l_a.mean()
    if s is None:
        return mu * data_term - lam_f * forget_term
    assert params is not None
    scale, _ = gradient_norm_scale(forget_term, list(params), s)
    return mu * data_term - scale * forget_term
