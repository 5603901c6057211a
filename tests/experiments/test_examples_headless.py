"""Examples save their figures when run headless (issue 11, "A new user's frictions")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("plot_*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_saves_its_figures(path):
    text = path.read_text()
    assert "save_open_figures(" in text
    assert text.index("save_open_figures(") < text.rindex("plt.show()")


def test_an_example_run_headless_leaves_png_files(tmp_path):
    pytest.importorskip("matplotlib")
    script = next(p for p in EXAMPLES if p.stem == "plot_gaussian_mixture_basics")
    env = {**os.environ, "MPLBACKEND": "Agg", "DUALDIFF_FIGURES": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(tmp_path.glob("plot_gaussian_mixture_basics_*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs)
    assert [p for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
