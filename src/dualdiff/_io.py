"""Files that are never half-written, and strict JSON.

Every file dualdiff writes (checkpoints, training histories, CLI and demo reports) goes through
:func:`atomic_write_bytes`: the content is written to a temporary file *in the same folder*,
flushed and ``fsync``-ed, then renamed over the destination with :func:`os.replace` (atomic on
POSIX and Windows for paths on one file system), and the folder is ``fsync``-ed so the rename
survives a crash. An interrupted write leaves the previous file intact and, at worst, a
``.<name>.*.tmp`` file beside it.

JSON is written strictly (RFC 8259: no ``NaN``/``Infinity`` literals). A non-finite float
becomes ``null`` and its location and value are listed under the top-level key
``"non_finite"`` (``{"runs/0/certificate/normalisation": "nan"}``), so a reader sees both that
a value is missing and why.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable_file",
    "check_writable_folder",
    "dump_strict_json",
    "strict_json_value",
]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | PathLike[str], write: Callable[[Any], None]) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it over.

    Parameters
    ----------
    path
        Destination file. Its folder must exist.
    write
        Writes the whole content into the open binary file it is given.

    Returns
    -------
    Path
        ``path``.
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    return dest


def atomic_write_bytes(path: str | PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see the module docstring)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _non_finite_name(v: float) -> str:
    return "nan" if v != v else ("inf" if v > 0 else "-inf")


def strict_json_value(value: Any, *, where: str = "", found: dict[str, str] | None = None) -> Any:
    """``value`` with every non-finite float replaced by ``None``.

    Tensors and numpy arrays/scalars become lists/numbers; tuples become lists. When ``found``
    is given, ``found["path/to/key"] = "nan" | "inf" | "-inf"`` is recorded for each
    replacement.
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if found is not None:
            found[where or "/"] = _non_finite_name(value)
        return None
    if isinstance(value, dict):
        return {
            str(k): strict_json_value(v, where=f"{where}/{k}" if where else str(k), found=found)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [
            strict_json_value(v, where=f"{where}/{i}" if where else str(i), found=found)
            for i, v in enumerate(value)
        ]
    if isinstance(value, PathLike):
        return os.fspath(value)
    raise TypeError(f"dump_strict_json: a value of type {type(value).__name__} at "
                    f"{where or '/'!r} is not JSON-serialisable")


def dump_strict_json(data: Any, path: str | PathLike[str] | None = None, **kwargs: Any) -> str:
    """Strict JSON text of ``data``; written atomically to ``path`` when given.

    A non-finite float becomes ``null`` and, when ``data`` is a dictionary, is listed under
    ``data["non_finite"]`` (location -> ``"nan"``/``"inf"``/``"-inf"``).

    Parameters
    ----------
    data
        Plain containers, numbers, strings, tensors or numpy arrays.
    path
        Destination file (its folder must exist), or ``None`` to only return the text.
    **kwargs
        Passed to :func:`json.dumps` (e.g. ``indent``).

    Returns
    -------
    str
        The JSON text (``allow_nan=False``: it parses with any strict JSON reader).
    """
    found: dict[str, str] = {}
    clean = strict_json_value(data, found=found)
    if isinstance(clean, dict) and found:
        clean["non_finite"] = {
            k: f"{v} (not representable in JSON; written as null)" for k, v in found.items()
        }
    text = json.dumps(clean, allow_nan=False, **kwargs)
    if path is not None:
        atomic_write_text(path, text + "\n")
    return text


def check_writable_file(path: str | PathLike[str], owner: str, name: str) -> Path:
    """Raise ``ValueError`` unless a file can be created at ``path`` (checked before any work).

    The folder must exist or be creatable below an existing writable folder, and ``path`` must
    not be a folder.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{owner}: {name} {str(p)!r} is a folder; give a file path")
    folder = p.parent if str(p.parent) else Path(".")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(
            f"{owner}: {name} {str(p)!r} cannot be created: {str(probe)!r} is a file, not a "
            "folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(
            f"{owner}: {name} {str(p)!r} cannot be created: folder {str(probe)!r} is not "
            "writable"
        )
    if p.exists() and not os.access(p, os.W_OK) and not os.access(folder, os.W_OK):
        raise ValueError(f"{owner}: {name} {str(p)!r} is not writable")
    return p


def check_writable_folder(path: str | PathLike[str], owner: str, name: str) -> Path:
    """Raise ``ValueError`` unless ``path`` is, or can be created as, a writable folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{owner}: {name} {str(p)!r} is a file; give a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(
            f"{owner}: {name} {str(p)!r} cannot be created: {str(probe)!r} is a file, not a "
            "folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{owner}: {name} {str(p)!r}: folder {str(probe)!r} is not writable")
    return p
