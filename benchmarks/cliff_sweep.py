"""The long cliff sweep (issue 15 item 6) with its table: seeded hypothesis draws of convolution windows, long-row
ops and data movement chains (tests/e2e/cliff_sweep_cases.py), each compiled, run on the emulator and held to
the golden rule, or refused as too big for the card with the test's own lower bound checked.

    python benchmarks/cliff_sweep.py [--families window,row,movement] [--scale 1.0] [--default] [--json FILE]

`--default` runs the default suite's draw (smaller sizes and counts), `--scale` multiplies the example counts.
Prints the cases by outcome (passed golden / refused with the bound checked / failed) and by new path (K splits
of convolution windows, row-chunked softmax and layer norm with the most chunks of one row, segmented sums,
and the gather kind of each movement chain), then every failure. The exit code is 1 when any case failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from cliff_sweep_cases import DEFAULT, DEFAULT_EXAMPLES, LONG, LONG_EXAMPLES, Tally, sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="window,row,movement")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the example counts")
    parser.add_argument("--default", action="store_true", help="the default suite's draw instead of the long one")
    parser.add_argument("--json", help="write the counts and failures here")
    args = parser.parse_args(argv)
    budget, counts = (DEFAULT, DEFAULT_EXAMPLES) if args.default else (LONG, LONG_EXAMPLES)
    tally = Tally()
    seconds = {}
    for family in args.families.split(","):
        examples = max(1, round(counts[family] * args.scale))
        start = time.perf_counter()
        sweep(family, examples, budget, tally, fail_fast=False)
        seconds[family] = time.perf_counter() - start
        print(f"{family}: {examples} examples in {seconds[family]:.0f} s", flush=True)
    print(tally.table())
    for failure in tally.failures:
        print(f"FAIL {failure}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "outcomes": {f"{f}/{o}": n for (f, o), n in tally.outcomes.items()},
            "paths": {f"{f}/{p}": n for (f, p), n in tally.paths.items()},
            "seconds": seconds, "failures": tally.failures}, indent=1))
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
