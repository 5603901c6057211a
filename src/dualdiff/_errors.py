"""Typed exceptions raised by dualdiff.

Every error names the object, the parameter, the value received and what is allowed,
so a user can fix the call from the message alone.
"""

from __future__ import annotations

__all__ = [
    "DualDomainError",
    "DualdiffError",
    "IllPosedProblemError",
    "NonFiniteError",
]


class DualdiffError(Exception):
    """Base class of all dualdiff-specific errors."""


class DualDomainError(DualdiffError, ValueError):
    """A dual variable lies outside the problem's dual domain."""


class IllPosedProblemError(DualdiffError, ValueError):
    """The requested problem has no meaningful solution (e.g. its dual is ``-inf``)."""


class NonFiniteError(DualdiffError, ValueError):
    """A NaN or infinite value was found where a finite one is required."""
