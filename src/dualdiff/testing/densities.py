"""Independent density evaluation: scipy and numpy, not the library's GaussianMixture code.

Part of :mod:`dualdiff.testing`; see the package docstring.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special
import scipy.stats
import torch

from ..models.gaussian_mixture import GaussianMixture
from ..problems import AnalyticProblem as UnlearningProblem  # the closed-form problems
from ..problems import (
    ForwardKLProblem,
    ReverseKLProblem,
)

__all__ = [
    "gaussian_kl",
    "mixture_log_pdf",
    "mixture_score",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _mixture_params(p: GaussianMixture) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weights (K,), means (K, d), covariances (K, d, d))`` as float64 numpy arrays."""
    return (
        p.weights.detach().cpu().double().numpy(),
        p.means.detach().cpu().double().numpy(),
        p.covariances.detach().cpu().double().numpy(),
    )


def _noised_params(p: GaussianMixture, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixture parameters of the VP-noised marginal at time ``t`` (``t = 0``: clean)."""
    w, mu, cov = _mixture_params(p)
    if t == 0.0:
        return w, mu, cov
    tt = torch.tensor(float(t), dtype=torch.float64)
    a = float(p.schedule.alpha(tt))
    s2 = float(p.schedule.sigma(tt)) ** 2
    return w, a * mu, a * a * cov + s2 * np.eye(mu.shape[1])[None]


def _component_terms(p: GaussianMixture, x: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-component ``log w_k + log N(x)`` ``(K, N)`` and ``-Sigma_k^{-1}(x-mu_k)``."""
    w, mu, cov = _noised_params(p, t)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    d = mu.shape[1]
    logs, grads = [], []
    for k in range(w.shape[0]):
        if w[k] == 0.0:
            continue
        chol = np.linalg.cholesky(cov[k])
        diff = (x - mu[k]).T  # (d, N)
        z = np.linalg.solve(chol, diff)
        half_logdet = float(np.sum(np.log(np.diag(chol))))
        logs.append(math.log(w[k]) - 0.5 * d * _LOG_2PI - half_logdet - 0.5 * np.sum(z * z, 0))
        grads.append(-np.linalg.solve(cov[k], diff).T)
    return np.stack(logs), np.stack(grads)


def mixture_log_pdf(p: GaussianMixture, x: np.ndarray, t: float = 0.0) -> np.ndarray:
    r"""Log-density of a Gaussian mixture in plain numpy (independent of the library's code).

    .. math:: \log p_t(x) = \log\sum_k w_k\,\mathcal N(x;\alpha_t\mu_k,
        \alpha_t^2\Sigma_k+\sigma_t^2 I)

    with :math:`\alpha_t,\sigma_t` from ``p.schedule`` (``t = 0``: the clean mixture), and
    Gaussian log-densities through Cholesky factors (:func:`numpy.linalg.cholesky`).

    Parameters
    ----------
    p
        The mixture (only its parameters and schedule are read).
    x
        Points, shape ``(N, d)`` (or ``(N,)`` when ``d = 1``).
    t
        Diffusion time.

    Returns
    -------
    numpy.ndarray
        Shape ``(N,)``.
    """
    logs, _ = _component_terms(p, x, t)
    return np.asarray(scipy.special.logsumexp(logs, axis=0))


def mixture_score(p: GaussianMixture, x: np.ndarray, t: float = 0.0) -> np.ndarray:
    r"""Score of a Gaussian mixture in plain numpy, shape ``(N, d)``.

    .. math:: \nabla_x\log p_t(x) = -\sum_k r_k(x)\,\Sigma_{k,t}^{-1}(x-\alpha_t\mu_k)

    with :math:`r_k` the responsibilities and :math:`\Sigma_{k,t}=\alpha_t^2\Sigma_k+
    \sigma_t^2 I` (see :func:`mixture_log_pdf`).
    """
    logs, grads = _component_terms(p, x, t)
    r = np.exp(logs - scipy.special.logsumexp(logs, axis=0, keepdims=True))  # (K, N)
    return np.asarray(np.sum(r[:, :, None] * grads, axis=0))


def gaussian_kl(m1: float, v1: float, m2: float, v2: float) -> float:
    r""":math:`\mathrm{KL}(\mathcal N(m_1,v_1)\,\|\,\mathcal N(m_2,v_2))` in one dimension.

    .. math:: \tfrac12\Big(\frac{v_1}{v_2} + \frac{(m_1-m_2)^2}{v_2} - 1 + \log\frac{v_2}{v_1}\Big)
    """
    return 0.5 * (v1 / v2 + (m1 - m2) ** 2 / v2 - 1.0 + math.log(v2 / v1))


def _kl_problem(
    p0: GaussianMixture,
    qs: list[GaussianMixture],
    bounds: list[float],
    direction: str,
    integration: Any = "auto",
) -> UnlearningProblem:
    """``KLConstrainedProblem(p0, qs, bounds, direction=...)`` through its concrete subclass."""
    cls = ReverseKLProblem if direction == "reverse" else ForwardKLProblem
    return cls(p0, qs, bounds, direction=direction, integration=integration)  # type: ignore[call-overload]
