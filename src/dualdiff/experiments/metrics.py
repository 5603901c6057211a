r"""Evaluation metrics of unlearned diffusion models, over generic inputs.

Classification metrics take labels ``(n,)`` (int64) or logits / log-probabilities ``(n, K)``
(floating; the predicted class is the arg-max) of *generated* samples, e.g. from
:class:`~dualdiff.datasets.digits_classifier.DigitsClassifier`:

* :func:`forget_accuracy` — fraction assigned to the forgotten classes (lower is better);
* :func:`class_proportions` — the class histogram of unconditional samples;
* :func:`retained_accuracy` — per-class accuracy of class-conditional samples of retained classes.

Distribution metrics compare features of real and generated images (torchmetrics'
implementations; the feature map is any callable, e.g. the digits classifier's penultimate layer
instead of downloaded Inception weights):

* :func:`frechet_distance` — Fréchet distance between Gaussian fits of the two feature sets;
* :func:`kid` — kernel inception distance (unbiased polynomial-kernel MMD², over subsets).

Likelihood metrics of a :class:`~dualdiff.models.ScoreModel` (``score(x, t, cond=None)``):

* :func:`nll` — negative log-likelihood of the probability-flow ODE model (Hutchinson's trace
  estimator beyond 8 dimensions), in nats and bits per dimension;
* :func:`elbo_nll` — the variational upper bound on the NLL (:func:`dualdiff.elbo`);
* :func:`deviation` — path-KL divergence between a model and a reference (:func:`dualdiff.path_kl`).

Every metric computes in float64 and returns an :class:`~dualdiff.Estimate` ``(value, stderr, n)``
where a standard error exists (the Fréchet distance has none: it returns a float).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from .._errors import NonFiniteError
from ..diffusion.likelihood import Divergence, Estimate, elbo, ode_log_likelihood, path_kl
from ..models.protocol import ScoreModel
from ..models.schedule import NoiseSchedule

__all__ = [
    "NLL",
    "ClassProportions",
    "RetainedAccuracy",
    "class_proportions",
    "deviation",
    "elbo_nll",
    "forget_accuracy",
    "frechet_distance",
    "kid",
    "nll",
    "retained_accuracy",
]

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


class ClassProportions(NamedTuple):
    r"""Class histogram of ``n`` samples.

    Attributes
    ----------
    proportions : torch.Tensor
        ``(K,)`` float64 fractions, summing to one.
    stderr : torch.Tensor
        ``(K,)`` binomial standard errors :math:`\sqrt{p_k(1-p_k)/n}`.
    n : int
        Number of samples.
    """

    proportions: torch.Tensor
    stderr: torch.Tensor
    n: int


class RetainedAccuracy(NamedTuple):
    r"""Per-class accuracy of class-conditional samples.

    Attributes
    ----------
    per_class : dict[int, Estimate]
        Class -> accuracy of the samples generated for that class (binomial standard error).
    mean : Estimate
        Unweighted mean over the classes, standard error
        :math:`\sqrt{\sum_c \mathrm{se}_c^2}/C`; ``n`` is the total number of samples.
    """

    per_class: dict[int, Estimate]
    mean: Estimate


class NLL(NamedTuple):
    r"""A negative log-likelihood in two units.

    Attributes
    ----------
    nats : Estimate
        Mean of :math:`-\log p(x)` over the points (standard error over the points).
    bits_per_dim : Estimate
        The same divided by :math:`D \ln 2` (``D`` entries per point).
    """

    nats: Estimate
    bits_per_dim: Estimate


# ---------------------------------------------------------------------- classification
def _predicted(labels_or_logits: Any, owner: str) -> tuple[torch.Tensor, int | None]:
    """Predicted labels ``(n,)`` and, for logits, the number of classes ``K``."""
    x = labels_or_logits
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{owner}: parameter 'labels_or_logits' must be a torch.Tensor of labels (n,) or "
            f"logits (n, K), got {type(x).__name__}"
        )
    if x.is_floating_point():
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 2:
            raise ValueError(
                f"{owner}: parameter 'labels_or_logits' as logits must have shape (n, K) with "
                f"n >= 1 and K >= 2, got {tuple(x.shape)}"
            )
        if torch.isnan(x).any():
            raise NonFiniteError(f"{owner}: parameter 'labels_or_logits' contains NaN")
        return x.argmax(-1), int(x.shape[1])
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(
            f"{owner}: parameter 'labels_or_logits' must be integer labels or floating logits, "
            f"got dtype {x.dtype}"
        )
    if x.ndim != 1 or x.shape[0] < 1:
        raise ValueError(
            f"{owner}: parameter 'labels_or_logits' as labels must have shape (n,) with n >= 1, "
            f"got {tuple(x.shape)}"
        )
    if int(x.min()) < 0:
        raise ValueError(
            f"{owner}: parameter 'labels_or_logits' must hold labels >= 0, got {int(x.min())}"
        )
    return x.to(torch.int64), None


def _classes(classes: Any, name: str, owner: str) -> list[int]:
    if isinstance(classes, int) and not isinstance(classes, bool):
        classes = [classes]
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    if not isinstance(classes, Iterable) or isinstance(classes, (str, bytes)):
        raise TypeError(
            f"{owner}: parameter '{name}' must be an int or a sequence of ints, got "
            f"{type(classes).__name__}"
        )
    out = list(classes)
    if not out or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in out):
        raise ValueError(
            f"{owner}: parameter '{name}' must be a non-empty sequence of ints >= 0, got {out!r}"
        )
    if len(set(out)) != len(out):
        raise ValueError(f"{owner}: parameter '{name}' must not repeat a class, got {out!r}")
    return out


def _binomial(hits: torch.Tensor) -> Estimate:
    """Fraction of true entries of a boolean ``(n,)`` tensor, binomial standard error."""
    n = int(hits.numel())
    p = float(hits.to(torch.float64).mean())
    return Estimate(p, math.sqrt(p * (1.0 - p) / n), n)


def forget_accuracy(labels_or_logits: torch.Tensor, forget_classes: Any) -> Estimate:
    r"""Fraction of generated samples the classifier assigns to a forgotten class.

    .. math:: \hat a = \frac1n \sum_{j=1}^n \mathbb 1[\hat c_j \in F],\qquad
              \mathrm{se} = \sqrt{\hat a(1-\hat a)/n}.

    Parameters
    ----------
    labels_or_logits
        Predicted labels ``(n,)`` (int) or logits / log-probabilities ``(n, K)`` (float).
    forget_classes
        One class or a sequence of distinct classes :math:`F` (ints >= 0, < K for logits).

    Returns
    -------
    Estimate
        :math:`\hat a`, its binomial standard error, ``n``.
    """
    owner = "forget_accuracy"
    pred, k = _predicted(labels_or_logits, owner)
    forget = _classes(forget_classes, "forget_classes", owner)
    if k is not None and max(forget) >= k:
        raise ValueError(
            f"{owner}: parameter 'forget_classes' must be < K = {k} (number of logit columns), "
            f"got {forget!r}"
        )
    hits = torch.isin(pred, torch.tensor(forget, dtype=torch.int64, device=pred.device))
    return _binomial(hits)


def class_proportions(labels_or_logits: torch.Tensor, num_classes: int) -> ClassProportions:
    r"""Class histogram :math:`\hat p_k = \frac1n\#\{j : \hat c_j = k\}` of ``n`` samples.

    Parameters
    ----------
    labels_or_logits
        Predicted labels ``(n,)`` in ``0..num_classes-1`` or logits ``(n, num_classes)``.
    num_classes
        Number of classes ``K`` (int >= 1).

    Returns
    -------
    ClassProportions
        ``(K,)`` proportions and binomial standard errors, ``n``.
    """
    owner = "class_proportions"
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"{owner}: parameter 'num_classes' must be an int >= 1, got {num_classes!r}"
        )
    pred, k = _predicted(labels_or_logits, owner)
    if k is not None and k != num_classes:
        raise ValueError(
            f"{owner}: parameter 'labels_or_logits' has K = {k} logit columns but "
            f"num_classes = {num_classes}"
        )
    if int(pred.max()) >= num_classes:
        raise ValueError(
            f"{owner}: parameter 'labels_or_logits' holds label {int(pred.max())} >= "
            f"num_classes = {num_classes}"
        )
    n = int(pred.numel())
    p = torch.bincount(pred.cpu(), minlength=num_classes).to(torch.float64) / n
    return ClassProportions(p, (p * (1 - p) / n).sqrt(), n)


def retained_accuracy(
    labels_or_logits: torch.Tensor, target_labels: torch.Tensor, retained_classes: Any = None
) -> RetainedAccuracy:
    r"""Per-class accuracy of class-conditional samples of the retained classes, and its mean.

    For each retained class ``c``, the samples generated *for* ``c`` (``target_labels == c``)
    are scored by the fraction the classifier assigns to ``c``:
    :math:`a_c = \frac{1}{n_c}\sum_{j: y_j = c}\mathbb 1[\hat c_j = c]`; the mean is
    :math:`\bar a = \frac1C\sum_c a_c`.

    Parameters
    ----------
    labels_or_logits
        Classifier output of the samples: labels ``(n,)`` or logits ``(n, K)``.
    target_labels
        ``(n,)`` int64: the class each sample was generated for.
    retained_classes
        The classes to score (default: every class present in ``target_labels``); each must
        have at least one sample.

    Returns
    -------
    RetainedAccuracy
        Per-class :class:`~dualdiff.Estimate` and their mean.
    """
    owner = "retained_accuracy"
    pred, _ = _predicted(labels_or_logits, owner)
    y = target_labels
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.shape != pred.shape:
        raise ValueError(
            f"{owner}: parameter 'target_labels' must be an integer tensor of shape "
            f"{tuple(pred.shape)} (one label per sample), got "
            + (f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor)
               else type(y).__name__)
        )
    y = y.to(device=pred.device, dtype=torch.int64)
    if retained_classes is None:
        classes = sorted(int(c) for c in torch.unique(y))
    else:
        classes = _classes(retained_classes, "retained_classes", owner)
    per: dict[int, Estimate] = {}
    for c in classes:
        mask = y == c
        if not bool(mask.any()):
            raise ValueError(
                f"{owner}: parameter 'retained_classes' contains class {c}, which has no "
                "samples in 'target_labels'"
            )
        per[c] = _binomial(pred[mask] == c)
    mean = sum(e.value for e in per.values()) / len(per)
    se = math.sqrt(sum(e.stderr**2 for e in per.values())) / len(per)
    return RetainedAccuracy(per, Estimate(mean, se, sum(e.n for e in per.values())))


# ---------------------------------------------------------------------- feature distances
class _Identity(torch.nn.Module):
    """Feature 'network' of precomputed features: torchmetrics then fits their statistics."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _features(x: Any, feature_fn: FeatureFn | None, name: str, owner: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"{owner}: parameter '{name}' must be a floating torch.Tensor, got "
            + (f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__)
        )
    if feature_fn is not None:
        if not callable(feature_fn):
            raise TypeError(
                f"{owner}: parameter 'feature_fn' must be callable (n, *event) -> (n, d), got "
                f"{type(feature_fn).__name__}"
            )
        with torch.no_grad():
            x = feature_fn(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{owner}: 'feature_fn' must return a torch.Tensor, got "
                            f"{type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(
            f"{owner}: features of '{name}' must have shape (n, d) with n >= 2, got "
            f"{tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{owner}: features of '{name}' contain NaN or inf")
    return x.detach().to(torch.float64).cpu()


def _pair(
    real: Any, fake: Any, feature_fn: FeatureFn | None, owner: str
) -> tuple[torch.Tensor, torch.Tensor]:
    fr = _features(real, feature_fn, "real", owner)
    ff = _features(fake, feature_fn, "fake", owner)
    if fr.shape[1] != ff.shape[1]:
        raise ValueError(
            f"{owner}: features of 'real' and 'fake' must have the same dimension, got "
            f"{fr.shape[1]} and {ff.shape[1]}"
        )
    return fr, ff


def frechet_distance(
    real: torch.Tensor, fake: torch.Tensor, feature_fn: FeatureFn | None = None
) -> float:
    r"""Fréchet distance between Gaussian fits of real and generated features (FID's formula).

    .. math::
        \mathrm{FD} = \|\mu_r - \mu_f\|^2 + \operatorname{tr}\big(\Sigma_r + \Sigma_f
            - 2(\Sigma_r\Sigma_f)^{1/2}\big),

    with sample means and unbiased covariances, computed in float64 by
    :class:`torchmetrics.image.fid.FrechetInceptionDistance` (its custom-feature mode).

    Parameters
    ----------
    real, fake
        ``(n_r, *event)`` and ``(n_f, *event)`` inputs of ``feature_fn``, or, with
        ``feature_fn=None``, features ``(n_r, d)`` and ``(n_f, d)`` directly (``n >= 2``).
    feature_fn
        Feature map ``(n, *event) -> (n, d)``, e.g.
        :meth:`~dualdiff.datasets.digits_classifier.DigitsClassifier.features`.

    Returns
    -------
    float
        The distance (>= 0 up to rounding). It is a biased plug-in estimate (the bias grows
        like ``d / n``) with no standard error; compare values at equal sample sizes.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    fr, ff = _pair(real, fake, feature_fn, "frechet_distance")
    metric = FrechetInceptionDistance(feature=_Identity(fr.shape[1]), normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(fr, real=True)
    metric.update(ff, real=False)
    return float(metric.compute())


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    feature_fn: FeatureFn | None = None,
    *,
    subsets: int = 100,
    subset_size: int | None = None,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> Estimate:
    r"""Kernel inception distance: the unbiased MMD² with a polynomial kernel, over subsets.

    .. math::
        k(a, b) = (\gamma\, a^\top b + c)^{p},\qquad
        \widehat{\mathrm{MMD}}^2 = \frac{1}{m(m-1)}\sum_{i\ne j}\big(k(r_i,r_j)+k(f_i,f_j)\big)
            - \frac{2}{m^2}\sum_{i,j}k(r_i,f_j),

    averaged over ``subsets`` random subsets of ``m = subset_size`` real and fake features
    (:class:`torchmetrics.image.kid.KernelInceptionDistance`; ``gamma=None`` means ``1/d``).

    Parameters
    ----------
    real, fake
        As in :func:`frechet_distance`.
    feature_fn
        As in :func:`frechet_distance`.
    subsets, subset_size
        Number and size of the subsets (default size: the smaller sample size).
    degree, gamma, coef
        Kernel parameters :math:`p`, :math:`\gamma`, :math:`c`.
    seed
        Seeds torchmetrics' subset permutations (drawn from the global RNG, which is forked
        and restored, so the caller's random state is untouched).

    Returns
    -------
    Estimate
        Mean over subsets; ``stderr`` is torchmetrics' standard deviation over the subsets,
        i.e. the error of a single ``subset_size``-sample estimate (the subsets overlap, so it is
        not divided by :math:`\sqrt{\text{subsets}}`); ``n`` is ``subset_size``.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    owner = "kid"
    fr, ff = _pair(real, fake, feature_fn, owner)
    m = min(fr.shape[0], ff.shape[0]) if subset_size is None else subset_size
    for name, value in (("subsets", subsets), ("subset_size", m), ("degree", degree),
                        ("seed", seed)):
        low = 0 if name == "seed" else (2 if name == "subset_size" else 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{owner}: parameter '{name}' must be an int >= {low}, got {value!r}")
    if m > min(fr.shape[0], ff.shape[0]):
        raise ValueError(
            f"{owner}: parameter 'subset_size' must be <= the smaller sample size "
            f"{min(fr.shape[0], ff.shape[0])}, got {m}"
        )
    if gamma is not None and (not isinstance(gamma, (int, float)) or not gamma > 0):
        raise ValueError(f"{owner}: parameter 'gamma' must be None or a number > 0, got {gamma!r}")
    if not isinstance(coef, (int, float)) or not coef > 0:
        raise ValueError(f"{owner}: parameter 'coef' must be a number > 0, got {coef!r}")
    with warnings.catch_warnings():
        # torchmetrics warns that it buffers all features: these are small feature matrices.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=_Identity(fr.shape[1]), subsets=subsets, subset_size=m, degree=degree,
            gamma=None if gamma is None else float(gamma), coef=float(coef), normalize=True,
        )
    metric.set_dtype(torch.float64)
    metric.update(fr, real=True)
    metric.update(ff, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return Estimate(float(mean), float(std), m)


# ---------------------------------------------------------------------- likelihoods
def _nll_from(log_p: torch.Tensor, d: int) -> NLL:
    terms = -log_p.detach().to(torch.float64).flatten()
    n = int(terms.numel())
    if not torch.isfinite(terms).all():
        raise NonFiniteError("nll: the log-likelihood of some points is NaN or infinite")
    value = float(terms.mean())
    se = float(terms.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("inf")
    scale = d * math.log(2.0)
    return NLL(Estimate(value, se, n), Estimate(value / scale, se / scale, n))


def _check_x(x: Any, owner: str, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"{owner}: parameter '{name}' must be a floating torch.Tensor of shape (n, *event), "
            "got "
            + (f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__)
        )
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            f"{owner}: parameter '{name}' must have shape (n, *event) with n >= 1, got "
            f"{tuple(x.shape)}"
        )
    return x


def nll(
    model: ScoreModel,
    x: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    cond: Any = None,
    divergence: Divergence = "auto",
    n_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    prior: Any = None,
    batch_size: int | None = None,
) -> NLL:
    r"""Negative log-likelihood of points under the probability-flow ODE model.

    :math:`-\log p(x)` from :func:`dualdiff.ode_log_likelihood` (the density at ``t_min`` of
    the model :func:`dualdiff.sample_ode` samples from), averaged over the points; with
    ``divergence="auto"`` the trace is exact up to 8 dimensions and Hutchinson's unbiased
    estimate beyond (an 8x8 image has ``D = 64``), whose noise is part of the reported
    standard error. Bits per dimension: :math:`-\log p(x)/(D\ln 2)` in the units of ``x``
    (no dequantisation offset).

    Parameters
    ----------
    model
        Score model.
    x
        ``(n, *event)`` points; computed in float64 unless the model needs float32 (then pass
        float32 points: they are used as given).
    schedule
        Noise schedule (default: the model's).
    cond
        Condition passed to ``model.score`` (``None``: unconditional).
    divergence, n_probes, rtol, atol, generator, prior
        As in :func:`dualdiff.ode_log_likelihood` (``prior=None``: the schedule's Gaussian).
    batch_size
        Points per ODE solve (default: all at once).

    Returns
    -------
    NLL
        Mean NLL in nats and bits per dimension, each with its standard error over the points.
    """
    owner = "nll"
    x = _check_x(x, owner)
    chunks = _chunks(x, batch_size, owner)
    log_p = torch.cat([
        ode_log_likelihood(
            model, c, schedule, divergence=divergence, n_probes=n_probes, rtol=rtol, atol=atol,
            generator=generator, prior=prior, cond=cond,
        )
        for c in chunks
    ])
    return _nll_from(log_p, x[0].numel())


def elbo_nll(
    model: ScoreModel,
    x: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    cond: Any = None,
    n_t: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> NLL:
    r"""Variational upper bound on the NLL, :math:`-\mathrm{ELBO}(x)` (:func:`dualdiff.elbo`).

    The per-point ELBO is an unbiased Monte Carlo estimate (``n_t`` time/noise draws per point),
    so the reported standard error over the points includes the Monte Carlo noise.

    Parameters
    ----------
    model, x, schedule, cond
        As in :func:`nll`.
    n_t
        Time/noise draws per point.
    generator
        Random generator of the draws.
    batch_size
        Points per model call (default: all at once).

    Returns
    -------
    NLL
        Mean :math:`-\mathrm{ELBO}` in nats and bits per dimension, with standard errors.
    """
    owner = "elbo_nll"
    x = _check_x(x, owner)
    with torch.no_grad():
        lb = torch.cat([
            elbo(model, c, schedule, n_t=n_t, generator=generator, cond=cond)
            for c in _chunks(x, batch_size, owner)
        ])
    return _nll_from(lb, x[0].numel())


def deviation(
    model: ScoreModel,
    reference: ScoreModel,
    samples: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    cond_model: Any = None,
    cond_reference: Any = None,
    n_t: int = 1,
    generator: torch.Generator | None = None,
) -> Estimate:
    r"""Deviation of ``model`` from ``reference``: the path-KL of their reverse SDEs.

    :func:`dualdiff.path_kl` of the two models, with the samples drawn from ``model``:

    .. math::
        \mathrm{KL}(\mathbb P^{m}\,\|\,\mathbb P^{r}) = \frac12\int g(t)^2\,
        \mathbb E_{x_t\sim p^{m}_t}\|s_m(x_t,t)-s_r(x_t,t)\|^2\,dt
        \;\ge\; \mathrm{KL}(p^{m}_{t_{\min}}\,\|\,p^{r}_{t_{\min}}),

    the objective :math:`\mathrm{KL}(p\,\|\,p_0)` of the reverse-KL and likelihood problems.
    For the forward direction (:math:`\mathrm{KL}(p_0\|p)`, data unlearning) swap the models
    and pass samples of the reference.

    Parameters
    ----------
    model, reference
        Score models (e.g. the unlearned model and the frozen pretrained one).
    samples
        ``(n, *event)`` samples **of** ``model`` at ``t = 0``.
    schedule
        Noise schedule (default: the model's).
    cond_model, cond_reference
        Conditions passed to the two models.
    n_t, generator
        Time/noise draws per sample and their random generator.

    Returns
    -------
    Estimate
        Path-KL in nats, standard error over the samples, ``n``.
    """
    samples = _check_x(samples, "deviation", "samples")
    return path_kl(
        model, reference, samples, schedule, n_t=n_t, generator=generator,
        cond_a=cond_model, cond_b=cond_reference,
    )


def _chunks(x: torch.Tensor, batch_size: int | None, owner: str) -> list[torch.Tensor]:
    if batch_size is None:
        return [x]
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(
            f"{owner}: parameter 'batch_size' must be None or an int >= 1, got {batch_size!r}"
        )
    return list(x.split(batch_size))
