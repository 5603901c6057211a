"""Data and shipped pretrained models of the experiments (no downloads).

``ring``: a 2-D ring of eight Gaussians and the MLP noise predictor pretrained on it.
"""

from .ring import load_pretrained_ring, pretrain_ring_model, ring_mixture

__all__ = ["load_pretrained_ring", "pretrain_ring_model", "ring_mixture"]
