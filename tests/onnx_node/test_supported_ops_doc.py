"""docs/supported-ops.md is generated (scripts/gen_supported_ops.py) from tests/onnx_node/results.json
and the converter table; it must not be stale, and the results must agree with expected_failures.txt.
Fast: nothing here reruns the node suite."""

from __future__ import annotations

from pathlib import Path

from ttc.conformance import read_expectations, read_results, render_supported_ops

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "tests" / "onnx_node"


def test_supported_ops_doc_is_up_to_date() -> None:
    text = render_supported_ops(read_results(SUITE / "results.json"))
    doc = REPO / "docs" / "supported-ops.md"
    assert doc.is_file() and doc.read_text() == text, (
        "docs/supported-ops.md is stale: run .venv/bin/python scripts/gen_supported_ops.py (after a change in "
        "what ttc supports, scripts/update_node_expectations.py, which also rewrites the doc)")


def test_results_agree_with_expected_failures() -> None:
    results = read_results(SUITE / "results.json")
    expectations = read_expectations(SUITE / "expected_failures.txt")
    assert results.onnx == expectations.onnx
    failing = {case: r.reason for case, r in results.cases.items() if not r.passed}
    assert failing == dict(expectations.failures), (
        "results.json and expected_failures.txt come from different runs: rerun scripts/update_node_expectations.py")
