r"""The dual function estimated by Monte Carlo over pretrained samples (no density needed).

For problems stated with models (:mod:`dualdiff.problems.model_level`), the dual is an
expectation under the pretrained model, so ``n`` clean samples :math:`x_j\sim p_0` and one
row of per-sample values per constraint estimate it before any training
(the model-level section of :doc:`/mathematics`):

* LU, values :math:`F_{ij} = \ell_i(x_j)`:
  :math:`\hat g(\lambda) = -\log\frac1n\sum_j e^{-\lambda^\top F_{\cdot j}} - \lambda^\top\tau`,
  :math:`\nabla\hat g = \hat E_{w}[\ell] - \tau`,
  :math:`\nabla^2\hat g = -\widehat{\mathrm{Cov}}_w(\ell)`;
* RU, log-ratios :math:`F_{ij} = \log p_0(x_j) - \log q_i(x_j)`: with
  :math:`\eta = \lambda/(1-\Lambda)`, :math:`\log w_j = \eta^\top F_{\cdot j}`,
  :math:`\hat Z = \frac1n\sum_j w_j`,
  :math:`\hat g(\lambda) = -(1-\Lambda)\log\hat Z + \lambda^\top b`,
  :math:`\nabla_i\hat g = b_i - \widehat{\mathrm{KL}}(p_\lambda\|q_i)`,
  :math:`\widehat{\mathrm{KL}}_i = \hat E_w[f_i] - \log\hat Z`, :math:`f_i = F_i + \eta^\top F`,
  :math:`\nabla^2\hat g = -\widehat{\mathrm{Cov}}_w(f)/(1-\Lambda)`;

with self-normalised weights :math:`\bar w_j = w_j/\sum_k w_k` (:math:`\hat E_w`). The
effective sample size is :math:`\mathrm{ESS} = 1/(n\sum_j\bar w_j^2)\in(0,1]` (a fraction of
``n``). Standard errors by the delta method: each estimated quantity :math:`\hat\theta` has an
influence function :math:`\psi_j` with :math:`\mathrm{Var}\,\hat\theta \approx \frac1{n^2}
\sum_j\psi_j^2`; for the Danskin gradient :math:`\Sigma = \frac1{n^2}\sum_j\psi_j\psi_j^\top`
and, on the free coordinates :math:`F` of :math:`\lambda^\star`,
:math:`\mathrm{Cov}(\hat\lambda^\star_F) \approx H_{FF}^{-1}\Sigma_{FF}H_{FF}^{-1}`
(:math:`H` the Hessian; in one dimension :math:`\mathrm{se}(\lambda^\star) =
\mathrm{se}(\nabla g)/|g''|`). They cover sampling error only, not the error of the values
themselves (e.g. ODE solver error of estimated log-ratios).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .._constants import FLOAT64 as _DTYPE
from .._errors import LowEffectiveSampleSizeWarning
from ..duality import Certificate, DualEval, DualSolution, maximize_dual

__all__ = ["EstimatedDualSolution", "MonteCarloDual", "TradeoffPoint"]



@dataclass(frozen=True)
class TradeoffPoint:
    r"""One point of the estimated trade-off curve :math:`P^\star(b)`.

    Attributes
    ----------
    bounds
        Constraint levels ``(m,)``.
    value
        :math:`\hat P^\star(b) = \hat D^\star(b)` (strong duality), the estimated optimal
        objective.
    stderr
        Its standard error.
    multipliers
        :math:`\hat\lambda^\star(b)`, ``(m,)``.
    status
        Solve status.
    """

    bounds: torch.Tensor
    value: float
    stderr: float
    multipliers: torch.Tensor
    status: str


@dataclass
class EstimatedDualSolution(DualSolution):
    r"""A :class:`~dualdiff.duality.DualSolution` estimated by Monte Carlo (``estimate_dual``).

    ``target`` is ``None`` (no closed form); ``certificate.method == "monte_carlo"`` with
    standard errors; ``certificate.primal_value`` is the predicted objective of
    :math:`p_{\hat\lambda}` and ``certificate.constraint_values`` its predicted constraints.

    Attributes
    ----------
    multiplier_stderr
        Delta-method standard errors of :math:`\hat\lambda^\star`, ``(m,)`` (0 for coordinates
        at the boundary of the domain).
    predicted_constraints
        :math:`C_i(p_{\hat\lambda})`, ``(m,)``.
    predicted_constraint_stderr
        Their standard errors, ``(m,)``.
    ess
        Effective sample size of the weights at the solution, as a fraction of ``n_samples``.
    n_samples
        Number of pretrained samples.
    values_method
        How the per-sample values were obtained (``"likelihood"``, ``"ode"``,
        ``"log_ratio"``, ...).
    """

    multiplier_stderr: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    predicted_constraints: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    predicted_constraint_stderr: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    ess: float = math.nan
    n_samples: int = 0
    values_method: str = ""
    estimator: MonteCarloDual | None = None

    def tradeoff(self, levels: Any) -> list[TradeoffPoint]:
        r"""The estimated trade-off curve :math:`\hat P^\star(b)` on the same samples.

        Parameters
        ----------
        levels
            Constraint levels, shape ``(k,)`` (one constraint) or ``(k, m)``.

        Returns
        -------
        list of TradeoffPoint
        """
        if self.estimator is None:
            raise ValueError("EstimatedDualSolution.tradeoff: no estimator attached")
        return self.estimator.tradeoff(levels)


class MonteCarloDual:
    r"""The dual estimated from per-sample values on pretrained samples (module docstring).

    Parameters
    ----------
    problem
        The model-level problem (``m``, ``bounds``, ``kind``, ``slack``, ``domain``).
    values
        :math:`F`, shape ``(m, n)``: likelihood values (``form="tilt"``, LU) or log-ratios
        :math:`\log p_0 - \log q_i` (``form="geometric"``, RU), float64.
    form
        ``"tilt"`` or ``"geometric"``.
    values_method
        Label of how ``values`` were computed (reported).
    min_ess
        Warn (:class:`~dualdiff.LowEffectiveSampleSizeWarning`) below this ESS fraction.
    """

    def __init__(
        self,
        problem: Any,
        values: torch.Tensor,
        form: str,
        values_method: str,
        min_ess: float = 0.05,
    ) -> None:
        owner = f"{type(problem).__name__}.estimate_dual"
        f = torch.as_tensor(values).detach().to(device="cpu", dtype=_DTYPE)
        if f.ndim != 2 or f.shape[0] != problem.m or f.shape[1] < 2:
            raise ValueError(
                f"{owner}: the per-sample values must have shape (m={problem.m}, n >= 2), got "
                f"{tuple(f.shape)}"
            )
        if not bool(torch.isfinite(f).all()):
            bad = int((~torch.isfinite(f)).sum())
            raise ValueError(f"{owner}: {bad} per-sample value(s) are NaN or infinite")
        if form not in ("tilt", "geometric"):
            raise ValueError(f"{owner}: form must be 'tilt' or 'geometric', got {form!r}")
        self.problem = problem
        self.values = f
        self.form = form
        self.values_method = values_method
        self.min_ess = float(min_ess)
        self._owner = owner

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.values.shape[1])

    # ------------------------------------------------------------------ oracle
    def _weights(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(log w (n,), f (m, n), beta)``: log-weights and the per-sample functions."""
        F = self.values
        if self.form == "tilt":
            return -(lam @ F), F, 1.0
        beta = 1.0 / (1.0 - float(lam.sum()))
        eta = beta * lam
        log_w = eta @ F
        return log_w, F + log_w[None, :], beta

    def _parts(self, lam: torch.Tensor, bounds: torch.Tensor) -> dict[str, Any]:
        n = self.n
        log_w, f, beta = self._weights(lam)
        log_z = float(torch.logsumexp(log_w, 0)) - math.log(n)
        wbar = torch.softmax(log_w, 0)
        mu = f @ wbar  # (m,)
        d = f - mu[:, None]
        cov = (d * wbar) @ d.T
        nw = n * wbar
        if self.form == "tilt":
            value = -log_z - float(lam @ bounds)
            constraints = mu
            grad = mu - bounds
            hess = -cov
            psi_grad = nw[None, :] * d
            psi_value = -(nw - 1.0)
            objective = float(wbar @ log_w) - log_z  # KL(p_lam || p0)
        else:
            one_m = 1.0 - float(lam.sum())
            value = -one_m * log_z + float(lam @ bounds)
            constraints = mu - log_z  # KL(p_lam || q_i)
            grad = bounds - constraints
            hess = -beta * cov
            psi_grad = nw[None, :] * (d - 1.0) + 1.0
            psi_value = -one_m * (nw - 1.0)
            objective = float(wbar @ log_w) - log_z
        psi_obj = nw * (log_w - float(wbar @ log_w) - 1.0) + 1.0
        sigma = psi_grad @ psi_grad.T / n**2
        return {
            "value": value,
            "grad": grad,
            "hess": hess,
            "constraints": constraints,
            "sigma": sigma,
            "value_err": math.sqrt(float((psi_value**2).sum()) / n**2),
            "objective": objective,
            "objective_err": math.sqrt(float((psi_obj**2).sum()) / n**2),
            "ess": float(1.0 / (n * (wbar**2).sum())),
        }

    def oracle(self, lam: torch.Tensor, bounds: torch.Tensor | None = None) -> DualEval:
        """Estimated dual value, gradient, Hessian and error bars at ``lam`` ``(m,)``."""
        b = self.problem.bounds if bounds is None else bounds
        p = self._parts(lam.to(_DTYPE), b)
        return DualEval(
            value=p["value"],
            grad=p["grad"],
            hess=p["hess"],
            value_err=p["value_err"],
            grad_err=torch.sqrt(torch.diagonal(p["sigma"]).clamp_min(0.0)),
        )

    def _maximise(
        self, bounds: torch.Tensor, gtol: float, max_iter: int
    ) -> tuple[torch.Tensor, str, int, int, list[tuple[list[float], float]], str]:
        dom = self.problem.domain
        up = dom.upper.clone()
        if math.isfinite(dom.cap):
            up = torch.minimum(up, torch.full_like(up, dom.cap))
        return maximize_dual(
            lambda v: self.oracle(v, bounds),
            self.problem.m,
            upper=up,
            upper_closed=dom.upper_closed,
            in_domain=dom.contains,
            gtol=gtol,
            max_iter=max_iter,
        )

    # ------------------------------------------------------------------ solve
    def solve(self, *, gtol: float = 1e-10, max_iter: int = 200) -> EstimatedDualSolution:
        """Maximise the estimated dual; errors, ESS and predictions at the maximiser."""
        prob = self.problem
        b = prob.bounds
        lam, status, its, n_eval, hist, msg = self._maximise(b, gtol, max_iter)
        p = self._parts(lam, b)
        m = prob.m
        free = (lam > 1e-12) & ~(
            torch.isfinite(prob.domain.upper) & (lam >= prob.domain.upper * (1 - 1e-9))
        )
        se_lam = torch.zeros(m, dtype=_DTYPE)
        if bool(free.any()) and status in ("optimal", "max_iter"):
            idx = torch.nonzero(free).reshape(-1)
            h = p["hess"][idx][:, idx]
            s = p["sigma"][idx][:, idx]
            try:
                hinv = torch.linalg.inv(h)
                cov = hinv @ s @ hinv.T
                se_lam[idx] = torch.sqrt(torch.diagonal(cov).clamp_min(0.0))
            except RuntimeError:  # singular Hessian: no error bar
                se_lam[idx] = math.inf
        c = p["constraints"]
        c_se = torch.sqrt(torch.diagonal(p["sigma"]).clamp_min(0.0))
        slack = prob.slack(c)
        tol = 3 * c_se + 1e-9
        feasible = bool((slack >= -tol).all())
        cert = Certificate(
            primal_value=p["objective"],
            dual_value=p["value"],
            gap=p["objective"] - p["value"],
            constraint_values=c,
            slack=slack,
            feasible=feasible,
            status=status,
            multipliers=lam,
            method="monte_carlo",
            primal_error=p["objective_err"],
            dual_error=p["value_err"],
            gap_error=math.hypot(p["objective_err"], p["value_err"]),
            constraint_errors=c_se,
            complementary_slackness=lam * slack,
            normalisation=math.nan,
        )
        ess = p["ess"]
        if ess < self.min_ess:
            warnings.warn(
                f"{self._owner}: the effective sample size of the reweighting at the estimated "
                f"multipliers {lam.tolist()} is {ess:.3g} of n={self.n} (< {self.min_ess}): "
                "the estimate rests on few samples and its standard errors are unreliable. "
                "Use more samples or less demanding constraint levels.",
                LowEffectiveSampleSizeWarning,
                stacklevel=3,
            )
            msg += f"; low effective sample size {ess:.3g}"
        return EstimatedDualSolution(
            multipliers=lam,
            target=None,
            certificate=cert,
            status=status,
            dual_value=p["value"],
            gradient=p["grad"],
            iterations=its,
            n_evaluations=n_eval,
            message=msg,
            history=hist,
            domain={"description": prob.domain.description},
            multiplier_stderr=se_lam,
            predicted_constraints=c,
            predicted_constraint_stderr=c_se,
            ess=ess,
            n_samples=self.n,
            values_method=self.values_method,
            estimator=self,
        )

    def tradeoff(self, levels: Any) -> list[TradeoffPoint]:
        r""":math:`\hat P^\star(b)` at each row of ``levels`` ``(k,)`` or ``(k, m)``."""
        lv = torch.as_tensor(levels, dtype=_DTYPE)
        m = self.problem.m
        if lv.ndim == 1 and m == 1:
            lv = lv[:, None]
        if lv.ndim != 2 or lv.shape[1] != m:
            raise ValueError(
                f"{self._owner}: parameter 'levels' must have shape (k,) for one constraint or "
                f"(k, m={m}), got {tuple(lv.shape)}"
            )
        out = []
        for row in lv:
            lam, status, *_ = self._maximise(row, 1e-10, 200)
            p = self._parts(lam, row)
            out.append(TradeoffPoint(row.clone(), p["value"], p["value_err"], lam, status))
        return out
