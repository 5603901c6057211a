r"""The 2-D ring of eight Gaussians and small MLP noise-prediction models pretrained on it.

Two shipped checkpoints (float32, CPU):

- ``ring8_eps_mlp.pt``, the unconditional :class:`~dualdiff.models.MLPScoreNet`, made by
  ``python -m dualdiff.datasets.ring --output src/dualdiff/datasets/ring8_eps_mlp.pt``
  (the defaults of :func:`pretrain_ring_model`);
- ``ring8_cond_eps_mlp.pt``, the class-conditional :class:`~dualdiff.models.CondMLPScoreNet`
  (class ``c`` = ring component ``c``, plus the null class trained by condition dropout), made
  by ``python -m dualdiff.datasets.ring --conditional --output
  src/dualdiff/datasets/ring8_cond_eps_mlp.pt`` (the defaults of
  :func:`pretrain_conditional_ring_model`).

Rerunning a command reproduces its file up to floating-point non-determinism of the platform.
The small ring classifier :math:`\log p(c\mid x)` is in :mod:`dualdiff.datasets.ring_classifier`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

import torch

from .. import Estimate, denoising_score_matching_loss, ode_log_likelihood
from ..models.conditional_mlp import NULL_CLASS, CondMLPScoreNet
from ..models.gaussian_mixture import GaussianMixture
from ..models.module_adapter import MLPScoreNet, ModuleScoreModel

__all__ = [
    "conditional_ring_kl",
    "load_pretrained_conditional_ring",
    "load_pretrained_ring",
    "pretrain_conditional_ring_model",
    "pretrain_ring_model",
    "ring_mixture",
    "sample_labelled",
]

#: Architecture of the shipped model.
ARCH = {"dim": 2, "hidden": 128, "depth": 3, "time_embedding_dim": 32}
CHECKPOINT = "ring8_eps_mlp.pt"
#: Architecture of the shipped class-conditional model (class c = ring component c).
COND_ARCH = {"dim": 2, "n_classes": 8, "hidden": 128, "depth": 3, "time_embedding_dim": 32}
COND_CHECKPOINT = "ring8_cond_eps_mlp.pt"



def _adam_cosine(
    net: torch.nn.Module,
    loss: Callable[[], torch.Tensor],
    steps: int,
    lr: float,
    progress: bool,
    desc: str,
) -> None:
    """``steps`` Adam steps on ``loss()`` with a cosine-decayed step size; ``net`` left in eval."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    it: Iterable[int] = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc)
    for _ in it:
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
    net.eval()


def _load_shipped(net: torch.nn.Module, checkpoint: str) -> ModuleScoreModel:
    """``net`` with the shipped weights ``checkpoint`` (CPU, eval), as a noise-prediction model."""
    ref = resources.files("dualdiff.datasets").joinpath(checkpoint)
    with resources.as_file(ref) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return ModuleScoreModel(net, prediction="eps")

def ring_mixture(
    n: int = 8, radius: float = 4.0, std: float = 0.5, dtype: torch.dtype = torch.float64
) -> GaussianMixture:
    r"""Equal-weight mixture of ``n`` isotropic Gaussians (std ``std``) on a circle of ``radius``.

    Component ``k`` sits at angle :math:`2\pi k/n`.
    """
    ang = torch.arange(n, dtype=dtype) * (2 * math.pi / n)
    means = torch.stack([radius * ang.cos(), radius * ang.sin()], -1)
    return GaussianMixture(torch.full((n,), 1.0 / n, dtype=dtype), means, std**2)


def sample_labelled(
    mixture: GaussianMixture, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of ``mixture`` with their component labels.

    Returns
    -------
    x, labels
        Shapes ``(n, d)`` (the mixture's dtype) and ``(n,)`` (``torch.long``): ``labels[i]`` is
        the component ``x[i]`` was drawn from.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"sample_labelled: parameter 'n' must be an int >= 1, got {n!r}")
    labels = torch.multinomial(mixture.weights.detach(), n, replacement=True, generator=generator)
    z = torch.randn(n, mixture.dim, dtype=mixture.dtype, generator=generator)
    chol = torch.linalg.cholesky(mixture.covariances.detach())
    x = mixture.means.detach()[labels] + torch.einsum("nij,nj->ni", chol[labels], z)
    return x, labels


def pretrain_ring_model(
    steps: int = 8000,
    batch_size: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
) -> ModuleScoreModel:
    """Train :class:`MLPScoreNet` by denoising score matching on :func:`ring_mixture` samples."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    p0 = ring_mixture()
    net = MLPScoreNet(**ARCH)
    model = ModuleScoreModel(net, prediction="eps")

    def loss() -> torch.Tensor:
        x = p0.sample(batch_size, generator=gen).float()
        return denoising_score_matching_loss(model, x, generator=gen)

    _adam_cosine(net, loss, steps, lr, progress, "pretraining ring model")
    return model


def load_pretrained_ring() -> ModuleScoreModel:
    """The shipped pretrained ring model (float32, CPU), wrapped as a score model."""
    return _load_shipped(MLPScoreNet(**ARCH), CHECKPOINT)


def pretrain_conditional_ring_model(
    steps: int = 4000,
    batch_size: int = 1024,
    lr: float = 2e-3,
    p_uncond: float = 0.5,
    seed: int = 0,
    progress: bool = False,
) -> ModuleScoreModel:
    r"""Train :class:`~dualdiff.models.CondMLPScoreNet` on labelled ring samples.

    Each step draws ``batch_size`` labelled samples of :func:`ring_mixture`, replaces each
    label by the null class with probability ``p_uncond`` (condition dropout, as in
    classifier-free guidance) and takes an Adam step on the denoising score-matching loss
    (cosine-decayed step size). At its optimum the null class models the marginal
    :math:`p_0` and class ``c`` the component :math:`\mathcal N(\mu_c, \sigma^2 I)`.
    """
    if not 0.0 < p_uncond < 1.0:
        raise ValueError(
            "pretrain_conditional_ring_model: parameter 'p_uncond' must be in (0, 1) (both "
            f"the null class and the classes need data), got {p_uncond!r}"
        )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    p0 = ring_mixture()
    net = CondMLPScoreNet(**COND_ARCH)
    model = ModuleScoreModel(net, prediction="eps")

    def loss() -> torch.Tensor:
        x, labels = sample_labelled(p0, batch_size, gen)
        drop = torch.rand(batch_size, generator=gen) < p_uncond
        labels = torch.where(drop, torch.full_like(labels, NULL_CLASS), labels)
        return denoising_score_matching_loss(model, x.float(), generator=gen, cond=labels)

    _adam_cosine(net, loss, steps, lr, progress, "pretraining the conditional ring model")
    return model


def load_pretrained_conditional_ring() -> ModuleScoreModel:
    """The shipped class-conditional ring model (float32, CPU), wrapped as a score model.

    ``Conditioned(model, None)`` is its model of :func:`ring_mixture` (the null class),
    ``Conditioned(model, c)`` its model of component ``c``.
    """
    return _load_shipped(CondMLPScoreNet(**COND_ARCH), COND_CHECKPOINT)


def conditional_ring_kl(
    model: ModuleScoreModel,
    classes: tuple[int, ...] = tuple(range(8)),
    n_samples: int = 512,
    seed: int = 0,
    tol: float = 1e-5,
) -> dict[str, Estimate]:
    r"""KL estimates of a conditional ring model's views against the exact mixture.

    With :math:`\hat p` the probability-flow-ODE density of a view (float64,
    :func:`~dualdiff.ode_log_likelihood`), returns Monte Carlo estimates (mean and standard
    error over ``n_samples`` exact draws) of

    .. math::
        \mathrm{KL}(p_0\,\|\,\hat p_\varnothing)
            = \mathbb E_{p_0}[\log p_0 - \log\hat p_\varnothing],\qquad
        \mathrm{KL}(q_c\,\|\,\hat p_c) = \mathbb E_{q_c}[\log q_c - \log\hat p_c],

    under keys ``"null"`` and ``"class c"`` for each ``c`` in ``classes``. The ODE runs in the
    model's dtype (pass a float64 copy, ``copy.deepcopy(model.module).double()``, for solver
    accuracy beyond float32's).
    """
    p0 = ring_mixture()
    gen = torch.Generator().manual_seed(seed)
    dtype = next(iter(model.parameters())).dtype
    out: dict[str, Estimate] = {}
    views: list[tuple[str, Any, GaussianMixture]] = [("null", None, p0)]
    views += [(f"class {c}", c, p0.component(c)) for c in classes]
    for name, cond, ref in views:
        x = ref.sample(n_samples, generator=gen)
        ll = ode_log_likelihood(model, x.to(dtype), cond=cond, rtol=tol, atol=tol)
        terms = (ref.log_prob(x) - ll.to(torch.float64)).detach()
        out[name] = Estimate(
            float(terms.mean()), float(terms.std() / math.sqrt(n_samples)), n_samples
        )
    return out


def _main() -> None:  # pragma: no cover - regeneration script
    parser = argparse.ArgumentParser(description="Pretrain the demo's ring models.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--conditional",
        action="store_true",
        help="the class-conditional model (8 classes + null) instead of the unconditional one",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.conditional:
        steps = 4000 if args.steps is None else args.steps
        model = pretrain_conditional_ring_model(steps=steps, progress=True)
    else:
        steps = 8000 if args.steps is None else args.steps
        model = pretrain_ring_model(steps=steps, progress=True)
    torch.save(model.module.state_dict(), args.output)


if __name__ == "__main__":  # pragma: no cover
    _main()
