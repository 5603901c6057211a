r"""A small classifier of the ring's components, :math:`\log p(c\mid x)`, and its exact referee.

For the ring (equal weights, equal isotropic covariances :math:`\sigma^2 I`) Bayes' rule gives

.. math::
    \log p(c\mid x) = \operatorname{log\,softmax}_c\Big(\frac{\mu_c^\top x}{\sigma^2}
        - \frac{\|\mu_c\|^2}{2\sigma^2} + \log w_c\Big),

a linear-softmax model in ``x``. :class:`RingClassifier` is that family (``2*8 + 8``
parameters); :func:`train_ring_classifier` fits it to labelled ring samples in milliseconds,
and :func:`exact_log_posterior` is the
referee it is measured against. :class:`ClassLogProbability` turns a classifier into the
likelihood callable ``l(x) = log p(c|x)`` of a likelihood-constrained (LU) problem.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.gaussian_mixture import GaussianMixture
from .ring import ring_mixture, sample_labelled

__all__ = [
    "ClassLogProbability",
    "RingClassifier",
    "exact_log_posterior",
    "train_ring_classifier",
]


class RingClassifier(nn.Module):
    """Linear-softmax classifier ``log p(c|x) = log_softmax(W x + b)``, ``x`` of shape ``(n, d)``.

    Parameters
    ----------
    dim
        Data dimension ``d``.
    n_classes
        Number of classes ``K``.

    Notes
    -----
    ``forward(x)`` returns the log-probabilities, shape ``(n, K)``, in the dtype of ``x``.
    """

    def __init__(self, dim: int = 2, n_classes: int = 8) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("n_classes", n_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"RingClassifier: parameter '{name}' must be an int >= 1, got {value!r}"
                )
        self.dim = dim
        self.n_classes = n_classes
        self.linear = nn.Linear(dim, n_classes, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the classes, shape ``(n, K)``."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"RingClassifier.forward: parameter 'x' must have shape (n, {self.dim}), got "
                f"{got}"
            )
        out: torch.Tensor = torch.log_softmax(self.linear(x.to(torch.float64)), dim=-1)
        return out.to(x.dtype)


def train_ring_classifier(n_samples: int = 20000, seed: int = 0) -> RingClassifier:
    r"""Fit :class:`RingClassifier` to ``n_samples`` labelled ring draws (linear discriminant).

    The parameters are fitted generatively (linear discriminant analysis with a shared
    isotropic covariance): class means :math:`\hat\mu_c`, pooled variance
    :math:`\hat\sigma^2` and class frequencies :math:`\hat w_c` give
    :math:`W_c = \hat\mu_c/\hat\sigma^2`,
    :math:`b_c = -\|\hat\mu_c\|^2/(2\hat\sigma^2) + \log\hat w_c`. This is the model
    family of the exact posterior, and, unlike discriminative maximum likelihood, stays well
    determined on the ring's nearly separable classes (logits of order
    :math:`R^2/\sigma^2 = 64`, which cross-entropy training leaves poorly identified far from
    the decision boundaries, exactly where the LU constraint and the RU log-ratios live).
    Deterministic for a given ``seed``; takes milliseconds.
    """
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 16:
        raise ValueError(
            f"train_ring_classifier: parameter 'n_samples' must be an int >= 16, got "
            f"{n_samples!r}"
        )
    mix = ring_mixture()
    x, labels = sample_labelled(mix, n_samples, torch.Generator().manual_seed(seed))
    k, d = mix.n_components, mix.dim
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    if bool((counts < 2).any()):
        raise ValueError(
            f"train_ring_classifier: n_samples={n_samples} leaves a class with fewer than 2 "
            "samples; use more samples"
        )
    means = torch.zeros(k, d, dtype=torch.float64).index_add_(0, labels, x) / counts[:, None]
    var = float(((x - means[labels]) ** 2).sum()) / ((n_samples - k) * d)
    clf = RingClassifier(d, k)
    with torch.no_grad():
        clf.linear.weight.copy_(means / var)
        clf.linear.bias.copy_(-(means**2).sum(-1) / (2 * var) + torch.log(counts / n_samples))
    clf.eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf


def exact_log_posterior(x: torch.Tensor, mixture: GaussianMixture | None = None) -> torch.Tensor:
    r"""Exact :math:`\log p(c\mid x)` of ``mixture`` (default :func:`ring_mixture`), ``(n, K)``."""
    mix = ring_mixture() if mixture is None else mixture
    return torch.log_softmax(mix.component_log_prob(x.to(mix.dtype)), dim=-1)


class ClassLogProbability:
    r"""The likelihood callable :math:`l(x) = \log p(c\mid x)` of a classifier.

    Parameters
    ----------
    classifier
        A callable ``classifier(x) -> (n, K)`` of log-probabilities (e.g.
        :class:`RingClassifier`).
    cls
        The class ``c`` whose log-probability is returned.

    Notes
    -----
    ``__call__(x)`` takes ``x`` of shape ``(n, d)`` and returns shape ``(n,)``.
    """

    def __init__(self, classifier: Any, cls: int) -> None:
        if not callable(classifier):
            raise TypeError(
                "ClassLogProbability: parameter 'classifier' must be callable as "
                f"classifier(x) -> (n, K) log-probabilities, got {type(classifier).__name__}"
            )
        if not isinstance(cls, int) or isinstance(cls, bool) or cls < 0:
            raise ValueError(
                f"ClassLogProbability: parameter 'cls' must be an int >= 0, got {cls!r}"
            )
        self.classifier = classifier
        self.cls = cls

    def __repr__(self) -> str:
        return f"ClassLogProbability({type(self.classifier).__name__}, cls={self.cls})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(c\mid x)`, shape ``(n,)``."""
        logp = self.classifier(x)
        if not isinstance(logp, torch.Tensor) or logp.ndim != 2 or logp.shape[0] != x.shape[0]:
            got = tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__
            raise ValueError(
                "ClassLogProbability: the classifier must return log-probabilities of shape "
                f"(n, K) = ({x.shape[0]}, K), got {got}"
            )
        if self.cls >= logp.shape[1]:
            raise ValueError(
                f"ClassLogProbability: class cls={self.cls} is out of range for a classifier "
                f"of {logp.shape[1]} classes"
            )
        return logp[:, self.cls]
