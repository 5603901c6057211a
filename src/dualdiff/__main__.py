"""``python -m dualdiff``: the :mod:`dualdiff.cli` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
