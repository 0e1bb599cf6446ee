"""Run the ONNX node tests through ttc and regenerate, from that run, the files committed with it:

    tests/onnx_node/results.json            every case: op, pass/fail, host ops, reason, element types
    tests/onnx_node/expected_failures.txt   the failing cases, one line each with its reason
    docs/supported-ops.md                   the per-op table (scripts/gen_supported_ops.py)

Usage: .venv/bin/python scripts/update_node_expectations.py [-j JOBS] [--timeout S] [--tracebacks]

Each case runs through `ttc.conformance.run_case`, the function the pytest suite (tests/onnx_node)
runs, in JOBS processes. The summary printed at the end gives the pass counts (on the device, with
host ops), the ops with the most failures, the cases that fail with a ttc bug, the slowest cases,
and what changed since the committed results.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from ttc.conformance import (
    BUG_CATEGORIES,
    UNSUPPORTED_OP,
    CaseResult,
    failures_by_op,
    node_suite,
    read_results,
    run_case,
    write_expectations,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
SUITE_DIR = REPO / "tests" / "onnx_node"
RESULTS = SUITE_DIR / "results.json"
EXPECTATIONS = SUITE_DIR / "expected_failures.txt"
DOC = REPO / "docs" / "supported-ops.md"

_case_timeout_s = 0  # set in each worker


class CaseTimeout(Exception):
    """A case ran longer than --timeout (reported as an internal error: nothing should take that long)."""


def _on_alarm(signum: int, frame: object) -> None:
    raise CaseTimeout(f"the case ran longer than {_case_timeout_s} s")


def _init_worker(timeout_s: int) -> None:
    global _case_timeout_s
    _case_timeout_s = timeout_s
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy overflow etc. in the emulator's float math
    signal.signal(signal.SIGALRM, _on_alarm)
    node_suite()


def _run(case: str) -> CaseResult:
    signal.alarm(_case_timeout_s)
    try:
        return run_case(case)
    finally:
        signal.alarm(0)


def run_all(jobs: int, timeout_s: int) -> list[CaseResult]:
    cases = node_suite().cases
    results = []
    with multiprocessing.Pool(jobs, initializer=_init_worker, initargs=(timeout_s,)) as pool:
        for index, result in enumerate(pool.imap_unordered(_run, cases, chunksize=4), 1):
            results.append(result)
            if index % 200 == 0:
                print(f"  {index}/{len(cases)} cases", file=sys.stderr)
    return sorted(results, key=lambda r: r.case)


def print_summary(results: list[CaseResult], wall_s: float, top: int = 25) -> None:
    total = len(results)
    passed = [r for r in results if r.passed]
    where = Counter(r.placement for r in passed)
    print(f"{total} cases, {len(passed)} pass ({100 * len(passed) / total:.1f}%): "
          f"{where['device']} entirely on the device, {where['folded']} folded at compile time, "
          f"{where['host']} with host ops; {wall_s:.0f} s wall")
    categories = Counter(r.category for r in results if not r.passed)
    print("failures by category: " + ", ".join(f"{c} {n}" for c, n in categories.most_common()))
    print(f"\nops with the most failing cases (top {top}; the op under test, expansions included):")
    for op, count, counts in failures_by_op(results)[:top]:
        print(f"  {op:<32} {count:>4}  " + ", ".join(f"{c} {n}" for c, n in counts.most_common()))
    missing: Counter[str] = Counter()
    for r in results:
        if r.category == UNSUPPORTED_OP:
            missing.update(r.reason.split(": ", 1)[1].split(", "))
    print(f"\nops without a converter, by the number of cases they block (top {top}; expansions name inner ops):")
    for op, count in missing.most_common(top):
        print(f"  {op:<32} {count:>4}")
    bugs = [r for r in results if r.category in BUG_CATEGORIES]
    print(f"\n{len(bugs)} cases fail with a ttc bug" + (", grouped by message (quoted names elided):" if bugs else "."))
    groups: dict[str, list[str]] = {}
    for r in bugs:
        groups.setdefault(re.sub(r"'[^']*'", "'...'", r.reason), []).append(r.case)
    for message, cases in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        print(f"  {len(cases):>4} x {message}\n         e.g. {', '.join(cases[:3])}")
    slow = sorted(results, key=lambda r: -r.seconds)[:10]
    print("\nslowest cases: " + ", ".join(f"{r.case} {r.seconds:.2f} s" for r in slow))


def print_changes(previous: Mapping[str, CaseResult], results: list[CaseResult]) -> None:
    """What changed since the committed results: newly passing, newly failing, another category."""
    known = [(previous[r.case], r) for r in results if r.case in previous]
    passing = [r.case for old, r in known if r.passed and not old.passed]
    failing = [f"{r.case} ({r.reason})" for old, r in known if old.passed and not r.passed]
    moved = [f"{r.case} ({old.category} -> {r.category})" for old, r in known
             if not old.passed and not r.passed and old.category != r.category]
    added = sum(1 for r in results if r.case not in previous)
    print(f"\nsince the committed results: {len(passing)} newly passing, {len(failing)} newly failing, "
          f"{len(moved)} failing in another category, {added} new cases")
    for title, cases in (("newly failing", failing), ("another category", moved)):
        for case in cases[:40]:
            print(f"  {title}: {case}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per case before it counts as failed")
    parser.add_argument("--tracebacks", action="store_true", help="print the traceback of every internal error")
    args = parser.parse_args(argv)

    from gen_supported_ops import write_doc  # beside this script

    previous = dict(read_results(RESULTS).cases) if RESULTS.is_file() else {}
    start = time.perf_counter()
    results = run_all(args.jobs, args.timeout)
    wall_s = time.perf_counter() - start
    write_results(RESULTS, results)
    write_expectations(EXPECTATIONS, results)
    write_doc(RESULTS, DOC)
    print_summary(results, wall_s)
    print_changes(previous, results)
    if args.tracebacks:
        for r in results:
            if r.traceback:
                print(f"\n--- {r.case}\n{r.traceback}")
    print(f"\nwrote {RESULTS.relative_to(REPO)}, {EXPECTATIONS.relative_to(REPO)}, {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
