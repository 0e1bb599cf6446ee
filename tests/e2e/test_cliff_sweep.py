"""The cliff sweep (issue 15 item 6): seeded hypothesis draws of convolution windows, long-row ops and data
movement chains (tests/e2e/cliff_sweep_cases.py). Each case passes the golden rule on the emulator with no host
op, or is refused as too big for the card where a lower bound computed from its shapes alone says it cannot
fit; nothing else is allowed. Each sweep also asserts that the new paths ran in it: a K split of a convolution
window, row chunks of a softmax or layer norm and segmented sums, an element-granular gather.

The default runs take about a minute together (derandomized: the same cases every run); the long sweep is
marked `sweep` (and `slow`): `pytest -m sweep tests/e2e/test_cliff_sweep.py -s`, or benchmarks/cliff_sweep.py
for the table.
"""

from __future__ import annotations

import numpy as np
import pytest
from cliff_sweep_cases import (
    DEFAULT,
    DEFAULT_EXAMPLES,
    LONG,
    LONG_EXAMPLES,
    Case,
    cannot_fit,
    dram_lower_bound,
    judge,
    model_of,
    row_nodes,
    run_family,
)


def test_convolution_windows_compile_or_are_refused_with_cause() -> None:
    tally = run_family("window", DEFAULT_EXAMPLES["window"], DEFAULT)
    assert tally.outcomes[("window", "passed")] >= DEFAULT_EXAMPLES["window"] // 3
    assert tally.paths[("window", "k_split")] >= 1, tally.table()  # a window beyond one im2col pass ran


def test_long_rows_compile_or_are_refused_with_cause() -> None:
    tally = run_family("row", DEFAULT_EXAMPLES["row"], DEFAULT)
    assert tally.outcomes[("row", "passed")] >= DEFAULT_EXAMPLES["row"] // 3
    assert tally.outcomes[("row", "refused")] >= 1, tally.table()  # a tensor past DRAM, checked by the bound
    assert tally.paths[("row", "row_chunked")] >= 1, tally.table()  # softmax / layer norm in row chunks
    assert tally.paths[("row", "segmented_sum")] >= 1, tally.table()  # a sum along a long row in segments


def test_movement_chains_compile_and_move_exactly() -> None:
    tally = run_family("movement", DEFAULT_EXAMPLES["movement"], DEFAULT)
    assert tally.outcomes[("movement", "refused")] == 0  # nothing here is too big
    assert tally.outcomes[("movement", "passed")] >= DEFAULT_EXAMPLES["movement"] // 3
    assert tally.paths[("movement", "gather_element")] >= 1, tally.table()
    assert tally.paths[("movement", "gather_tile")] >= 1, tally.table()  # the fast path still applies


@pytest.mark.slow
@pytest.mark.sweep
@pytest.mark.parametrize("family", sorted(LONG_EXAMPLES))
def test_long_sweep(family: str) -> None:
    tally = run_family(family, LONG_EXAMPLES[family], LONG, fail_fast=False)
    assert not tally.failures, "\n".join(tally.failures)


def test_the_lower_bound_refuses_only_what_cannot_fit() -> None:
    """The judge's bound: a softmax of 2^31 + elements (4 GiB each way in bf16, 8 GiB in all, just past DRAM)
    cannot fit; one of 2^30 can (as far as the bound knows); the judge rejects a refusal of a case the bound
    says fits, so the bound is the test's own, not the planner's."""
    big = model_of(row_nodes("Softmax", 1 << 16, 1, np.random.default_rng(0))[0], (32768 + 32, 1 << 16), [])
    small = model_of(row_nodes("Softmax", 1 << 16, 1, np.random.default_rng(0))[0], (16384, 1 << 16), [])
    assert cannot_fit(big) and dram_lower_bound(big) > 8 << 30
    assert not cannot_fit(small)
    verdict = judge(Case("row", "softmax past DRAM", big, (32768 + 32, 1 << 16), 0))
    assert verdict.outcome == "refused", verdict.detail


def test_the_judge_fails_a_refusal_the_bound_does_not_justify(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small softmax "refused" as too big (a planner cliff) and a refusal of another kind both fail the case;
    so does a compile of a case the bound says cannot fit."""
    import ttc
    from ttc.ir.diagnostics import UserError

    small = model_of(row_nodes("Softmax", 6625, 1, np.random.default_rng(0))[0], (1, 6625), [])
    case = Case("row", "softmax", small, (1, 6625), 0)
    assert judge(case).outcome == "passed"
    for message in ("'ttir.softmax' does not fit in L1 on e150", "no converter for Softmax"):
        def refuse(model, message=message):
            raise UserError(message)
        monkeypatch.setattr(ttc, "compile", refuse)
        verdict = judge(case)
        assert verdict.outcome == "failed" and message in verdict.detail
    monkeypatch.setattr(ttc, "compile", lambda model: None)
    big = model_of(row_nodes("Softmax", 1 << 16, 1, np.random.default_rng(0))[0], (32768 + 32, 1 << 16), [])
    assert judge(Case("row", "big", big, (32768 + 32, 1 << 16), 0)).outcome == "failed"
