r"""Unlearning problems stated with models: networks, forget sets and likelihood callables.

``KLConstrainedProblem(pretrained, unlearn, bounds, direction=...)`` and
``LikelihoodConstrainedProblem(pretrained, unlearn, bounds)`` build these classes when
``pretrained`` is a :class:`~dualdiff.models.ScoreModel` that is not a
:class:`~dualdiff.GaussianMixture` (e.g. a :class:`~dualdiff.models.ModuleScoreModel`, a
:class:`~dualdiff.models.Conditioned` view of a conditional network, or the diffusers
adapter). They have no closed form (``has_closed_form == False``: ``solve_dual``, ``target``
and ``certificate`` raise :class:`~dualdiff.ClosedFormUnavailableError`); the dual is
estimated by Monte Carlo over pretrained samples with ``estimate_dual`` (LU, RU;
:mod:`dualdiff.problems.estimated_dual`) and the model is fine-tuned by
:class:`~dualdiff.PrimalDualTrainer` (the model-level section of :doc:`/mathematics`):

* RU, :class:`ModelReverseKLProblem`: ``unlearn[i]`` a score model of concept :math:`q_i`
  (e.g. ``Conditioned(net, c)`` with ``pretrained = Conditioned(net, None)``). Log-ratios
  :math:`\log p_0 - \log q_i` from probability-flow ODE likelihoods of the two models, or from
  a user ``log_ratio`` (e.g. the implicit classifier :math:`\log p(c) - \log p(c\mid x)`,
  :func:`classifier_log_ratio`).
* FU, :class:`ModelForwardKLProblem`: ``unlearn[i]`` forget examples ``(n_i, *event)`` (or a
  sampler); ``pretrained_data`` are samples of :math:`p_0` (the whole training set, forget
  examples included, not the retain set). With a training set of ``N`` points,
  :math:`\lambda_{\max,i} = |A_i|/N`. The constraint values are the forget set's
  log-likelihood drop :math:`\Delta_i = E_{A_i}[\log p_0 - \log p_\theta] =
  \mathrm{KL}(q_i\|p_\theta) - \mathrm{KL}(q_i\|p_0)` (an empirical forget set has no
  density, so the entropy in :math:`\mathrm{KL}(q_i\|p_\theta)` is unknown but cancels): the
  ``bounds`` are levels on :math:`\Delta_i`.
* LU, :class:`ModelLikelihoodProblem`: ``unlearn[i]`` a callable :math:`\ell_i(x)\to(n,)`
  (e.g. a classifier's :math:`\log p(c\mid x)`) or a concept score model whose
  log-likelihood is estimated (ODE or ELBO).

Every tensor is ``(n, *event)``; ``event_shape`` is read from the data or given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._constants import FLOAT64 as _DTYPE
from .._errors import DualEstimateUnavailableError
from .._validation import as_tensor, check_choice
from ..models.protocol import ScoreModel
from ._estimates import estimate_forward, estimate_on_model_samples
from .contract import (
    ConstraintEstimate,
    DataSampler,
    DensityEstimator,
    UnlearningProblem,
)
from .dual_domain import DualDomain
from .estimated_dual import EstimatedDualSolution, MonteCarloDual
from .kl import KLConstrainedProblem
from .likelihood import LikelihoodConstrainedProblem
from .memorised import MemorisedForwardDual, memorised_forward_dual

__all__ = [
    "ComposedScore",
    "ModelForwardKLProblem",
    "ModelLikelihoodProblem",
    "ModelReverseKLProblem",
    "classifier_log_ratio",
]



def classifier_log_ratio(
    log_prob_classes: Callable[[torch.Tensor], torch.Tensor], log_prior: Any
) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""Implicit-classifier log-ratios for concepts :math:`q_i = p_0(\cdot\mid c_i)`.

    :math:`\log p_0(x) - \log q_i(x) = \log p(c_i) - \log p(c_i\mid x)`.

    Parameters
    ----------
    log_prob_classes
        ``fn(x) -> (m, n)``: :math:`\log p(c_i\mid x)` for the ``m`` concepts (an external
        classifier, or the model's own by Bayes from conditional and unconditional
        likelihoods).
    log_prior
        :math:`\log p(c_i)`, shape ``(m,)``: natural logs of the class frequencies, finite
        and ``<= 0`` (``math.log(0.1)``, not ``0.1``).

    Returns
    -------
    callable
        ``fn(x) -> (m, n)`` for ``log_ratio=`` of :class:`ModelReverseKLProblem`.

    Raises
    ------
    ValueError
        If ``log_prior`` is empty, not finite or has a value above 0 (not a log-probability).
    """
    prior = torch.as_tensor(log_prior, dtype=_DTYPE).reshape(-1, 1)
    if prior.numel() == 0 or not bool(torch.isfinite(prior).all()) or bool((prior > 0).any()):
        raise ValueError(
            "classifier_log_ratio: parameter 'log_prior' must be the natural logs of the "
            f"concepts' class probabilities, finite and <= 0 (e.g. math.log(0.1)), got "
            f"{prior.reshape(-1).tolist()}"
        )

    def fn(x: torch.Tensor) -> torch.Tensor:
        return prior - torch.as_tensor(log_prob_classes(x)).to(_DTYPE)

    return fn


class ComposedScore:
    r"""The composed score :math:`a\,s_0(x,t) - \sum_i c_i\,\nabla\ell_i(x,t)` of frozen models.

    RU: :math:`a = 1/(1-\Lambda)`, :math:`c_i=\lambda_i/(1-\Lambda)`, :math:`\nabla\ell_i=s_i`
    (ESD's negative guidance with :math:`\eta_i = \lambda_i/(1-\Lambda)`); LU with
    :math:`\ell_i = \log q_i`: :math:`a=1`, :math:`c_i=\lambda_i`. Exact at :math:`t=0`, the
    composition of noised scores at :math:`t>0` (an approximation, see
    :ref:`the diffusion view <diffusion-view>`). A callable :math:`\ell_i(x)` contributes
    :math:`\nabla_x\ell_i` at the noised point (autograd; an approximation unless
    :math:`\ell_i` is noise-aware).

    Parameters
    ----------
    base
        Score model of :math:`p_0`.
    others
        Score models, or callables ``l(x) -> (n,)``, one per constraint.
    power
        :math:`a`.
    coefficients
        :math:`c`, shape ``(m,)``.
    """

    def __init__(self, base: Any, others: Sequence[Any], power: float, coefficients: Any):
        self.base = base
        self.others = list(others)
        self.power = float(power)
        self.coefficients = [float(v) for v in torch.as_tensor(coefficients).reshape(-1)]
        self.schedule = getattr(base, "schedule", None)

    def score(
        self, x: torch.Tensor, t: torch.Tensor | float = 0.0, cond: Any = None
    ) -> torch.Tensor:
        """Composed score at ``(x, t)``, shaped like ``x``."""
        out = self.power * self.base.score(x, t).to(x.dtype)
        for c, other in zip(self.coefficients, self.others, strict=True):
            if c == 0.0:
                continue
            if isinstance(other, ScoreModel):
                out = out - c * other.score(x, t).to(x.dtype)
            else:
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(other(xg).sum(), xg)
                out = out - c * g.to(x.dtype)
        return out


class _RowCache:
    """Per-sample values ``(m,)`` cached by the bytes of each clean sample."""

    def __init__(self) -> None:
        self.table: dict[bytes, torch.Tensor] = {}

    def lookup(
        self, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        x64 = x.detach().to(device="cpu", dtype=_DTYPE)
        keys = [row.numpy().tobytes() for row in x64]
        missing = [i for i, k in enumerate(keys) if k not in self.table]
        if missing:
            vals = compute(x64[missing]).to(_DTYPE)
            for j, i in enumerate(missing):
                self.table[keys[i]] = vals[:, j]
        return torch.stack([self.table[k] for k in keys], dim=1)

    def values(self) -> torch.Tensor | None:
        """Every cached value, ``(m, N)`` (``None`` when empty)."""
        if not self.table:
            return None
        return torch.stack(list(self.table.values()), dim=1)


def _ess_fraction(log_w: torch.Tensor) -> float:
    r""":math:`(\sum w)^2/(n\sum w^2)` from log-weights ``(n,)``."""
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))) / (
        log_w.numel()
    )


def _tensor_sampler(data: torch.Tensor) -> DataSampler:
    data = data.detach().to(device="cpu", dtype=_DTYPE)

    def sampler(n: int, generator: torch.Generator | None) -> torch.Tensor:
        idx = torch.randint(0, data.shape[0], (n,), generator=generator)
        return data[idx]

    return sampler


def _whole(data: torch.Tensor) -> DataSampler:
    def sampler(n: int, generator: torch.Generator | None) -> torch.Tensor:
        return data

    return sampler


def _check_score_model(obj: Any, name: str, owner: str) -> Any:
    if not isinstance(obj, ScoreModel):
        raise TypeError(
            f"{owner}: parameter '{name}' must be a dualdiff.GaussianMixture (closed-form "
            "duality) or a ScoreModel with score(x, t, cond) (a problem stated with models, e.g. "
            f"ModuleScoreModel(net) or Conditioned(net, c)), got {type(obj).__name__}"
        )
    return obj


def _as_list(unlearn: Any, owner: str) -> list[Any]:
    if isinstance(unlearn, torch.Tensor) or not isinstance(unlearn, Sequence):
        unlearn = [unlearn]
    if len(unlearn) == 0:
        raise ValueError(
            f"{owner}: parameter 'unlearn' must be a non-empty list (one entry per "
            f"constraint), got {unlearn!r}"
        )
    return list(unlearn)


class _ModelProblem(UnlearningProblem):
    """Shared state of the model-level problems (pretrained model, data, pool, estimator)."""

    def __init__(
        self,
        pretrained: Any,
        m: int,
        bounds: Any,
        *,
        owner: str,
        pretrained_data: Any,
        event_shape: Sequence[int] | None,
        density: DensityEstimator | None,
        pool_size: int,
    ) -> None:
        self._owner = owner
        self.pretrained = _check_score_model(pretrained, "pretrained", owner)
        self._m = int(m)
        b = as_tensor(bounds, "bounds", owner, dtype=_DTYPE).reshape(-1)
        if b.numel() != self._m:
            raise ValueError(
                f"{owner}: parameter 'bounds' must have one level per constraint (m={self._m}), "
                f"got {b.numel()} value(s) {b.tolist()}"
            )
        self.bounds = b
        self.density = density if density is not None else DensityEstimator()
        if not isinstance(self.density, DensityEstimator):
            raise TypeError(
                f"{owner}: parameter 'density' must be a DensityEstimator, got "
                f"{type(density).__name__}"
            )
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 2:
            raise ValueError(
                f"{owner}: parameter 'pool_size' must be an int >= 2, got {pool_size!r}"
            )
        self.pool_size = pool_size
        self._data: torch.Tensor | None = None
        self._data_sampler: DataSampler | None = None
        shape: tuple[int, ...] | None = None
        if isinstance(pretrained_data, torch.Tensor):
            if pretrained_data.ndim < 2 or pretrained_data.shape[0] < 2:
                raise ValueError(
                    f"{owner}: parameter 'pretrained_data' must be a tensor (N >= 2, *event), "
                    f"got shape {tuple(pretrained_data.shape)}"
                )
            self._data = pretrained_data.detach().to(device="cpu", dtype=_DTYPE)
            shape = tuple(self._data.shape[1:])
        elif callable(pretrained_data):
            self._data_sampler = pretrained_data
        elif pretrained_data is not None:
            raise TypeError(
                f"{owner}: parameter 'pretrained_data' must be a tensor (N, *event), a sampler "
                f"fn(n, generator) or None, got {type(pretrained_data).__name__}"
            )
        if event_shape is not None:
            given = tuple(int(v) for v in event_shape)
            if shape is not None and given != shape:
                raise ValueError(
                    f"{owner}: parameter 'event_shape'={given} contradicts pretrained_data's "
                    f"event shape {shape}"
                )
            shape = given
        self._event_shape = shape
        self._cache = _RowCache()

    # ----------------------------------------------------------------- facts
    @property
    def m(self) -> int:
        return self._m

    @property
    def event_shape(self) -> tuple[int, ...]:
        if self._event_shape is None:
            raise ValueError(
                f"{self._owner}: the event shape is unknown; pass event_shape=(...) or "
                "pretrained_data=(N, *event) samples"
            )
        return self._event_shape

    @property
    def has_closed_form(self) -> bool:
        return False

    def reference_model(self) -> Any:
        return self.pretrained

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind}, m={self.m}, bounds={self.bounds.tolist()}, "
            f"event_shape={self._event_shape}, pretrained={type(self.pretrained).__name__})"
        )

    # ----------------------------------------------------------------- pretrained samples
    def _pool(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Clean pretrained samples (the data, or frozen-model draws made once and kept)."""
        if self._data is None:
            if self._data_sampler is not None:
                x = self._data_sampler(self.pool_size, generator)
            else:
                x = self.density.sample(
                    self.pretrained, self.pool_size, self.event_shape, generator
                )
            self._data = x.detach().to(device="cpu", dtype=_DTYPE)
            if self._event_shape is None:
                self._event_shape = tuple(self._data.shape[1:])
        return self._data

    def pretrained_sampler(self) -> DataSampler:
        if self._data_sampler is not None:
            return self._data_sampler
        pool = self._pool()
        return _tensor_sampler(pool)

    def pretrained_samples(
        self, samples: torch.Tensor | None, n_samples: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``samples`` if given, else ``n_samples`` of the data or of the frozen model."""
        if samples is not None:
            x = torch.as_tensor(samples).detach().to(device="cpu", dtype=_DTYPE)
            if self._event_shape is not None and tuple(x.shape[1:]) != self._event_shape:
                raise ValueError(
                    f"{self._owner}.estimate_dual: parameter 'samples' must have shape "
                    f"(n, *{self._event_shape}), got {tuple(x.shape)}"
                )
            return x
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 2:
            raise ValueError(
                f"{self._owner}.estimate_dual: parameter 'n_samples' must be an int >= 2, got "
                f"{n_samples!r}"
            )
        if self._data is not None:
            if n_samples >= self._data.shape[0]:
                return self._data
            idx = torch.randperm(self._data.shape[0], generator=generator)[:n_samples]
            return self._data[idx]
        if self._data_sampler is not None:
            return self._data_sampler(n_samples, generator).detach().to(dtype=_DTYPE)
        return self.density.sample(self.pretrained, n_samples, self.event_shape, generator)

    def _log_p0(self, x: torch.Tensor) -> torch.Tensor:
        return self.density.log_prob(self.pretrained, x)


class ModelReverseKLProblem(_ModelProblem):
    r"""RU stated with models: :math:`\min\mathrm{KL}(p\|p_0)` s.t. KL to each concept.

    The constraints are :math:`\mathrm{KL}(p\|q_i)\ge b_i`.

    Parameters
    ----------
    pretrained
        Frozen score model of :math:`p_0` (e.g. ``Conditioned(net, None)``).
    unlearn
        Score models of the concepts :math:`q_i` (e.g. ``Conditioned(net, c)``), one per
        constraint.
    bounds
        KL levels :math:`b_i \ge 0`, ``(m,)``.
    direction
        ``"reverse"`` (accepted for :class:`~dualdiff.KLConstrainedProblem`'s signature).
    log_ratio
        Optional ``fn(x) -> (m, n)`` giving :math:`\log p_0(x) - \log q_i(x)` on clean samples
        (e.g. :func:`classifier_log_ratio`); default: probability-flow ODE log-likelihoods of
        ``pretrained`` and each ``unlearn[i]`` (``density``).
    pretrained_data
        Clean samples of :math:`p_0` ``(N, *event)`` or a sampler ``fn(n, generator)``;
        default: ``pool_size`` draws of the frozen model's ODE sampler.
    event_shape
        Shape of one sample, when ``pretrained_data`` does not give it.
    density
        :class:`~dualdiff.problems.contract.DensityEstimator` of the frozen models' samples
        and log-likelihoods (default ODE).
    pool_size
        Number of frozen-model samples drawn when no data are given.

    Notes
    -----
    Dual domain: :math:`\lambda\ge0`, :math:`\Lambda<1`; the normalisability of
    :math:`p_0^{1/(1-\Lambda)}\prod_i q_i^{-\lambda_i/(1-\Lambda)}` cannot be checked without
    densities (``estimate_dual`` reports a low effective sample size where it fails).
    """

    kind = "RU"

    def __init__(
        self,
        pretrained: Any,
        unlearn: Any,
        bounds: Any,
        *,
        direction: str = "reverse",
        log_ratio: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pretrained_data: Any = None,
        event_shape: Sequence[int] | None = None,
        density: DensityEstimator | None = None,
        pool_size: int = 2048,
    ) -> None:
        owner = "KLConstrainedProblem"
        check_choice(direction, "direction", owner, ["reverse"])
        items = _as_list(unlearn, owner)
        self.unlearn = [_check_score_model(q, f"unlearn[{i}]", owner) for i, q in enumerate(items)]
        super().__init__(
            pretrained, len(self.unlearn), bounds, owner=owner, pretrained_data=pretrained_data,
            event_shape=event_shape, density=density, pool_size=pool_size,
        )
        if bool((self.bounds < 0).any()):
            raise ValueError(
                f"{owner}: parameter 'bounds' must be >= 0 (KL levels), got {self.bounds.tolist()}"
            )
        if log_ratio is not None and not callable(log_ratio):
            raise TypeError(
                f"{owner}: parameter 'log_ratio' must be a callable fn(x) -> (m, n), got "
                f"{type(log_ratio).__name__}"
            )
        self.log_ratio_fn = log_ratio
        self.direction = "reverse"

    @property
    def domain(self) -> DualDomain:  # noqa: D102
        return DualDomain(
            upper=torch.full((self.m,), math.inf, dtype=_DTYPE),
            cap=1.0,
            description="lam >= 0 and sum(lam) < 1 (normalisability of the tilt not checked "
            "at model level)",
        )

    def violations(self, constraints: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.bounds.to(constraints.device) - constraints.to(_DTYPE)

    def log_ratios(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p_0(x) - \log q_i(x)`, ``(m, n)`` float64 (cached per sample)."""

        def compute(z: torch.Tensor) -> torch.Tensor:
            if self.log_ratio_fn is not None:
                out = torch.as_tensor(self.log_ratio_fn(z)).to(_DTYPE).reshape(self.m, -1)
                return out
            lp0 = self._log_p0(z)
            return torch.stack([lp0 - self.density.log_prob(q, z) for q in self.unlearn])

        return self._cache.lookup(x, compute)

    def log_weight(self, lam: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:  # noqa: D102
        lam = lam.to(_DTYPE)
        eta = lam / (1.0 - float(lam.sum()))
        return eta @ self.log_ratios(x0)

    def composed_score(self, lam: torch.Tensor) -> Any:  # noqa: D102
        beta = 1.0 / (1.0 - float(lam.sum()))
        return ComposedScore(self.pretrained, self.unlearn, beta, beta * lam.to(_DTYPE))

    def sampler_constraint_models(self) -> list[Any]:  # noqa: D102
        return list(self.unlearn)

    def sampler_constraint_terms(  # noqa: D102
        self, x_final: torch.Tensor, path_kls: list[torch.Tensor]
    ) -> torch.Tensor:
        return torch.stack(path_kls)

    def population_ess(self, lam: torch.Tensor) -> float | None:
        r"""Population ESS :math:`1/E_{p_0}[w_\lambda^2]` from the estimated log-ratios.

        Over every pretrained sample whose log-ratios were estimated (``estimate_dual``,
        reweighted DSM batches); ``None`` before any.
        """
        r = self._cache.values()
        if r is None:
            return None
        lam = lam.to(_DTYPE)
        return _ess_fraction((lam / (1.0 - float(lam.sum()))) @ r)

    def estimate_constraints(  # noqa: D102
        self,
        model: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None,
        density: DensityEstimator,
        estimate_objective: bool = True,
    ) -> ConstraintEstimate:
        def terms(x: torch.Tensor, lp: torch.Tensor | None) -> torch.Tensor:
            assert lp is not None
            return lp - torch.stack([self.density.log_prob(q, x) for q in self.unlearn])

        return estimate_on_model_samples(
            self, model, n_samples=n_samples, generator=generator, density=density,
            terms=terms, needs_model_log_prob=True, log_p0=self._log_p0,
            estimate_objective=estimate_objective,
        )

    def estimate_dual(
        self,
        samples: torch.Tensor | None = None,
        *,
        n_samples: int = 1024,
        generator: torch.Generator | None = None,
        min_ess: float = 0.05,
    ) -> EstimatedDualSolution:
        r"""Estimate :math:`\lambda^\star`, the predicted KLs and :math:`P^\star` before training.

        :math:`\hat Z(\lambda) = \frac1n\sum_j\exp(\eta^\top r_j)`, :math:`r_j = \log p_0(x_j)
        - \log q(x_j)` on pretrained samples, :math:`\eta = \lambda/(1-\Lambda)`
        (:mod:`dualdiff.problems.estimated_dual`).

        Parameters
        ----------
        samples
            Clean pretrained samples ``(n, *event)``; default ``n_samples`` of the data or of
            the frozen model's sampler.
        n_samples
            Number of samples when ``samples`` is not given.
        generator
            Random generator (sampling, Hutchinson probes).
        min_ess
            Warn (:class:`~dualdiff.LowEffectiveSampleSizeWarning`) below this ESS fraction.

        Returns
        -------
        EstimatedDualSolution
            ``certificate.method == "monte_carlo"``, standard errors, ESS, ``tradeoff(levels)``.
        """
        x = self.pretrained_samples(samples, n_samples, generator)
        if self._event_shape is None:
            self._event_shape = tuple(x.shape[1:])
        r = self.log_ratios(x)
        how = "log_ratio" if self.log_ratio_fn is not None else self.density.likelihood
        return MonteCarloDual(self, r, "geometric", how, min_ess).solve()


class ModelForwardKLProblem(_ModelProblem):
    r"""FU stated with data: :math:`\min\mathrm{KL}(p_0\|p)` s.t. forget-set likelihood drops.

    The constraints are :math:`\Delta_i = E_{A_i}[\log p_0 - \log p] \ge b_i`.

    :math:`\Delta_i = \mathrm{KL}(q_i\|p) - \mathrm{KL}(q_i\|p_0)` for the empirical distribution
    :math:`q_i` of :math:`A_i`, so this is FU with levels shifted by the constant
    :math:`\mathrm{KL}(q_i\|p_0)` (unknown for an empirical :math:`q_i`; it cancels).

    Parameters
    ----------
    pretrained
        Frozen score model of :math:`p_0`.
    unlearn
        Forget examples, one tensor ``(n_i, *event)`` (or sampler ``fn(n, generator)``) per
        constraint.
    bounds
        Levels :math:`b_i \ge 0` on :math:`\Delta_i` (nats), ``(m,)``.
    direction
        ``"forward"``.
    pretrained_data
        Samples of :math:`p_0` ``(N, *event)`` or a sampler: the **whole** training set
        :math:`X`, forget examples included (or draws of the pretrained model), never the
        retain set :math:`X\setminus A` alone. The signed loss
        :math:`(E_{p_0}[\ell]-\sum_i\lambda_iE_{q_i}[\ell])/(1-\Lambda)` has minimiser
        :math:`(p_0-\sum_i\lambda_iq_i)/(1-\Lambda)`; with :math:`p_0` the empirical
        distribution of :math:`X` and :math:`\lambda = \lambda_{\max} = |A|/N` that is the
        empirical distribution of :math:`X\setminus A` (retraining without the forget set). With
        the retain set in place of :math:`X` every :math:`\lambda > 0` puts negative weight on
        the forget examples (gradient ascent on them, outside the dual domain). Default: draws
        of the frozen model's sampler.
    training_set_size
        :math:`N`, the size of the training set that contained the forget sets; gives
        :math:`\lambda_{\max,i} = |A_i|/N`.
    lam_max
        :math:`\lambda_{\max}` given directly (float or ``(m,)``); one of ``lam_max`` and
        ``training_set_size`` is required.
    event_shape, density, pool_size
        As in :class:`ModelReverseKLProblem`.

    Notes
    -----
    What can be estimated before training: the domain (:math:`\lambda_{\max}`) and, at
    :math:`\lambda_{\max}`, the target :math:`p_{\lambda_{\max}}` = the model retrained on the
    retain set (SISS's target). The dual itself,
    :math:`g(\lambda) = -H(p_0)+\sum_i\lambda_i(H(q_i)+b_i)-\int w\log w+(1-\Lambda)\log(1-\Lambda)`
    with :math:`w = p_0-\sum_i\lambda_iq_i`, needs the density ratio :math:`q_i/p_0` on the
    support of :math:`p_0`, which an empirical forget set does not have: ``estimate_dual`` raises
    :class:`~dualdiff.DualEstimateUnavailableError`, and the multipliers come from training.
    """

    kind = "FU"
    signed_loss = True
    sampler_form = False

    def __init__(
        self,
        pretrained: Any,
        unlearn: Any,
        bounds: Any,
        *,
        direction: str = "forward",
        pretrained_data: Any = None,
        training_set_size: int | None = None,
        lam_max: Any = None,
        event_shape: Sequence[int] | None = None,
        density: DensityEstimator | None = None,
        pool_size: int = 2048,
    ) -> None:
        owner = "KLConstrainedProblem"
        check_choice(direction, "direction", owner, ["forward"])
        items = _as_list(unlearn, owner)
        self._forget: list[torch.Tensor | None] = []
        self._forget_samplers: list[DataSampler] = []
        for i, a in enumerate(items):
            if isinstance(a, torch.Tensor):
                if a.ndim < 2 or a.shape[0] < 1:
                    raise ValueError(
                        f"{owner}: parameter 'unlearn[{i}]' must be forget examples "
                        f"(n_i >= 1, *event), got shape {tuple(a.shape)}"
                    )
                t = a.detach().to(device="cpu", dtype=_DTYPE)
                self._forget.append(t)
                self._forget_samplers.append(_tensor_sampler(t))
            elif callable(a) and not isinstance(a, ScoreModel):
                self._forget.append(None)
                self._forget_samplers.append(a)
            else:
                raise TypeError(
                    f"{owner}: parameter 'unlearn[{i}]' of a forward-KL problem stated with "
                    "models must be forget examples (a tensor (n_i, *event)) or a sampler "
                    f"fn(n, generator), got {type(a).__name__}"
                )
        shapes = {tuple(t.shape[1:]) for t in self._forget if t is not None}
        data_is_tensor = isinstance(pretrained_data, torch.Tensor)
        if event_shape is None and len(shapes) == 1 and not data_is_tensor:
            event_shape = next(iter(shapes))
        super().__init__(
            pretrained, len(items), bounds, owner=owner, pretrained_data=pretrained_data,
            event_shape=event_shape, density=density, pool_size=pool_size,
        )
        if self._event_shape is not None and shapes and shapes != {self._event_shape}:
            raise ValueError(
                f"{owner}: the forget examples' event shapes {sorted(shapes)} differ from the "
                f"pretrained data's {self._event_shape}"
            )
        if bool((self.bounds < 0).any()):
            raise ValueError(
                f"{owner}: parameter 'bounds' must be >= 0 (levels on the forget sets' "
                f"log-likelihood drop), got {self.bounds.tolist()}"
            )
        self.direction = "forward"
        self.training_set_size = training_set_size
        self._lam_max = self._resolve_lam_max(lam_max, training_set_size, owner)

    def _resolve_lam_max(self, lam_max: Any, size: int | None, owner: str) -> torch.Tensor:
        if lam_max is not None:
            lm = as_tensor(lam_max, "lam_max", owner, dtype=_DTYPE).reshape(-1)
            if lm.numel() == 1:
                lm = lm.expand(self.m).clone()
            if lm.numel() != self.m or bool((lm <= 0).any()) or bool((lm >= 1).any()):
                raise ValueError(
                    f"{owner}: parameter 'lam_max' must be in (0, 1) with one value per "
                    f"constraint (m={self.m}), got {lm.tolist()}"
                )
            return lm
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(
                    f"{owner}: parameter 'training_set_size' must be an int >= 1, got {size!r}"
                )
            if any(t is None for t in self._forget):
                raise ValueError(
                    f"{owner}: lam_max = |A|/N needs the forget examples as tensors; with "
                    "samplers pass lam_max=... directly"
                )
            vals = [t.shape[0] / size for t in self._forget if t is not None]
            if any(v >= 1 for v in vals):
                raise ValueError(
                    f"{owner}: parameter 'training_set_size'={size} must exceed every forget "
                    f"set's size {[t.shape[0] for t in self._forget if t is not None]}"
                )
            return torch.tensor(vals, dtype=_DTYPE)
        raise ValueError(
            f"{owner}: a forward-KL problem stated with data needs lam_max (ess inf p0/q): pass "
            "training_set_size=N (lam_max = |A_i|/N for forget sets inside a training set of N "
            "points) or lam_max=... directly"
        )

    @property
    def lam_max(self) -> torch.Tensor:
        r""":math:`\lambda_{\max,i}` ``(m,)`` (:math:`|A_i|/N` or as given)."""
        return self._lam_max.clone()

    def memorised_dual(self) -> MemorisedForwardDual:
        r"""The dual optimum if :math:`p_0` were the empirical distribution of the training set.

        The statement behind :math:`\lambda_{\max} = |A_i|/N` (:mod:`dualdiff.problems.memorised`,
        disjoint forget sets): :math:`\lambda^\star`, its fraction of :math:`\lambda_{\max}`
        and the least deviation :math:`\mathrm{KL}(p_0\|p_{\lambda^\star})` at this problem's
        levels, in closed form and before any training. Exact for a model that memorises its
        training set; for one that generalises, the memorising limit (not an estimate). E.g.
        a warm start: ``init_multipliers=problem.memorised_dual().multipliers``.
        """
        return memorised_forward_dual(
            self._lam_max, self.bounds, owner=f"{type(self).__name__}.memorised_dual"
        )

    @property
    def domain(self) -> DualDomain:  # noqa: D102
        return DualDomain(
            upper=self._lam_max.clone(),
            cap=1.0,
            description=(
                f"lam >= 0, lam_i <= lam_max_i = {self._lam_max.tolist()} (forget fractions), "
                "sum(lam) < 1 (p0 - sum_i lam_i q_i >= 0 is not checked for m > 1 at model level)"
            ),
            upper_closed=True,
        )

    def violations(self, constraints: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.bounds.to(constraints.device) - constraints.to(_DTYPE)

    def unlearn_samplers(self) -> list[DataSampler] | None:  # noqa: D102
        return list(self._forget_samplers)

    def signed_loss_coefficients(self, lam: torch.Tensor) -> tuple[float, list[float]]:  # noqa: D102
        one_m = 1.0 - float(lam.sum())
        return 1.0 / one_m, [float(v) / one_m for v in lam.tolist()]

    def log_weight(self, lam: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:  # noqa: D102
        raise TypeError(
            f"{type(self).__name__}: reweighted DSM needs the density ratio q_i/p0 on pretrained "
            "samples, which an empirical forget set does not have; use primal='composed' (the "
            "signed denoising loss, exact for FU)"
        )

    def composed_score(self, lam: torch.Tensor) -> Any:  # noqa: D102
        raise TypeError(
            f"{type(self).__name__}: FU trains with the signed denoising loss, not a composed score"
        )

    def estimate_constraints(  # noqa: D102
        self,
        model: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None,
        density: DensityEstimator,
        estimate_objective: bool = True,
    ) -> ConstraintEstimate:
        forget: list[DataSampler] = []
        for t, s in zip(self._forget, self._forget_samplers, strict=True):
            if t is not None and t.shape[0] <= n_samples:
                forget.append(_whole(t))  # the whole (small) forget set
            else:
                forget.append(s)
        return estimate_forward(
            self, model, n_samples=n_samples, generator=generator, density=density,
            forget=forget, log_forget_reference=[self._log_p0] * self.m,
            retain=self.pretrained_sampler(), log_p0=self._log_p0,
            estimate_objective=estimate_objective,
        )

    def estimate_dual(
        self,
        samples: torch.Tensor | None = None,
        *,
        n_samples: int = 1024,
        generator: torch.Generator | None = None,
    ) -> EstimatedDualSolution:
        """Not available for empirical forget sets (see the class notes)."""
        raise DualEstimateUnavailableError(
            f"{type(self).__name__}.estimate_dual: the forward-KL dual needs the density ratio "
            "q_i/p0 (the integral of w log w, w = p0 - sum_i lam_i q_i), which an empirical forget "
            "set does not have. Available before training: the domain, lam_max = "
            f"{self._lam_max.tolist()} (|A_i|/N), whose target p_lam_max is the model retrained "
            "on the retain set, and problem.memorised_dual() (the closed-form optimum if p0 "
            "memorised its training set). Train with PrimalDualTrainer(problem, model, "
            "primal='composed')."
        )


class ModelLikelihoodProblem(_ModelProblem):
    r"""LU stated with models: :math:`\min\mathrm{KL}(p\|p_0)` s.t. :math:`E_p[\ell_i]\le\tau_i`.

    Parameters
    ----------
    pretrained
        Frozen score model of :math:`p_0`.
    unlearn
        One per constraint: a callable ``l(x) -> (n,)`` (e.g. a classifier's
        :math:`\log p(c\mid x)`, differentiable for the reparameterised sampler form), or a
        concept score model :math:`q_i` whose log-likelihood :math:`\ell_i = \log q_i` is
        estimated (``density``: ODE or ELBO; not differentiable: use the sampler form with
        ``constraint_gradient="policy_gradient"``).
    bounds
        Levels :math:`\tau_i`, ``(m,)``.
    likelihood
        ``"log"`` (default; callables are taken as they are, score models give
        :math:`\log q_i`).
    expectation
        ``"model"`` (see :class:`~dualdiff.LikelihoodConstrainedProblem`).
    pretrained_data, event_shape, density, pool_size
        As in :class:`ModelReverseKLProblem`.
    """

    kind = "LU"
    sample_functional = True

    def __init__(
        self,
        pretrained: Any,
        unlearn: Any,
        bounds: Any,
        *,
        likelihood: str = "log",
        expectation: str = "model",
        pretrained_data: Any = None,
        event_shape: Sequence[int] | None = None,
        density: DensityEstimator | None = None,
        pool_size: int = 2048,
    ) -> None:
        owner = "LikelihoodConstrainedProblem"
        if expectation == "unlearn":
            from .._errors import IllPosedProblemError
            from .likelihood import _ILL_POSED

            raise IllPosedProblemError(_ILL_POSED.format(got=expectation))
        check_choice(expectation, "expectation", owner, ["model"])
        check_choice(likelihood, "likelihood", owner, ["log"])
        items = _as_list(unlearn, owner)
        for i, u in enumerate(items):
            if not callable(u) and not isinstance(u, ScoreModel):
                raise TypeError(
                    f"{owner}: parameter 'unlearn[{i}]' must be a callable l(x) -> (n,) or a "
                    f"concept ScoreModel, got {type(u).__name__}"
                )
        self.unlearn = items
        super().__init__(
            pretrained, len(items), bounds, owner=owner, pretrained_data=pretrained_data,
            event_shape=event_shape, density=density, pool_size=pool_size,
        )
        self.likelihood = likelihood
        self.expectation = expectation

    @property
    def domain(self) -> DualDomain:  # noqa: D102
        return DualDomain(
            upper=torch.full((self.m,), math.inf, dtype=_DTYPE),
            cap=math.inf,
            description=(
                "lam >= 0 with E_p0[exp(-sum lam_i l_i)] finite (not checked at model level)"
            ),
        )

    def violations(self, constraints: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return constraints.to(_DTYPE) - self.bounds.to(constraints.device)

    def likelihood_values(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\ell_i(x)` ``(m, n)`` float64; differentiable in ``x`` for callables."""
        rows = []
        for u in self.unlearn:
            if isinstance(u, ScoreModel):
                rows.append(self.density.log_prob(u, x.detach()))
            else:
                v = torch.as_tensor(u(x))
                rows.append(v.to(_DTYPE).reshape(x.shape[0]))
        return torch.stack(rows)

    def _values_cached(self, x: torch.Tensor) -> torch.Tensor:
        if all(not isinstance(u, ScoreModel) for u in self.unlearn):
            with torch.no_grad():
                return self.likelihood_values(x.to(_DTYPE))
        return self._cache.lookup(x, self.likelihood_values)

    def log_weight(self, lam: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return -(lam.to(_DTYPE) @ self._values_cached(x0))

    def composed_score(self, lam: torch.Tensor) -> Any:  # noqa: D102
        return ComposedScore(self.pretrained, self.unlearn, 1.0, lam.to(_DTYPE))

    def sampler_constraint_terms(  # noqa: D102
        self, x_final: torch.Tensor, path_kls: list[torch.Tensor]
    ) -> torch.Tensor:
        return self.likelihood_values(x_final)

    def population_ess(self, lam: torch.Tensor) -> float | None:
        r"""Population ESS :math:`1/E_{p_0}[w_\lambda^2]`.

        On the pretrained data/pool (callables) or on the samples whose likelihoods were
        estimated (concept models); ``None`` before any.
        """
        lam = lam.to(_DTYPE)
        if all(not isinstance(u, ScoreModel) for u in self.unlearn):
            if self._data is None:
                return None
            return _ess_fraction(self.log_weight(lam, self._data))
        values = self._cache.values()
        return None if values is None else _ess_fraction(-(lam @ values))

    def estimate_constraints(  # noqa: D102
        self,
        model: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None,
        density: DensityEstimator,
        estimate_objective: bool = True,
    ) -> ConstraintEstimate:
        def terms(x: torch.Tensor, lp: torch.Tensor | None) -> torch.Tensor:
            with torch.no_grad():
                return self.likelihood_values(x)

        return estimate_on_model_samples(
            self, model, n_samples=n_samples, generator=generator, density=density,
            terms=terms, needs_model_log_prob=False, log_p0=self._log_p0,
            estimate_objective=estimate_objective,
        )

    def estimate_dual(
        self,
        samples: torch.Tensor | None = None,
        *,
        n_samples: int = 1024,
        generator: torch.Generator | None = None,
        min_ess: float = 0.05,
    ) -> EstimatedDualSolution:
        r"""Estimate :math:`\lambda^\star`, the constraints and :math:`P^\star` from samples.

        Only pretrained samples and :math:`\ell` are needed:
        :math:`\hat g(\lambda) = -\log\frac1n\sum_j e^{-\lambda^\top\ell(x_j)}
        - \lambda^\top\tau`
        (:mod:`dualdiff.problems.estimated_dual`). Parameters as in
        :meth:`ModelReverseKLProblem.estimate_dual`.
        """
        x = self.pretrained_samples(samples, n_samples, generator)
        if self._event_shape is None:
            self._event_shape = tuple(x.shape[1:])
        values = self._values_cached(x)
        how = "likelihood" if all(not isinstance(u, ScoreModel) for u in self.unlearn) else (
            self.density.likelihood
        )
        return MonteCarloDual(self, values, "tilt", how, min_ess).solve()


KLConstrainedProblem.register(ModelReverseKLProblem)
KLConstrainedProblem.register(ModelForwardKLProblem)
LikelihoodConstrainedProblem.register(ModelLikelihoodProblem)
