"""The fuzz campaign: generate the seeded corpus of hostile inputs (tests/fuzz/fuzz_corpus.py), run every
input through `ttc` in its own process (tests/fuzz/fuzz_harness.py) and print the outcome table.

    python benchmarks/fuzz.py [--total 1500] [--seed 0] [--jobs 2] [--timeout 60] [--root DIR] [--json FILE]

The rules: exit 4 never; no input runs past the time limit; nothing is opened outside the input's folder, the
Python installation and the system's libraries (Python's opens by an audit hook, every system call's with
strace when it is installed); a tampered artifact exits 0 only with outputs identical to the
untampered run. The exit code is 1 when any input broke a rule (each is listed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))

from fuzz_corpus import KINDS, generate, judge, outputs_differ, sample_counts
from fuzz_harness import STRACE, run_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--root", help="where the corpus is written (default: a temporary folder)")
    parser.add_argument("--json", help="write every input's outcome here")
    parser.add_argument("--no-strace", action="store_true",
                        help="do not trace opens with strace (by default it is used when installed)")
    args = parser.parse_args(argv)

    import ttc.cli
    import ttc.compiler
    import ttc.passes  # noqa: F401

    use_strace = STRACE is not None and not args.no_strace
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="ttc-fuzz-"))
    start = time.perf_counter()
    cases = generate(root, sample_counts(args.total), args.seed)
    generated = time.perf_counter() - start
    results = []

    def one(case):
        outcome = run_case(case.argv, case.folder, args.timeout, case.env, case.allowed, strace=use_strace)
        return case, outcome, judge(case, outcome)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for case, outcome, problems in pool.map(one, cases):
            results.append((case, outcome, problems))
            if problems:
                print(f"FAIL {case.kind} {case.name} ({case.folder}): {'; '.join(problems)}\n  ttc {' '.join(case.argv)}"
                      f"\n  {outcome.stderr.strip().splitlines()[0] if outcome.stderr.strip() else ''}", flush=True)
    elapsed = time.perf_counter() - start

    rows = []
    for kind in (*KINDS, "total"):
        mine = [r for r in results if kind == "total" or r[0].kind == kind]
        codes = Counter(r[1].exit_code for r in mine)
        rows.append((kind, len(mine), codes.get(0, 0), codes.get(1, 0), codes.get(2, 0), codes.get(3, 0),
                     codes.get(4, 0), sum(r[1].hang for r in mine),
                     sum(any(p.startswith("silent wrong") for p in r[2]) for r in mine),
                     sum(bool(r[1].outside) for r in mine),
                     max((r[1].seconds for r in mine), default=0.0)))
    header = ("kind", "inputs", "exit 0", "exit 1", "exit 2", "exit 3", "exit 4", "hangs", "silent wrong",
              "outside", "slowest s")
    widths = [max(len(str(x)) if not isinstance(x, float) else 6 for x in col) for col in zip(header, *rows,
                                                                                              strict=True)]
    print(f"fuzz campaign: seed {args.seed}, {len(results)} inputs, corpus in {root} "
          f"(generated in {generated:.0f} s, run in {elapsed - generated:.0f} s, timeout {args.timeout:.0f} s; "
          f"files opened: Python's open audit{' and strace' if use_strace else ' only (strace not used)'})")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join((f"{x:.1f}" if isinstance(x, float) else str(x)).rjust(w) for x, w in zip(row, widths,
                                                                                                    strict=True)))
    broken = [r for r in results if r[2]]
    print(f"inputs that broke a rule: {len(broken)}")
    crafted = [r for r in results if r[0].rule == "crafted"]
    ran = [r for r in crafted if r[1].exit_code in (0, 1)]
    print(f"crafted artifacts (hashes recomputed after the edit; out of the threat model, judged as valid programs): "
          f"{len(crafted)}, of which {len(ran)} ran, {sum(outputs_differ(r[0]) for r in ran)} to outputs other than "
          f"the untampered run's")
    if args.json:
        Path(args.json).write_text(json.dumps([{"kind": c.kind, "name": c.name, "argv": c.argv, "exit": o.exit_code,
                                                "seconds": round(o.seconds, 3), "problems": p, "rule": c.rule,
                                                "outside": o.outside} for c, o, p in results], indent=1))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
