"""The ONNX node tests run through ttc's ONNX backend (`ttc.onnx_backend`), one pytest case each.

Only the node tests of `onnx.backend.test` run (one-node models with stored inputs and outputs); the
real-model tests download models and are not part of the suite. Each case compiles its model for the
emulated Grayskull (e150, bf16, HiFi4), runs it and is judged by ttc's rule, the same for every case
and never loosened per case (onnx's per-case rtol/atol are ignored):

    float outputs             within rtol = atol = 2e-2 of the expected values (the bf16 level);
    integer/boolean outputs   exactly equal;
    every output              the expected shape and dtype.

`expected_failures.txt` lists every case that does not pass, with a one-line reason; they are strict
expected failures: a failing case that is not listed fails, and so does a listed case that passes
(remove it from the list) or that fails in another category (say, an internal error where the list
says "unsupported op"; a changed detail within the category only shows in the xfail reason). A
passing case must also run where `results.json` says (entirely on the device, or with host ops). The list records the onnx minor version it was made with; another
installed onnx fails `test_onnx_version_matches_the_expectations` (pin: `onnx==1.23.*`, dev extra).

After changing what ttc supports, regenerate the list, `results.json` and `docs/supported-ops.md`:

    .venv/bin/python scripts/update_node_expectations.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc.conformance import node_suite, onnx_minor, read_expectations, read_results, reason_category, run_case

HERE = Path(__file__).parent
EXPECTATIONS = read_expectations(HERE / "expected_failures.txt")
RESULTS = read_results(HERE / "results.json")
CASES = node_suite().cases
REGENERATE = "rerun scripts/update_node_expectations.py and review the diff"


def test_onnx_version_matches_the_expectations() -> None:
    assert onnx_minor() == EXPECTATIONS.onnx, (
        f"onnx {onnx_minor()} is installed but tests/onnx_node/expected_failures.txt was recorded with onnx "
        f"{EXPECTATIONS.onnx}, and the node tests change with every onnx minor release: install "
        f"onnx=={EXPECTATIONS.onnx}.* (the dev extra pins it), or move the pin and {REGENERATE}")


def test_expectations_and_results_name_only_existing_cases() -> None:
    cases = set(CASES)
    unknown = sorted(set(EXPECTATIONS.failures) - cases)
    assert not unknown, f"expected_failures.txt lists cases onnx {onnx_minor()} does not have: {unknown}; {REGENERATE}"
    assert set(RESULTS.cases) == cases, (
        f"results.json is not from a run of this suite (missing {sorted(cases - set(RESULTS.cases))[:5]}, "
        f"extra {sorted(set(RESULTS.cases) - cases)[:5]}); {REGENERATE}")


@pytest.mark.parametrize("case", CASES)
def test_node(case: str) -> None:
    if onnx_minor() != EXPECTATIONS.onnx:
        pytest.skip(f"expectations are for onnx {EXPECTATIONS.onnx}, onnx {onnx_minor()} is installed")
    result = run_case(case)
    listed = EXPECTATIONS.failures.get(case)
    if not result.passed:
        if listed is None:
            pytest.fail(f"{case} fails and is not in expected_failures.txt: {result.reason}\n{result.traceback}",
                        pytrace=False)
        if reason_category(listed) != result.category:
            pytest.fail(f"{case} now fails as {result.reason}, expected_failures.txt says {listed}; {REGENERATE}"
                        f"\n{result.traceback}", pytrace=False)
        pytest.xfail(listed if listed == result.reason else f"{listed} (now: {result.reason})")
    if listed is not None:
        pytest.fail(f"{case} passes now but expected_failures.txt lists it ({listed}); {REGENERATE}",
                    pytrace=False)
    recorded = RESULTS.cases.get(case)
    if recorded is not None and recorded.placement != result.placement:
        pytest.fail(f"{case} now runs {_where(result.placement)}, results.json says {_where(recorded.placement)}; "
                    f"{REGENERATE}", pytrace=False)


def _where(placement: str | None) -> str:
    return {"device": "entirely on the device", "folded": "folded at compile time (no device program)",
            "host": "with host ops"}.get(placement or "", "nowhere")
