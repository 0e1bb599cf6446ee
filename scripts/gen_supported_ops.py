"""Write docs/supported-ops.md from tests/onnx_node/results.json and ttc's converter table.

Usage: .venv/bin/python scripts/gen_supported_ops.py [--check]
The results come from the last node-suite run (scripts/update_node_expectations.py); this script
does not rerun the suite. `--check` exits 1 when the doc is stale instead of writing it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "tests" / "onnx_node" / "results.json"
DOC = REPO / "docs" / "supported-ops.md"


def write_doc(results: Path = RESULTS, doc: Path = DOC) -> None:
    from ttc.conformance import read_results, render_supported_ops

    doc.write_text(render_supported_ops(read_results(results)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is stale, write nothing")
    args = parser.parse_args(argv)
    from ttc.conformance import read_results, render_supported_ops

    text = render_supported_ops(read_results(RESULTS))
    if args.check:
        stale = not DOC.is_file() or DOC.read_text() != text
        print(f"{DOC.relative_to(REPO)} is {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
