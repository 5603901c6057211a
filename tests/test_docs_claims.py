"""Sentences of the docs that describe the code must be true of it (issue 11, the FAQ)."""

from __future__ import annotations

import re
from pathlib import Path

import dualdiff.engine.primal as primal
import dualdiff.estimators as estimators

DOCS = Path(__file__).parents[1] / "docs"


def _faq() -> str:
    return re.sub(r"\s+", " ", (DOCS / "faq.rst").read_text())


def test_faq_does_not_claim_density_ratios_the_code_does_not_compute():
    text = _faq()
    implemented = any("ratio" in name for name in dir(estimators)) or any(
        "ratio" in name for name in dir(primal)
    )
    claims = re.search(r"density ratios for reweighting come from ELBO differences", text)
    assert not (claims and not implemented)
    if not implemented:
        assert "are not implemented" in text


def test_faq_points_at_the_weights_the_reweighted_step_really_uses():
    from dualdiff.targets import Target

    assert callable(getattr(Target, "log_weight", None))
    assert "Target.log_weight" in _faq()
    source = Path(primal.__file__).read_text()
    assert "target.log_weight(" in source  # the reweighted step's weights come from here
