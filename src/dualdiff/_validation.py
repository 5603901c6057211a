"""Input validation helpers shared by every public constructor and method."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._errors import NonFiniteError

__all__ = ["as_tensor", "check_choice", "check_finite", "check_int", "check_positive"]


def as_tensor(
    value: Any,
    name: str,
    owner: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert ``value`` to a finite floating tensor or raise a typed error.

    Parameters
    ----------
    value
        Anything :func:`torch.as_tensor` accepts.
    name
        Parameter name used in error messages.
    owner
        Class/function name used in error messages.
    dtype
        Target dtype (default: the value's own floating dtype, else float64).
    device
        Target device.
    """
    if isinstance(value, torch.Tensor):
        t = value
    else:
        _refuse_text(value, name, owner)
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype or torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{owner}: parameter '{name}' must be array-like of numbers, got "
                f"{type(value).__name__} ({exc})"
            ) from None
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(
            f"{owner}: parameter '{name}' must be a real floating tensor, got dtype {t.dtype}"
        )
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device)
    check_finite(t, name, owner)
    return t


def check_finite(t: torch.Tensor, name: str, owner: str) -> torch.Tensor:
    """Raise :class:`NonFiniteError` if ``t`` holds NaN or inf; return ``t`` otherwise."""
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(
            f"{owner}: parameter '{name}' contains {n_bad} non-finite value(s) (NaN or inf); "
            "all entries must be finite"
        )
    return t


def _refuse_text(value: Any, name: str, owner: str) -> None:
    """Raise ``TypeError`` if ``value`` is (or holds) text where numbers are expected.

    ``float("0.01")`` and ``np.asarray(["1.5"], dtype=float)`` silently parse strings; a
    string given for a number is almost always a mistake (a config file read as text).
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{owner}: parameter '{name}' must be a number (or array of numbers), got the "
            f"string {value!r}; convert it explicitly, e.g. float({value!r})"
        )
    if isinstance(value, np.ndarray) and value.dtype.kind in "USO":
        if value.dtype.kind in "US" or any(isinstance(v, (str, bytes)) for v in value.flat):
            raise TypeError(
                f"{owner}: parameter '{name}' must hold numbers, got an array of dtype "
                f"{value.dtype}"
            )
    if isinstance(value, (list, tuple)):
        for v in value:
            _refuse_text(v, name, owner)


def check_int(value: Any, name: str, owner: str, *, low: int | None = None) -> int:
    """Validate an integer parameter (``bool``, floats and strings are refused).

    Parameters
    ----------
    value
        A Python or numpy integer.
    name, owner
        Parameter and class/function names for the message.
    low
        Smallest allowed value (``None``: no bound).

    Returns
    -------
    int
        ``int(value)``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
        low is not None and value < low
    ):
        rule = "an int" if low is None else f"an int >= {low}"
        raise ValueError(f"{owner}: parameter '{name}' must be {rule}, got {value!r}")
    return int(value)


def check_positive(value: float, name: str, owner: str, *, strict: bool = True) -> float:
    """Validate a real scalar that must be (strictly) positive and finite (no strings)."""
    _refuse_text(value, name, owner)
    if isinstance(value, bool):
        raise TypeError(f"{owner}: parameter '{name}' must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{owner}: parameter '{name}' must be a real number, got {value!r}"
        ) from None
    if v != v or v in (float("inf"), float("-inf")):
        raise NonFiniteError(f"{owner}: parameter '{name}' must be finite, got {v}")
    if (strict and v <= 0) or (not strict and v < 0):
        rel = "> 0" if strict else ">= 0"
        raise ValueError(f"{owner}: parameter '{name}' must be {rel}, got {v}")
    return v


def check_choice(
    value: Any,
    name: str,
    owner: str,
    allowed: Sequence[str],
    error: type[ValueError] = ValueError,
) -> str:
    """Validate a string option against the allowed choices (case-sensitive).

    Raises ``error`` (a ``ValueError`` subclass) naming the parameter, the value and the
    allowed values.
    """
    if not isinstance(value, str) or value not in allowed:
        raise error(
            f"{owner}: unknown {name}={value!r}; allowed values are "
            + ", ".join(repr(a) for a in allowed)
        )
    return value
