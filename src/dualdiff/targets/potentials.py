r"""Likelihood functionals :math:`\ell_i(x)` of unlearning distributions.

A potential is what the exponential tilt :math:`p_\lambda \propto p_0^{a}\,e^{-\sum_i c_i
\ell_i}` subtracts (:doc:`/mathematics`, the LU problem). Three kinds:

* :class:`LogLikelihood` — :math:`\ell = \log q` (the RU geometric reweighting and LU default);
* :class:`DensityLikelihood` — :math:`\ell = q` (bounded tilt, leaves regions with
  :math:`q\approx 0` untouched);
* :class:`CallableLikelihood` — any user function, e.g. a classifier's :math:`\log p(c\mid x)`.

At diffusion time ``t > 0`` the *composed* gradient uses the noised distribution's
quantities (``log q_t`` / ``q_t``); this is the ESD-style approximation, exact only at t=0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CallableLikelihood", "DensityLikelihood", "LogLikelihood", "Potential"]


class Potential:
    """Base class: ``value(x)`` of shape ``(...)`` and ``grad(x, t)`` of shape ``(..., d)``."""

    name = "potential"
    #: True when ``value >= 0`` everywhere (so the tilt ``exp(-c * value)`` is at most 1).
    nonnegative = False

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Potential at clean points ``x`` ``(..., d)``; returns ``(...)``."""
        raise NotImplementedError

    def grad(self, x: torch.Tensor, t: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Gradient in ``x`` (composed with the noised distribution at ``t > 0``)."""
        keep = x.requires_grad
        x_ = x if keep else x.detach().requires_grad_(True)
        with torch.enable_grad():
            v = self.value(x_).sum()
            (g,) = torch.autograd.grad(v, x_, create_graph=keep)
        return g


class LogLikelihood(Potential):
    r""":math:`\ell(x) = \log q(x)` for a distribution with ``log_prob`` and ``score``."""

    name = "log"

    def __init__(self, q: Any) -> None:
        self.q = q

    def value(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.q.log_prob(x)

    def grad(self, x: torch.Tensor, t: torch.Tensor | float = 0.0) -> torch.Tensor:  # noqa: D102
        return self.q.score(x, t)


class DensityLikelihood(Potential):
    r""":math:`\ell(x) = q(x)` (a density, bounded); gradient :math:`q\,\nabla\log q`."""

    name = "density"
    nonnegative = True

    def __init__(self, q: Any) -> None:
        self.q = q

    def value(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.exp(self.q.log_prob(x))

    def grad(self, x: torch.Tensor, t: torch.Tensor | float = 0.0) -> torch.Tensor:  # noqa: D102
        t_is_zero = isinstance(t, float | int) and float(t) == 0.0
        logq = self.q.log_prob(x) if t_is_zero else self.q.log_prob(x, t)
        return torch.exp(logq).unsqueeze(-1) * self.q.score(x, t)


class CallableLikelihood(Potential):
    """A user likelihood functional ``fn(x) -> (...)`` (gradient by autograd).

    At ``t > 0`` the same function is applied to the noisy point (no noised version exists).
    """

    name = "callable"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], nonnegative: bool = False):
        self.fn = fn
        self.nonnegative = nonnegative

    def value(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        v = self.fn(x)
        if not isinstance(v, torch.Tensor) or v.shape != x.shape[:-1]:
            raise ValueError(
                "CallableLikelihood: the likelihood callable must map x of shape (..., d) to "
                f"a tensor of shape (...) = {tuple(x.shape[:-1])}, got "
                f"{getattr(v, 'shape', type(v).__name__)}"
            )
        return v
