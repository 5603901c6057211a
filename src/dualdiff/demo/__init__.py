"""The main job: ``dualdiff demo`` — primal-dual unlearning on a 2-D ring of Gaussians."""

from .ring import load_pretrained_ring, pretrain_ring_model, ring_mixture

__all__ = ["load_pretrained_ring", "pretrain_ring_model", "ring_mixture"]
