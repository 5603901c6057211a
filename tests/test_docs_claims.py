"""Sentences of the docs that describe the code must be true of it (issue 11, the FAQ).

The source tree is searched as text, so the checks hold whatever module a function lives in.
"""

from __future__ import annotations

import re
from pathlib import Path

import dualdiff

DOCS = Path(__file__).parents[1] / "docs"
SRC = Path(dualdiff.__file__).parent


def _faq() -> str:
    return re.sub(r"\s+", " ", (DOCS / "faq.rst").read_text())


def _source() -> str:
    return "\n".join(p.read_text() for p in sorted(SRC.rglob("*.py")))


def test_faq_does_not_claim_density_ratios_the_code_does_not_compute():
    text, src = _faq(), _source()
    # an ELBO-difference or implicit-classifier ratio estimator would be a function named so
    implemented = re.search(r"def \w*(elbo_ratio|ratio_from_elbo|implicit_classifier)\w*\(",
                            src) is not None
    claims = re.search(r"density ratios for reweighting come from ELBO differences", text)
    assert not (claims and not implemented)
    if not implemented:
        assert "are not implemented" in text


def test_faq_points_at_the_weights_the_reweighted_step_really_uses():
    src = _source()
    assert re.search(r"def log_weight\(self", src)  # Target.log_weight exists
    assert "target.log_weight(" in src  # and the reweighted step's weights come from it
    assert "Target.log_weight" in _faq()
