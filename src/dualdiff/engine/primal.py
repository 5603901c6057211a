r"""Primal step forms of the primal-dual algorithm.

These are the primal step forms (a), (b) and (c) of
:ref:`the primal–dual algorithm <primal-dual>`.

Each form is a small class with :meth:`PrimalForm.sample_batch` (all randomness of one
step, drawn from the trainer's generator so that a step is a deterministic function of
:math:`\theta`, :math:`\lambda` and the batch) and one method computing the primal loss for a
batch, :meth:`PrimalForm.primal_loss`.

How the multiplier reaches the primal gradient. Cooper's primal Lagrangian is
:math:`f(\theta) + \lambda^\top g(\theta)` with :math:`\lambda` detached. That is right for the
sampler form (c), whose constraint estimate is differentiable in :math:`\theta`: the form returns
the differentiable violation and Cooper adds :math:`\lambda^\top g`. For the reweighted (a) and
composed (b) forms the multiplier enters through the *training target* (weights :math:`w_\lambda`,
or the composed score of :math:`p_\lambda`): for fixed :math:`\lambda` the minimiser of their loss
is the minimiser of the Lagrangian :math:`\mathcal L(p,\lambda)` over distributions (the closed-form
targets of :doc:`/mathematics`, and primal form (a) of
:ref:`the primal–dual algorithm <primal-dual>`), so their loss *is* the primal Lagrangian up to
terms constant in :math:`\theta`. They report no differentiable violation, and the engine marks the
constraint ``contributes_to_primal_update=False`` so that Cooper does not add :math:`\lambda^\top g`
a second time.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch

from .._constants import FLOAT64 as _DTYPE
from .._errors import NonFiniteError
from ..diffusion.likelihood import TimeSampling, sample_times
from ..diffusion.losses import (
    check_siss_options,
    denoising_score_matching_loss,
    gradient_norm_scale,
    siss_terms,
)
from ..diffusion.sampling import reverse_sde_mean
from ..models.interface import predict_eps, resolve_schedule
from ..models.schedule import NoiseSchedule
from .options import EngineConfigurationError, resolve

__all__ = [
    "ComposedScoreMatching",
    "DataSampler",
    "ImportanceSampledSignedLoss",
    "PrimalBatch",
    "PrimalForm",
    "PrimalLoss",
    "ReweightedDSM",
    "SamplerLagrangian",
    "TargetCache",
    "make_primal_form",
]

DataSampler = Callable[[int, "torch.Generator | None"], torch.Tensor]
"""``sampler(n, generator) -> (n, *event)`` tensor of data points."""


@dataclass
class PrimalBatch:
    r"""The random inputs of one primal step (all optional; each form fills what it needs).

    Attributes
    ----------
    x0
        Clean samples of the pretrained model, ``(n, *event)`` (float64, as drawn).
    t
        Diffusion times for ``x0``, ``(n,)``.
    noise
        Noise :math:`\varepsilon` for ``x0``, ``(n, *event)``.
    unlearn
        FU signed loss: one ``(x, t, noise)`` triple per unlearning distribution.
    prior
        Sampler form: the draw at ``t_max``, ``(n, *event)``.
    increments
        Sampler form: standard normal Brownian increments, ``(K, n, *event)``.
    from_forget
        SISS form: mixture labels ``(n,)`` (1.0 where the noisy point is drawn from the forget
        point of the pair, else 0.0).
    """

    x0: torch.Tensor | None = None
    t: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    unlearn: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    prior: torch.Tensor | None = None
    increments: torch.Tensor | None = None
    from_forget: torch.Tensor | None = None

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor of the batch."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                yield v
            elif isinstance(v, list):
                for triple in v:
                    yield from triple

    def is_finite(self) -> bool:
        """Whether every entry of every tensor is finite."""
        return all(bool(torch.isfinite(t).all()) for t in self.tensors())

    def to(self, device: torch.device | str) -> PrimalBatch:
        """Copy on ``device`` (dtypes unchanged)."""
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            x0=mv(self.x0),
            t=mv(self.t),
            noise=mv(self.noise),
            unlearn=[(a.to(device), b.to(device), c.to(device)) for a, b, c in self.unlearn],
            prior=mv(self.prior),
            increments=mv(self.increments),
            from_forget=mv(self.from_forget),
        )


@dataclass
class PrimalLoss:
    r"""Result of :meth:`PrimalForm.primal_loss`.

    Attributes
    ----------
    loss
        Scalar primal loss, differentiable in the model's parameters.
    violation
        Differentiable constraint violations ``(m,)`` (Cooper convention, ``<= 0`` feasible)
        when the form's constraint estimate depends on :math:`\theta`; else ``None``.
    stats
        Diagnostics (floats), e.g. the batch effective sample size ``"ess"``.
    """

    loss: torch.Tensor
    violation: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


class TargetCache:
    r"""Closed-form targets :math:`p_\lambda`, rebuilt only when :math:`\lambda` changes.

    Multipliers move on dual steps only, so most primal steps reuse the cached target. (The
    primal forms ask the problem for weights and composed scores instead; closed-form
    problems cache their targets themselves. Kept for users of closed-form problems.)
    """

    def __init__(self, problem: Any) -> None:
        self.problem = problem
        self._key: tuple[float, ...] | None = None
        self._target: Any = None
        #: Number of targets built so far (a new one may need an ESS check).
        self.builds = 0

    def __call__(self, lam: torch.Tensor) -> Any:
        """The target at multipliers ``lam`` ``(m,)``."""
        lam64 = lam.detach().to(device="cpu", dtype=_DTYPE).reshape(-1)
        key = tuple(lam64.tolist())
        if key != self._key:
            self._target = self.problem.target(lam64)
            self._key = key
            self.builds += 1
        return self._target

    @property
    def current(self) -> Any:
        """The last target built (``None`` before the first)."""
        return self._target


def _training_times(
    n: int, sched: NoiseSchedule, generator: torch.Generator | None, time_sampling: str
) -> torch.Tensor:
    """``n`` training times of the denoising loss (the proposal's weights are not used)."""
    return sample_times(n, sched, time_sampling, generator=generator)[0]  # type: ignore[arg-type]


def _model_dtype_device(model: Any) -> tuple[torch.dtype, torch.device]:
    for p in model.parameters():
        return p.dtype, p.device
    return _DTYPE, torch.device("cpu")


def _per_sample(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape ``(n,)`` to ``(n, 1, ..., 1)`` broadcasting against ``(n, *event)``."""
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


def _check_draw(x: Any, n: int, event: tuple[int, ...], what: str, owner: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (n, *event):
        raise ValueError(
            f"{owner}: {what} must return a tensor of shape {(n, *event)}, got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    return x.detach().to(device="cpu", dtype=_DTYPE)


class PrimalForm(ABC):
    r"""Base class of the primal step forms.

    Parameters
    ----------
    problem
        The :class:`~dualdiff.UnlearningProblem`.
    targets
        Unused (kept for compatibility; the problem provides weights and composed scores).
    pretrained_data
        ``sampler(n, generator) -> (n, *event)`` drawing clean samples of :math:`p_0`.
    unlearn_data
        One sampler per unlearning distribution (FU signed loss).
    time_sampling
        Density of the denoising loss's training times (the forms that train on noised data):
        ``"uniform"`` (default; :math:`t\sim\mathcal U(t_{\min}, t_{\max})`, the "simple"
        loss of DDPM) or ``"log_snr"`` (the log-SNR uniform, so that the mean squared noise
        error is, up to a constant factor, the denoising term of the ELBO: the likelihood
        weighting). The weighting changes which errors the loss pays for, not the population
        minimiser of the exact forms (the noised score of the target at every :math:`t`).
    """

    #: Name used by :class:`~dualdiff.engine.PrimalDualTrainer`.
    name: ClassVar[str] = ""
    #: True when :meth:`primal_loss` returns a violation differentiable in theta.
    differentiable_constraints: ClassVar[bool] = False
    #: True when the loss trains on samples of p0 reweighted by w_lam (population ESS matters).
    uses_weights: ClassVar[bool] = False

    def __init__(
        self,
        problem: Any,
        targets: TargetCache | None,
        pretrained_data: DataSampler,
        unlearn_data: Sequence[DataSampler | None],
        *,
        time_sampling: TimeSampling = "uniform",
    ) -> None:
        why = self.unsupported(problem)
        if why:
            raise EngineConfigurationError(
                f"{type(self).__name__}: primal={self.name!r} does not apply to "
                f"{type(problem).__name__}: {why}"
            )
        self.problem = problem
        self.targets = targets
        self.pretrained_data = pretrained_data
        self.unlearn_data = list(unlearn_data)
        self.time_sampling = resolve(
            time_sampling, "time_sampling", type(self).__name__, ("uniform", "log_snr")
        )
        self._schedule: tuple[int, NoiseSchedule] | None = None

    @classmethod
    def unsupported(cls, problem: Any) -> str:
        """Why the form cannot train ``problem`` (empty when it can)."""
        return ""

    def schedule(self, model: Any) -> NoiseSchedule:
        """The model's noise schedule (resolved once per model)."""
        if self._schedule is None or self._schedule[0] != id(model):
            self._schedule = (id(model), resolve_schedule(model, None, type(self).__name__))
        return self._schedule[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(problem={type(self.problem).__name__})"

    def config(self) -> dict[str, Any]:
        """Options of the form a checkpoint must agree on (none at the defaults)."""
        return {} if self.time_sampling == "uniform" else {"time_sampling": self.time_sampling}

    def _times(self, model: Any, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return _training_times(n, self.schedule(model), generator, self.time_sampling)

    def _draw_x0(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        x0 = self.pretrained_data(n, generator)
        return _check_draw(
            x0, n, tuple(self.problem.event_shape), "the pretrained data sampler",
            type(self).__name__,
        )

    def _dsm_batch(
        self, model: Any, n: int, generator: torch.Generator | None
    ) -> PrimalBatch:
        x0 = self._draw_x0(n, generator)
        t = self._times(model, n, generator)
        noise = torch.randn(x0.shape, dtype=_DTYPE, generator=generator)
        return PrimalBatch(x0=x0, t=t, noise=noise)

    def sample_batch(
        self, model: Any, n: int, generator: torch.Generator | None
    ) -> PrimalBatch:
        """Draw the random inputs of one step (on the CPU, float64)."""
        return self._dsm_batch(model, n, generator)

    @abstractmethod
    def primal_loss(
        self, model: Any, batch: PrimalBatch, multipliers: torch.Tensor
    ) -> PrimalLoss:
        """Primal loss of ``model`` on ``batch`` at (primal) multipliers ``(m,)``."""


class ReweightedDSM(PrimalForm):
    r"""(a) Reweighted denoising score matching — exact for RU, FU and LU.

    The target is a reweighting of the pretrained model, :math:`p_\lambda = w_\lambda p_0`
    (:meth:`~dualdiff.targets.Target.log_weight`), and

    .. math::
        \mathcal J(\theta;\lambda) = \sum_{j=1}^n \bar w_j\,
        \big\|\hat\varepsilon_\theta(\alpha_{t_j}x_0^{(j)}+\sigma_{t_j}\varepsilon_j, t_j)
        - \varepsilon_j\big\|^2/D,\qquad
        \bar w_j = \frac{w_\lambda(x_0^{(j)})}{\sum_k w_\lambda(x_0^{(k)})},
        \quad x_0^{(j)}\sim p_0,

    whose population minimiser is the exact noised score of :math:`p_\lambda` at every
    :math:`t` (since :math:`E_{p_0}[w_\lambda f] = E_{p_\lambda}[f]`). Weights are
    self-normalised per batch; the batch effective sample size
    :math:`(\sum_j w_j)^2/(n\sum_j w_j^2)` is reported as ``stats["ess"]``. FU weights are
    :math:`\ge 0` because the multipliers stay in the dual domain.
    """

    name = "reweighted_dsm"
    uses_weights = True

    def primal_loss(  # noqa: D102
        self, model: Any, batch: PrimalBatch, multipliers: torch.Tensor
    ) -> PrimalLoss:
        assert batch.x0 is not None and batch.t is not None and batch.noise is not None
        lam = multipliers.detach().to(device="cpu", dtype=_DTYPE)
        with torch.no_grad():
            log_w = self.problem.log_weight(lam, batch.x0.to(device="cpu", dtype=_DTYPE))
            log_w = log_w.to(_DTYPE).reshape(-1)
            p = torch.softmax(log_w, 0)
            n = log_w.shape[0]
            ess = float(1.0 / (n * (p**2).sum()))
        dtype, device = _model_dtype_device(model)
        w = (p * n).to(dtype=dtype, device=device)
        loss = denoising_score_matching_loss(
            model,
            batch.x0.to(dtype=dtype, device=device),
            t=batch.t.to(dtype=dtype, device=device),
            noise=batch.noise.to(dtype=dtype, device=device),
            weights=w,
            reduction="mean",
        )
        return PrimalLoss(loss=loss, stats={"ess": ess})


class ComposedScoreMatching(PrimalForm):
    r"""(b) Composed-score matching (ESD-style) and, for FU, the signed denoising loss.

    RU and LU: regress the model's noise prediction on the frozen target's *composed* noised
    score (exact at :math:`t=0`, an approximation for :math:`t>0`; see
    :ref:`the diffusion view <diffusion-view>`):

    .. math::
        \mathcal J(\theta;\lambda) = E\,\big\|\hat\varepsilon_\theta(x_t,t)
        + \sigma_t\,s^{\mathrm{comp}}_{\lambda}(x_t,t)\big\|^2/D,\qquad
        x_t = \alpha_t x_0+\sigma_t\varepsilon,\ x_0\sim p_0 .

    FU: the signed denoising loss, whose minimiser over score functions is the exact noised
    score of :math:`p_\lambda` (primal form (b) of
    :ref:`the primal–dual algorithm <primal-dual>`):

    .. math::
        \mathcal J(\theta;\lambda) = \frac{E_{p_0}[\ell_\theta] - \sum_i\lambda_i
        E_{q_i}[\ell_\theta]}{1-\Lambda},

    :math:`\ell_\theta` the per-sample denoising loss, with independent batches of
    :math:`p_0` and of each :math:`q_i`.
    """

    name = "composed"

    def sample_batch(  # noqa: D102
        self, model: Any, n: int, generator: torch.Generator | None
    ) -> PrimalBatch:
        batch = self._dsm_batch(model, n, generator)
        if self.problem.signed_loss:
            event = tuple(self.problem.event_shape)
            for i, sampler in enumerate(self.unlearn_data):
                if sampler is None:
                    raise EngineConfigurationError(
                        f"ComposedScoreMatching: the signed loss needs samples of unlearn[{i}]; "
                        "pass unlearn_data=[sampler, ...] to the trainer"
                    )
                xq = _check_draw(
                    sampler(n, generator), n, event, f"unlearn data sampler {i}",
                    "ComposedScoreMatching",
                )
                tq = self._times(model, n, generator)
                nq = torch.randn(xq.shape, dtype=_DTYPE, generator=generator)
                batch.unlearn.append((xq, tq, nq))
        return batch

    def primal_loss(  # noqa: D102
        self, model: Any, batch: PrimalBatch, multipliers: torch.Tensor
    ) -> PrimalLoss:
        assert batch.x0 is not None and batch.t is not None and batch.noise is not None
        dtype, device = _model_dtype_device(model)
        lam = multipliers.detach().to(dtype=_DTYPE, device="cpu")
        if self.problem.signed_loss:
            retain, forget = self.problem.signed_loss_coefficients(lam)
            loss = denoising_score_matching_loss(
                model,
                batch.x0.to(dtype=dtype, device=device),
                t=batch.t.to(dtype=dtype, device=device),
                noise=batch.noise.to(dtype=dtype, device=device),
            )
            loss = retain * loss
            for c_i, (xq, tq, nq) in zip(forget, batch.unlearn, strict=True):
                if c_i != 0.0:
                    lq = denoising_score_matching_loss(
                        model,
                        xq.to(dtype=dtype, device=device),
                        t=tq.to(dtype=dtype, device=device),
                        noise=nq.to(dtype=dtype, device=device),
                    )
                    loss = loss - c_i * lq
            return PrimalLoss(loss=loss)
        target = self.problem.composed_score(lam)
        sched = self.schedule(model)
        x0, t, eps = (v.to(device="cpu", dtype=_DTYPE) for v in (batch.x0, batch.t, batch.noise))
        a = _per_sample(torch.as_tensor(sched.alpha(t)).to(_DTYPE), x0.ndim)
        s = _per_sample(torch.as_tensor(sched.sigma(t)).to(_DTYPE), x0.ndim)
        x_t = a * x0 + s * eps
        with torch.no_grad():
            eps_star = -s * target.score(x_t, t).to(_DTYPE)
        eps_hat = predict_eps(
            model,
            x_t.to(dtype=dtype, device=device),
            t.to(dtype=dtype, device=device),
            s.to(dtype=dtype, device=device),
        )
        err = eps_hat - eps_star.to(dtype=dtype, device=device)
        return PrimalLoss(loss=err.pow(2).flatten(1).mean(1).mean())


class ImportanceSampledSignedLoss(PrimalForm):
    r"""FU's signed denoising loss estimated as SISS does: one noisy point per pair.

    Alberti et al., *Data Unlearning in Diffusion Models* (ICLR 2025). Each row pairs a sample
    :math:`x_j` of :math:`p_0` (the pretrained data) with a sample :math:`a_j` of the forget
    distribution :math:`q`; they share the time and the noise, and the noisy point is drawn
    from the defensive mixture :math:`(1-\kappa)\,q(\cdot\mid x_j)+\kappa\,q(\cdot\mid a_j)`.
    With the importance-weighted per-pair losses :math:`L_x, L_a` of
    :func:`~dualdiff.diffusion.losses.siss_terms` (one network evaluation),

    .. math::
        \mathcal J(\theta;\lambda) = \frac{\overline{L_x} - \lambda\,\overline{L_a}}{1-\lambda},

    an unbiased estimator of the signed loss of :class:`ComposedScoreMatching` (same
    population objective, same minimiser, one forward pass instead of two). One forget set
    (:math:`m = 1`), as in SISS.

    With ``scaling_norm`` :math:`s` (SISS's released gradient handling) the forget term's
    gradient is rescaled to norm :math:`s` at every step and the data term is not divided by
    :math:`1-\lambda`:

    .. math::
        \nabla\mathcal J = \nabla\overline{L_x} - s\,\frac{\nabla\overline{L_a}}
        {\|\nabla\overline{L_a}\|},

    so :math:`\lambda` no longer enters the step (one extra backward pass; the trainer's
    ``grad_clip`` then clips the total, ``1.0`` in the released code). ``stats`` records
    ``"siss_forget_grad_norm"`` and ``"siss_forget_scale"`` (the effective forget weight
    :math:`s/\|\nabla\overline{L_a}\|`), and always ``"siss_mean_w_x"``, ``"siss_mean_w_a"``.

    Parameters
    ----------
    kappa
        Weight of the forget transition in the mixture, in ``(0, 1)`` (SISS's
        :math:`\lambda`; default ``0.5`` as in the paper).
    scaling_norm
        ``None`` (plain importance-sampled signed loss) or :math:`s > 0`.
    time_sampling
        As for every denoising form (:class:`PrimalForm`); the pair shares its time.
    """

    name = "siss"

    @classmethod
    def unsupported(cls, problem: Any) -> str:  # noqa: D102
        if not problem.signed_loss:
            return "SISS estimates the signed denoising loss of forward-KL (FU) problems"
        if problem.m != 1:
            return f"SISS pairs data with one forget set, the problem has m={problem.m}"
        return ""

    def __init__(
        self,
        problem: Any,
        targets: TargetCache | None,
        pretrained_data: DataSampler,
        unlearn_data: Sequence[DataSampler | None],
        *,
        kappa: float = 0.5,
        scaling_norm: float | None = None,
        time_sampling: TimeSampling = "uniform",
    ) -> None:
        super().__init__(
            problem, targets, pretrained_data, unlearn_data, time_sampling=time_sampling
        )
        self.kappa, self.scaling_norm = check_siss_options(
            kappa, scaling_norm, "ImportanceSampledSignedLoss"
        )
        if self.unlearn_data[0] is None:
            raise EngineConfigurationError(
                "ImportanceSampledSignedLoss: SISS needs samples of the forget set; pass "
                "unlearn_data=[sampler] to the trainer"
            )

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {"kappa": self.kappa, "scaling_norm": self.scaling_norm, **super().config()}

    def sample_batch(  # noqa: D102
        self, model: Any, n: int, generator: torch.Generator | None
    ) -> PrimalBatch:
        batch = self._dsm_batch(model, n, generator)
        sampler = self.unlearn_data[0]
        assert sampler is not None
        xq = _check_draw(
            sampler(n, generator), n, tuple(self.problem.event_shape), "unlearn data sampler 0",
            "ImportanceSampledSignedLoss",
        )
        b = (torch.rand(n, dtype=_DTYPE, generator=generator) < self.kappa).to(_DTYPE)
        assert batch.t is not None and batch.noise is not None
        batch.unlearn.append((xq, batch.t, batch.noise))
        batch.from_forget = b
        return batch

    def primal_loss(  # noqa: D102
        self, model: Any, batch: PrimalBatch, multipliers: torch.Tensor
    ) -> PrimalLoss:
        assert batch.x0 is not None and batch.t is not None and batch.noise is not None
        assert batch.from_forget is not None
        dtype, device = _model_dtype_device(model)
        lam = multipliers.detach().to(dtype=_DTYPE, device="cpu")
        xq = batch.unlearn[0][0]
        l_x, l_a, w_x, w_a = siss_terms(
            model, batch.x0.to(device), xq.to(device), batch.t.to(device),
            batch.noise.to(device), batch.from_forget.to(device), self.kappa,
            schedule=self.schedule(model), model_dtype=dtype,
        )
        data_term, forget_term = l_x.mean(), l_a.mean()
        stats = {"siss_mean_w_x": float(w_x.mean()), "siss_mean_w_a": float(w_a.mean())}
        if self.scaling_norm is None:
            retain, forget = self.problem.signed_loss_coefficients(lam)
            loss = retain * data_term - forget[0] * forget_term
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            try:
                scale, g_norm = gradient_norm_scale(forget_term, params, self.scaling_norm)
            except NonFiniteError as exc:
                from .cmp import NonFiniteStep

                raise NonFiniteStep(str(exc)) from exc
            stats.update(siss_forget_grad_norm=g_norm, siss_forget_scale=scale)
            loss = data_term - scale * forget_term
        return PrimalLoss(loss=loss.to(dtype), stats=stats)


class SamplerLagrangian(PrimalForm):
    r"""(c) Lagrangian on the sampler: pathwise KL plus a differentiable constraint estimate.

    The model's own Euler–Maruyama trajectory (``steps`` steps on the uniform grid
    :math:`t_{\max}=t_0>\dots>t_K=t_{\min}`, :math:`h = (t_{\max}-t_{\min})/K`)

    .. math::
        x_{k+1} = x_k - h\big[f(t_k)x_k - g(t_k)^2 s_\theta(x_k,t_k)\big] + g(t_k)\sqrt h\,z_k,
        \qquad x_0\sim\mathcal N(0,\sigma_{t_{\max}}^2 I),

    is differentiated through (reparameterisation). The objective is the discretised Girsanov
    KL between the model's and the frozen reference's path measures,

    .. math::
        \widehat{\mathrm{KL}}(\mathbb P_\theta\|\mathbb P_{\mathrm{ref}}) = \frac1n\sum_{j}
        \sum_{k=0}^{K-1}\frac{h\,g(t_k)^2}{2\sigma_{t_k}^2}
        \big\|\hat\varepsilon_\theta(x^{(j)}_k,t_k)-\hat\varepsilon_{\mathrm{ref}}(x^{(j)}_k,t_k)
        \big\|^2,

    an upper bound on :math:`\mathrm{KL}(p_\theta\|p_0)` (data processing). The differentiable
    violations added by Cooper as :math:`\lambda^\top g(\theta)` are

    * LU: :math:`g_i = \frac1n\sum_j \ell_i(x^{(j)}_K) - \tau_i` (the authors' practice,
      primal form (c) of :ref:`the primal–dual algorithm <primal-dual>`), differentiated
      either through the trajectory (``constraint_gradient="reparameterized"``) or by the
      policy gradient (``"policy_gradient"``, REINFORCE over the sampler's Gaussian
      transitions, the estimator of RL fine-tuning of diffusion models):

      .. math::
          \nabla_\theta E[\ell_i(x_K)] = E\Big[\big(\ell_i(x_K)-\beta\big)\,
          \nabla_\theta\sum_{k=0}^{K-1}\log\mathcal N\big(x_{k+1};\,\mu_\theta(x_k,t_k),\,
          g(t_k)^2h\,I\big)\Big],\qquad
          \mu_\theta(x,t) = x - h\big[f(t)x - g(t)^2 s_\theta(x,t)\big],

      with the states held fixed and the leave-one-out batch mean as baseline :math:`\beta`
      (unbiased). It needs no gradient of :math:`\ell_i` (non-differentiable likelihoods,
      e.g. classifier outputs or thresholds) and no backpropagation through the chain for
      the constraint, at the price of one more model evaluation per step and a higher
      variance. The violation's value is the same estimate either way;
    * RU: :math:`g_i = b_i - \widehat{\mathrm{KL}}(\mathbb P_\theta\|\mathbb P_{q_i})` with the
      same path estimator against the score of :math:`q_i` (a path-measure surrogate of
      :math:`\mathrm{KL}(p_\theta\|q_i)`).

    FU (expectations under :math:`q_i`, not under the model) has no sampler form. The
    problem supplies the constraint terms
    (:meth:`~dualdiff.problems.UnlearningProblem.sampler_constraint_terms`) and the sign.

    Parameters
    ----------
    steps
        Euler–Maruyama steps ``K`` (memory grows linearly: the trajectory is kept for
        backpropagation).
    reference
        Frozen score model of the objective (default: the problem's
        :meth:`~dualdiff.problems.UnlearningProblem.reference_model`: the pretrained mixture,
        or the frozen pretrained network).
    constraint_gradient
        ``"reparameterized"`` (default) or ``"policy_gradient"`` (LU only): how the gradient
        of the LU constraint term is estimated (above).
    """

    name = "sampler"
    differentiable_constraints = True

    @classmethod
    def unsupported(cls, problem: Any) -> str:  # noqa: D102
        if not problem.sampler_form:
            return (
                "its constraints are expectations under the unlearning distributions, not under "
                "the model's samples (forward KL); use 'reweighted_dsm' or 'composed'"
            )
        return ""

    def __init__(
        self,
        problem: Any,
        targets: TargetCache | None,
        pretrained_data: DataSampler,
        unlearn_data: Sequence[DataSampler | None],
        *,
        steps: int = 50,
        reference: Any = None,
        constraint_gradient: str = "reparameterized",
    ) -> None:
        super().__init__(problem, targets, pretrained_data, unlearn_data)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(
                f"SamplerLagrangian: parameter 'steps' must be an int >= 1, got {steps!r}"
            )
        self.constraint_gradient = resolve(
            constraint_gradient,
            "constraint_gradient",
            "SamplerLagrangian",
            ("reparameterized", "policy_gradient"),
        )
        if self.constraint_gradient == "policy_gradient" and not problem.sample_functional:
            raise EngineConfigurationError(
                "SamplerLagrangian: constraint_gradient='policy_gradient' needs a likelihood "
                f"constraint (LU); the constraint of {type(problem).__name__} is a path KL that "
                "depends on theta directly, use 'reparameterized'"
            )
        self.steps = steps
        self.reference = reference if reference is not None else problem.reference_model()

    def sample_batch(  # noqa: D102
        self, model: Any, n: int, generator: torch.Generator | None
    ) -> PrimalBatch:
        sched = self.schedule(model)
        event = tuple(self.problem.event_shape)
        sigma_max = float(sched.sigma(torch.tensor(float(sched.t_max), dtype=_DTYPE)))
        prior = sigma_max * torch.randn(n, *event, dtype=_DTYPE, generator=generator)
        inc = torch.randn(self.steps, n, *event, dtype=_DTYPE, generator=generator)
        return PrimalBatch(prior=prior, increments=inc)

    def primal_loss(  # noqa: D102
        self, model: Any, batch: PrimalBatch, multipliers: torch.Tensor
    ) -> PrimalLoss:
        assert batch.prior is not None and batch.increments is not None
        dtype, device = _model_dtype_device(model)
        sched = self.schedule(model)
        prob = self.problem
        grid = _em_grid(sched, self.steps)
        x = batch.prior.to(dtype=dtype, device=device)
        n = x.shape[0]
        others = prob.sampler_constraint_models()
        kl = torch.zeros(n, dtype=dtype, device=device)
        kl_q = [torch.zeros(n, dtype=dtype, device=device) for _ in others]
        policy = self.constraint_gradient == "policy_gradient"
        states = [x.detach()] if policy else []
        for k, st in enumerate(grid):
            eps_theta = _model_eps(model, x, st)
            scale = st.h * st.g2 / (2.0 * st.sigma**2)
            eps_ref = -st.sigma * self.reference.score(x, st.t).to(dtype)
            kl = kl + scale * (eps_theta - eps_ref).pow(2).flatten(1).sum(1)
            for i, q in enumerate(others):
                eps_q = -st.sigma * q.score(x, st.t).to(dtype)
                kl_q[i] = kl_q[i] + scale * (eps_theta - eps_q).pow(2).flatten(1).sum(1)
            z = batch.increments[k].to(dtype=dtype, device=device)
            x = _em_mean(x, eps_theta, st) + math.sqrt(st.g2 * st.h) * z
            if policy:
                states.append(x.detach())
        x64 = x.to(_DTYPE).cpu() if device.type != "cpu" else x.to(_DTYPE)
        if policy:
            x64 = x64.detach()
        kls64 = [v.to(_DTYPE).cpu() for v in kl_q]
        terms = prob.sampler_constraint_terms(x64, kls64).to(_DTYPE)  # (m, n)
        violation = prob.violations(terms.mean(1))
        if policy:
            logp = _path_log_prob(model, states, grid).to(_DTYPE).cpu()
            violation = violation + _score_function_term(list(terms), logp)
        return PrimalLoss(
            loss=kl.mean(),
            violation=violation,
            stats={"path_kl": float(kl.detach().mean())},
        )



@dataclass(frozen=True)
class _EMStep:
    """One Euler–Maruyama step of the reverse SDE: time, step size and SDE coefficients."""

    t: float
    h: float
    f: float
    g2: float
    sigma: float


def _em_grid(sched: Any, steps: int) -> list[_EMStep]:
    """The uniform grid t_max = t_0 > ... > t_K = t_min with f(t_k), g(t_k)^2, sigma(t_k)."""
    times = torch.linspace(float(sched.t_max), float(sched.t_min), steps + 1, dtype=_DTYPE)
    grid = []
    for k in range(steps):
        t64 = times[k]
        grid.append(
            _EMStep(
                t=float(t64),
                h=float(times[k]) - float(times[k + 1]),
                f=float(sched.drift_coef(t64)),
                g2=float(sched.g(t64)) ** 2,
                sigma=float(sched.sigma(t64)),
            )
        )
    return grid


def _model_eps(model: Any, x: torch.Tensor, st: _EMStep) -> torch.Tensor:
    """The model's noise prediction at ``(x, st.t)``."""
    n = x.shape[0]
    tt = torch.full((n,), st.t, dtype=x.dtype, device=x.device)
    sig_t = torch.full((n,) + (1,) * (x.ndim - 1), st.sigma, dtype=x.dtype, device=x.device)
    return predict_eps(model, x, tt, sig_t)


def _em_mean(x: torch.Tensor, eps: torch.Tensor, st: _EMStep) -> torch.Tensor:
    r"""Transition mean :math:`x - h[f x - g^2 s]`, :math:`s = -\hat\varepsilon/\sigma`."""
    return reverse_sde_mean(x, -eps / st.sigma, st.f, st.g2, st.h)


def _path_log_prob(model: Any, states: list[torch.Tensor], grid: list[_EMStep]) -> torch.Tensor:
    r"""Path log-likelihood up to constants, ``(n,)``.

    :math:`\sum_k \log\mathcal N(x_{k+1};\mu_\theta(x_k,t_k),g^2h)`; the states are fixed
    (detached), only :math:`\mu_\theta` carries gradients.
    """
    total = torch.zeros(states[0].shape[0], dtype=states[0].dtype, device=states[0].device)
    for k, st in enumerate(grid):
        mean = _em_mean(states[k], _model_eps(model, states[k], st), st)
        total = total - (states[k + 1] - mean).pow(2).flatten(1).sum(1) / (2.0 * st.g2 * st.h)
    return total


def _score_function_term(values: list[torch.Tensor], logp: torch.Tensor) -> torch.Tensor:
    r"""Zero-valued term whose gradient is the REINFORCE estimate of :math:`\nabla E[\ell_i]`.

    ``values[i]`` are :math:`\ell_i(x_K^{(j)})` ``(n,)`` (no gradient), ``logp`` the path
    log-likelihoods ``(n,)`` (with gradient); the baseline of sample ``j`` is the mean of the
    other samples (leave-one-out, so the estimator stays unbiased).
    """
    n = logp.shape[0]
    terms = []
    for v in values:
        v = v.detach()
        baseline = (v.sum() - v) / max(n - 1, 1)
        surrogate = ((v - baseline) * logp).mean()
        terms.append(surrogate - surrogate.detach())
    return torch.stack(terms)


_FORMS: dict[str, type[PrimalForm]] = {
    ReweightedDSM.name: ReweightedDSM,
    ComposedScoreMatching.name: ComposedScoreMatching,
    ImportanceSampledSignedLoss.name: ImportanceSampledSignedLoss,
    SamplerLagrangian.name: SamplerLagrangian,
}


def make_primal_form(
    name: str,
    problem: Any,
    targets: TargetCache | None,
    pretrained_data: DataSampler,
    unlearn_data: Sequence[DataSampler | None],
    **options: Any,
) -> PrimalForm:
    """Instantiate the primal form called ``name`` (see :data:`~dualdiff.engine.PRIMALS`)."""
    cls = _FORMS[name]
    return cls(problem, targets, pretrained_data, unlearn_data, **options)
