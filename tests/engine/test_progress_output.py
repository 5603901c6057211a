"""Progress bars follow tqdm's convention: nothing is written when stderr is not a terminal."""

from __future__ import annotations

import sys

import torch

from dualdiff import GaussianMixture, KLConstrainedProblem, sample_ode
from dualdiff.engine import PrimalDualTrainer, TrainableGaussianMixture

P0 = GaussianMixture([0.7, 0.3], [[-2.0], [2.0]], 1.0)


def test_fit_and_samplers_write_no_bars_into_logs(capsys):
    assert not sys.stderr.isatty()  # pytest's capture: like a log file or a pipe
    prob = KLConstrainedProblem(P0, [P0.component(1)], bounds=[1.5], direction="forward")
    tr = PrimalDualTrainer(prob, TrainableGaussianMixture.from_mixture(P0), batch_size=16)
    tr.fit(5, progress=True)
    sample_ode(P0, (10, 1), method="euler", steps=20, progress=True)
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "primal-dual" not in captured.err
    assert captured.err == ""
    assert len(tr.history) == 5 and bool(torch.isfinite(tr.multipliers).all())
