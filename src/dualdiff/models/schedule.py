r"""Noise schedules of the forward diffusion :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon`."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

from .._validation import check_positive

__all__ = ["NoiseSchedule", "VPSchedule"]


@runtime_checkable
class NoiseSchedule(Protocol):
    r"""Protocol of a forward noising schedule on :math:`t \in [t_{\min}, t_{\max}]`.

    ``alpha(t)`` and ``sigma(t)`` give the marginal :math:`x_t = \alpha_t x_0 + \sigma_t
    \varepsilon`; ``g(t)`` is the diffusion coefficient of the forward SDE
    :math:`dx = f(t) x\,dt + g(t)\,dW` with :math:`f(t) = d\log\alpha_t/dt`.
    """

    t_min: float
    t_max: float

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        r"""Signal scale :math:`\alpha_t`, same shape as ``t``."""
        ...

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        r"""Noise scale :math:`\sigma_t`, same shape as ``t``."""
        ...

    def g(self, t: torch.Tensor) -> torch.Tensor:
        """Diffusion coefficient :math:`g(t)`, same shape as ``t``."""
        ...

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        r"""Linear drift coefficient :math:`f(t) = d \log \alpha_t / dt`."""
        ...


class VPSchedule:
    r"""Variance-preserving schedule with linear :math:`\beta(t)` (Song et al., 2021).

    .. math::
        \beta(t) = \beta_{\min} + t(\beta_{\max}-\beta_{\min}),\quad
        \alpha_t = \exp\!\Big(-\tfrac12\int_0^t\beta\Big),\quad
        \sigma_t = \sqrt{1-\alpha_t^2},\quad g(t) = \sqrt{\beta(t)}.

    Parameters
    ----------
    beta_min
        :math:`\beta(0)`, the start of the linear :math:`\beta` schedule (``> 0``).
    beta_max
        :math:`\beta(1)`, its end (``>= beta_min``).
    t_min
        Smallest time the schedule may be queried on; smaller times are clamped by
        :meth:`clamp`. ``t_min > 0`` keeps :math:`\sigma_t > 0` for samplers.
    t_max
        Largest time the schedule may be queried on; larger times are clamped by :meth:`clamp`.
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_min: float = 1e-3,
        t_max: float = 1.0,
    ) -> None:
        owner = "VPSchedule"
        self.beta_min = check_positive(beta_min, "beta_min", owner)
        self.beta_max = check_positive(beta_max, "beta_max", owner)
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"{owner}: parameter 'beta_max' must be >= beta_min={beta_min}, got {beta_max}"
            )
        self.t_min = check_positive(t_min, "t_min", owner, strict=False)
        self.t_max = check_positive(t_max, "t_max", owner)
        if self.t_max <= self.t_min:
            raise ValueError(f"{owner}: need t_min < t_max, got t_min={t_min}, t_max={t_max}")

    def __repr__(self) -> str:
        return (
            f"VPSchedule(beta_min={self.beta_min}, beta_max={self.beta_max}, "
            f"t_min={self.t_min}, t_max={self.t_max})"
        )

    def _as_t(self, t: torch.Tensor | float) -> torch.Tensor:
        return t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)

    def clamp(self, t: torch.Tensor | float) -> torch.Tensor:
        """Clamp ``t`` into ``[0, t_max]`` (the schedule is undefined beyond ``t_max``)."""
        return self._as_t(t).clamp(0.0, self.t_max)

    def beta(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Instantaneous noise rate :math:`\beta(t)`."""
        t = self._as_t(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: torch.Tensor | float) -> torch.Tensor:
        r""":math:`\int_0^t \beta(s)\,ds`."""
        t = self._as_t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Signal scale :math:`\alpha_t = \exp(-\frac12\int_0^t\beta)`."""
        return torch.exp(-0.5 * self.integral_beta(t))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Noise scale :math:`\sigma_t = \sqrt{1-\alpha_t^2}` (computed stably)."""
        return torch.sqrt(-torch.expm1(-self.integral_beta(t)))

    def g(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Diffusion coefficient :math:`g(t)=\sqrt{\beta(t)}`."""
        return torch.sqrt(self.beta(t))

    def drift_coef(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Linear drift :math:`f(t) = -\beta(t)/2`."""
        return -0.5 * self.beta(t)

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        r"""Log signal-to-noise ratio :math:`\log(\alpha_t^2/\sigma_t^2)`."""
        a = self.integral_beta(t)
        return -a - torch.log(-torch.expm1(-a))

    @property
    def terminal_std(self) -> float:
        r""":math:`\sigma_{t_{\max}}` (close to 1 for the default schedule)."""
        return float(math.sqrt(-math.expm1(-float(self.integral_beta(self.t_max)))))
