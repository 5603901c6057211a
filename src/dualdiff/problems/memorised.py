r"""FU's dual in closed form when the pretrained model is the empirical distribution of its data.

Data unlearning (FU, :ref:`the mathematics <fu-problem>`) with forget sets :math:`A_i` inside a
training set :math:`X` of :math:`N` points states :math:`\lambda_{\max,i} = |A_i|/N`: that is
:math:`\operatorname{ess\,inf} p_0/q_i` when :math:`p_0` is the empirical distribution of
:math:`X` and :math:`q_i` that of :math:`A_i`. Under that same model of :math:`p_0` (a model that
memorises its training set; the forget sets disjoint) the dual has a closed form. On
:math:`A_i`, :math:`q_i/p_0 = 1/\lambda_{\max,i}`, so the target
:math:`p_\lambda = (p_0-\sum_j\lambda_jq_j)/(1-\Lambda)` is
:math:`p_0(1-\lambda_i/\lambda_{\max,i})/(1-\Lambda)` there and :math:`p_0/(1-\Lambda)` on
:math:`X\setminus\cup_iA_i`, and the forget-set NLL rise of the target is

.. math::
    \Delta_i(\lambda) = E_{A_i}[\log p_0-\log p_\lambda]
    = \log(1-\Lambda) - \log(1-\lambda_i/\lambda_{\max,i}).

Every level :math:`b_i\ge 0` is active (:math:`\Delta_i = \log(1-\Lambda) < 0` at
:math:`\lambda_i = 0`), and :math:`\Delta_i(\lambda) = b_i` for all :math:`i` gives, with
:math:`S = \sum_i\lambda_{\max,i}` and :math:`T = \sum_i\lambda_{\max,i}e^{-b_i}`,

.. math::
    1-\Lambda^\star = \frac{1-S}{1-T},\qquad
    \lambda_i^\star = \lambda_{\max,i}\big(1-(1-\Lambda^\star)e^{-b_i}\big),

(for :math:`m = 1`, :math:`\lambda^\star = \lambda_{\max}(1-e^{-b})/(1-\lambda_{\max}e^{-b})`),
and the optimal value (the least deviation that reaches the levels; strong duality)

.. math::
    \mathrm{KL}(p_0\|p_{\lambda^\star}) = \log(1-\Lambda^\star)
    - \sum_i\lambda_{\max,i}\log(1-\lambda_i^\star/\lambda_{\max,i}).

Checked against the certified closed-form dual of Gaussian mixtures whose forget components are
separated from the rest (``tests/problems/test_memorised_dual.py``). For a model that does not
memorise, :math:`q_i/p_0` on :math:`A_i` is not :math:`1/\lambda_{\max,i}` and these are the
numbers of the memorising limit, not estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._constants import FLOAT64 as _DTYPE
from .._validation import as_tensor

__all__ = ["MemorisedForwardDual", "memorised_forward_dual"]


@dataclass(frozen=True)
class MemorisedForwardDual:
    r"""FU's dual optimum for a memorising pretrained model (:func:`memorised_forward_dual`).

    Attributes
    ----------
    multipliers
        :math:`\lambda^\star`, ``(m,)`` (float64), inside :math:`[0, \lambda_{\max})`.
    fraction_of_lam_max
        :math:`\lambda_i^\star/\lambda_{\max,i}`, ``(m,)``.
    objective
        :math:`\mathrm{KL}(p_0\|p_{\lambda^\star}) = g(\lambda^\star)`, nats: the least deviation
        from the pretrained model that meets the levels.
    lam_max, bounds
        The inputs, ``(m,)``.
    """

    multipliers: torch.Tensor
    fraction_of_lam_max: torch.Tensor
    objective: float
    lam_max: torch.Tensor
    bounds: torch.Tensor


def memorised_forward_dual(
    lam_max: Any, bounds: Any, *, owner: str = "memorised_forward_dual"
) -> MemorisedForwardDual:
    r"""FU's dual optimum when :math:`p_0` is the empirical distribution of the training set.

    See the module notes for the statement and the formulas.

    Parameters
    ----------
    lam_max
        :math:`\lambda_{\max,i} = |A_i|/N`, ``(m,)``, each in ``(0, 1)``, summing below 1 (the
        forget sets are disjoint parts of the training set and leave some of it).
    bounds
        Levels :math:`b_i \ge 0` on the forget-set NLL rise
        :math:`E_{A_i}[\log p_0 - \log p]` (nats), ``(m,)``.
    owner
        Name used in error messages.

    Returns
    -------
    MemorisedForwardDual
    """
    lm = as_tensor(lam_max, "lam_max", owner, dtype=_DTYPE).reshape(-1)
    b = as_tensor(bounds, "bounds", owner, dtype=_DTYPE).reshape(-1)
    if lm.numel() == 0 or not bool(((lm > 0) & (lm < 1)).all()) or float(lm.sum()) >= 1.0:
        raise ValueError(
            f"{owner}: parameter 'lam_max' must be values in (0, 1) summing below 1 "
            f"(|A_i|/N of disjoint forget sets), got {lm.tolist()}"
        )
    if b.shape != lm.shape:
        raise ValueError(
            f"{owner}: parameter 'bounds' must have one level per forget set "
            f"(m={lm.numel()}), got {b.tolist()}"
        )
    if bool((b < 0).any()):
        raise ValueError(
            f"{owner}: parameter 'bounds' must be levels >= 0 (nats), got {b.tolist()}"
        )
    decay = torch.exp(-b)
    s, t = float(lm.sum()), float((lm * decay).sum())
    rest = (1.0 - s) / (1.0 - t)  # 1 - Lambda*
    lam = lm * (1.0 - rest * decay)
    objective = math.log(rest) - float((lm * torch.log1p(-lam / lm)).sum())
    return MemorisedForwardDual(
        multipliers=lam, fraction_of_lam_max=lam / lm, objective=objective,
        lam_max=lm.clone(), bounds=b.clone(),
    )
