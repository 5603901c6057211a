"""Sentences of the docs that describe the code must be true of it (issue 11, the FAQ).

The source tree is searched as text and the named objects are imported, so the checks hold
whatever module a function lives in.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import dualdiff

DOCS = Path(__file__).parents[1] / "docs"
SRC = Path(dualdiff.__file__).parent


def _faq() -> str:
    return re.sub(r"\s+", " ", (DOCS / "faq.rst").read_text())


def _source() -> str:
    return "\n".join(p.read_text() for p in sorted(SRC.rglob("*.py")))


def test_faq_density_ratio_sentence_names_what_the_code_computes():
    text = _faq()
    # the sentence shipped before: ratios "come from ELBO differences or from the implicit
    # classifier of conditional and unconditional predictions", which no code computed
    assert "implicit classifier of conditional and unconditional predictions" not in text
    from dualdiff.problems import classifier_log_ratio
    from dualdiff.problems.contract import DensityEstimator

    assert "classifier_log_ratio" in text and callable(classifier_log_ratio)
    assert 'likelihood="elbo"' in text
    assert "elbo" in inspect.getsource(DensityEstimator)
    assert "log_weight(lam, x0)" in text


def test_the_reweighted_step_takes_its_weights_from_the_problem():
    src = _source()
    assert re.search(r"def log_weight\(self, lam", src)
    assert "problem.log_weight(" in src  # the reweighted step's weights come from here


def test_digits_memorised_dual_table_is_what_the_function_returns():
    """The table "Where FU's dual optimum is" in docs/digits.rst, row by row."""
    from dualdiff.problems import memorised_forward_dual

    text = (DOCS / "digits.rst").read_text()
    rows = {}
    for name in ("level, nats", "λ*/λ_max", "least KL"):
        m = re.search(rf"^  {re.escape(name)}\s+([\d. ]+)$", text, re.M)
        assert m, name
        rows[name] = [float(v) for v in m.group(1).split()]
    levels = rows["level, nats"]
    assert len(levels) == 5
    for b, frac, kl in zip(levels, rows["λ*/λ_max"], rows["least KL"], strict=True):
        got = memorised_forward_dual([0.02], [b])
        assert abs(float(got.fraction_of_lam_max[0]) - frac) <= 5e-4
        assert abs(got.objective - kl) <= 5e-4


def test_digits_lu_ode_table_is_what_the_saved_runs_hold():
    """The "LU (ODE)" table in docs/digits.rst against benchmarks/results/digits_lu_ode*.json."""
    import json

    results = DOCS.parent / "benchmarks" / "results"
    text = (DOCS / "digits.rst").read_text()
    pattern = (r"^share (\S+)\s+(\d)\s+([\d.]+)\s+([\d.]+) \(([\d.]+)\)\s+([\d.]+)\s+"
               r"([\d.]+) ± ([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")
    rows = re.findall(pattern, text, re.M)
    assert len(rows) == 4
    for share, seed, *cells in rows:
        name = "digits_lu_ode.json" if seed == "0" else f"digits_lu_ode_seed{seed}.json"
        rep = json.loads((results / name).read_text())
        (run,) = [r for r in rep["runs"] if r["share"] == float(share)]
        m = run["metrics"]
        want = [run["rule"]["level"], run["warm_start"]["lam_hat"],
                run["warm_start"]["ess_fraction"], run["train"]["final_lam"],
                run["constraint_on_samples"]["mean"], run["constraint_on_samples"]["stderr"],
                m["forget_accuracy"], m["retained_accuracy"], m["fd_retained"], m["deviation"]]
        for cell, value in zip(cells, want, strict=True):
            digits = len(cell.split(".")[1]) if "." in cell else 0
            assert abs(float(cell) - value) <= 0.5 * 10.0**-digits + 1e-12, (share, seed, cell)
