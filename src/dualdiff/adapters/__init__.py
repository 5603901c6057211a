"""Back-end adapters: third-party diffusion models seen as dualdiff score models.

Every adapter turns a back-end's network and noise schedule into the one convention of
:class:`~dualdiff.models.ScoreModel` (``score(x, t, cond)``) and
:class:`~dualdiff.models.NoiseSchedule`. Adapters live behind optional extras and are imported
lazily: ``import dualdiff`` (and ``import dualdiff.adapters``) never imports a back-end.

* :mod:`dualdiff.adapters.diffusers` (extra ``[diffusers]``:
  ``pip install 'dualdiff-unlearning[diffusers]'``)
  -- :class:`~dualdiff.adapters.diffusers.DiffusersScoreModel` (a HuggingFace diffusers
  ``UNet2DModel`` / ``UNet2DConditionModel`` plus its scheduler) and
  :class:`~dualdiff.adapters.diffusers.DiffusersSchedule` (a scheduler's ``alphas_cumprod`` as a
  continuous-time VP schedule).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DiffusersSchedule", "DiffusersScoreModel", "DiffusersTeacher"]

# name -> submodule that defines it (imported on first access only).
_LAZY = {
    "DiffusersSchedule": "diffusers",
    "DiffusersScoreModel": "diffusers",
    "DiffusersTeacher": "diffusers",
}


def __getattr__(name: str) -> Any:
    """Import the adapter that defines ``name`` on first access (PEP 562)."""
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
