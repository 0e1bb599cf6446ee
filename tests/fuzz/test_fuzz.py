"""The fuzz rules on a seeded sample of the corpus (40 inputs, every kind, in the default suite) and on the
whole campaign (marked slow and fuzz; `python benchmarks/fuzz.py` runs it as a script with the table)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_corpus import generate, judge, sample_counts
from fuzz_harness import STRACE, run_case

SAMPLE = {"onnx": 12, "ir": 12, "artifact": 12, "oversized": 4}


def _campaign(root: Path, counts: dict[str, int], seed: int, only: tuple[str, ...] | None = None) -> list[str]:
    failures = []
    for case in generate(root, counts, seed, only):
        outcome = run_case(case.argv, case.folder, timeout=60, env=case.env, allowed=case.allowed, strace=True)
        for problem in judge(case, outcome):
            failures.append(f"{case.kind} {case.name}: {problem} (ttc {' '.join(case.argv)}; {outcome.stderr[:300]})")
    return failures


def test_fuzz_sample_breaks_no_rule(tmp_path: Path) -> None:
    assert _campaign(tmp_path / "corpus", SAMPLE, seed=17, only=("mlp", "conv")) == []


def test_the_sample_covers_every_kind(tmp_path: Path) -> None:
    cases = generate(tmp_path / "corpus", {"onnx": 12, "ir": 14, "artifact": 0, "oversized": 6}, seed=3,
                     only=("mlp",))
    names = {case.name.split("/")[-1].split("-")[0] for case in cases}
    assert {case.kind for case in cases} == {"onnx", "ir", "oversized"}
    assert {"byte", "truncated", "external", "dims", "cycle", "duplicate", "opset", "non"} <= names
    assert {"sparse", "batch", "ir", "input"} <= {case.name.split("-")[0] for case in cases if case.kind == "oversized"}


def test_judge_catches_each_broken_rule(tmp_path: Path) -> None:
    """The oracle itself: exit 4, a hang, a file outside and different outputs are each reported."""
    import numpy as np
    from fuzz_corpus import Case
    from fuzz_harness import Outcome

    np.savez(tmp_path / "base.npz", y=np.zeros(3, np.float32))
    np.savez(tmp_path / "out.npz", y=np.ones(3, np.float32))
    case = Case("artifact", "x", tmp_path, [], rule="artifact", baseline=tmp_path / "base.npz")
    assert judge(case, Outcome(4, 0.1)) == ["exit 4"]
    assert judge(case, Outcome(None, 60.0)) == ["hang"]
    assert judge(case, Outcome(2, 0.1, outside=["/etc/passwd"])) == ["opened outside: /etc/passwd"]
    assert judge(case, Outcome(0, 0.1)) == ["silent wrong: outputs differ from the untampered run"]
    np.savez(tmp_path / "out.npz", y=np.zeros(3, np.float32))
    assert judge(case, Outcome(0, 0.1)) == []


def test_harness_sees_a_file_opened_outside(tmp_path: Path) -> None:
    outside = run_case(["run", "/etc/hostname"], tmp_path, timeout=60)
    assert outside.exit_code == 2 and outside.outside == ["/etc/hostname"]


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_strace_sees_opens_python_does_not_audit(tmp_path: Path) -> None:
    """The trace is read as the kernel saw it: successful opens outside the allowed places count, failed ones
    and those inside the folder do not; a traced run records its system calls (native code's included)."""
    import os

    from fuzz_harness import _strace_opens, allowed_roots

    (tmp_path / ".strace").write_text(
        '123 openat(AT_FDCWD, "/etc/hostname", O_RDONLY|O_CLOEXEC) = 3\n'
        '123 openat(AT_FDCWD, "/etc/missing", O_RDONLY) = -1 ENOENT (No such file or directory)\n'
        '123 openat(AT_FDCWD, "inside.bin", O_RDONLY) = 4\n')
    assert _strace_opens(tmp_path / ".strace", tmp_path, allowed_roots(tmp_path)) == ["/etc/hostname"]
    traced = run_case(["run", "model.ttc"], tmp_path, timeout=60, strace=True)
    assert traced.exit_code == 2 and traced.outside == []
    assert os.path.getsize(tmp_path / ".strace") > 0


@pytest.mark.slow
@pytest.mark.fuzz
def test_fuzz_campaign_breaks_no_rule(tmp_path: Path) -> None:
    assert _campaign(tmp_path / "corpus", sample_counts(1500), seed=0) == []
