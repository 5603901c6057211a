"""Small run-time utilities shared by the command line, ``verify`` and the benchmarks.

Plain-text tables and a thread limit (torch's intra-op pool and, with threadpoolctl, BLAS).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

__all__ = ["format_table", "limit_threads"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Plain-text table with aligned columns (``right``: indices of right-aligned columns)."""
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


@contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Limit torch's intra-op threads (and BLAS/OpenMP pools, if threadpoolctl is installed).

    The previous torch setting is restored on exit. On small problems a busy machine's
    OpenMP/BLAS spin-waits can make every tensor operation ~100x slower than one thread.
    """
    import torch

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only torch's own pool is limited then
        threadpool_limits = None
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        # decided before entering: an error of the body is never chained to the ImportError
        with threadpool_limits(limits=n) if threadpool_limits is not None else nullcontext():
            yield
    finally:
        torch.set_num_threads(previous)
