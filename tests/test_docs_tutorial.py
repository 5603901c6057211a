"""The code of docs/diffusers_tutorial.rst runs as written (shortened training budgets).

Every ``.. code-block:: python`` of the page is executed in order in one namespace, the way a
reader pastes them; ``.fit(N)`` becomes ``.fit(2)`` so the page's 40- and 320-step runs take
seconds. The GPU block runs only where CUDA is available. The checks after the run are on what
the page says the code does (a custom estimate every ``estimate_every`` steps, multipliers
in their domain, FU's kept weight average), so a block that silently does something else
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

PAGE = Path(__file__).resolve().parents[1] / "docs" / "diffusers_tutorial.rst"
_BLOCK = re.compile(r"\.\. code-block:: python\n\n((?:    .*\n|[ \t]*\n)+)")


def _blocks() -> list[str]:
    text = PAGE.read_text()
    return [re.sub(r"(?m)^    ", "", b) for b in _BLOCK.findall(text)]


def test_page_has_the_blocks_this_test_reads():
    blocks = _blocks()
    assert len(blocks) >= 8
    assert any("ru_estimate" in b for b in blocks)
    assert any("fu_estimate" in b for b in blocks)


@pytest.fixture(scope="module")
def run() -> list[dict]:
    """The namespace after each block (shallow copies; skipped blocks repeat the previous)."""
    torch.manual_seed(0)
    ns: dict = {}
    after = []
    for i, code in enumerate(_blocks()):
        if not ("cuda" in code and not torch.cuda.is_available()):
            code = re.sub(r"\.fit\(\d+\)", ".fit(2)", code)
            exec(compile(code, f"{PAGE.name}[block {i}]", "exec"), ns)
        after.append(dict(ns))
    return after


def _after(run: list[dict], marker: str) -> dict:
    """The namespace after the (first) block whose code contains ``marker``."""
    i = next(k for k, code in enumerate(_blocks()) if marker in code)
    return run[i]


def test_levels_are_relative_to_the_pretrained_values(run):
    ns = run[-1]
    x = ns["split"].train_images
    with torch.no_grad():
        c0_ru = float(ns["log_ratio"](x).mean())
        c0_lu = float(ns["clf"].log_prob(x.float())[:, ns["c"]].mean())
    assert ns["b"] == pytest.approx(c0_ru + 1.5, abs=1e-9)
    assert ns["tau"] == pytest.approx(c0_lu - 1.5, abs=1e-9)


def test_ru_trains_from_the_warm_start_with_the_cheap_estimator(run):
    ns = _after(run, "estimator=ru_estimate, estimate_every=10")
    tr, est = ns["trainer"], ns["est"]
    assert tr.step_count == 2
    # the estimate at step 0 is the page's estimator: 64 DDIM samples, classifier log-ratio
    e = tr.last_estimate
    assert e is not None and e.method == "custom" and e.n == 64
    assert len(tr.history.estimates) == 1
    assert float(tr.multipliers[0]) >= 0.0
    assert float(est.multipliers[0]) >= 0.0 and est.ess > 0.0


def test_page_estimators_agree_with_their_definitions(run):
    ns = _after(run, "fu_estimate")   # before the LoRA block replaces teacher and student
    prob = ns["prob"]
    e = ns["ru_estimate"](ns["Conditioned"](ns["teacher"], None),
                          torch.Generator().manual_seed(0))
    assert e.method == "custom" and e.n == 64
    assert torch.equal(e.violations, prob.violations(e.constraints))
    # FU's estimate of the pretrained model itself is a zero rise (common random numbers)
    f = ns["fu_estimate"](ns["p0"])
    assert float(f.constraints[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(f.violations[0]) == pytest.approx(ns["delta"], abs=1e-9)


def test_fu_keeps_a_weight_average_and_a_multiplier_in_its_domain(run):
    ns = _after(run, "fu_estimate")
    tr = ns["trainer"]
    assert tr.step_count == 2
    assert ns["kept"] is tr.averaged_model and ns["kept"] is not None
    assert ns["lam_max"] == pytest.approx(30 / 1500)
    assert 0.0 <= float(tr.multipliers[0]) <= ns["lam_max"] + 1e-12
    assert tr.last_estimate is not None and tr.last_estimate.method == "custom"
    assert tr.last_estimate.n == 30


def test_baseline_block_runs_at_its_fixed_weight(run):
    ns = _after(run, "FixedWeightTrainer(prob")
    assert float(ns["lam"][0]) == pytest.approx(0.5)   # eta = 1: lambda = eta / (1 + eta)
