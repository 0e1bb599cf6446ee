"""passes/schedule.py: a side branch reading only a shared value and constants, ending in a smaller value, runs
before the shared value's other readers (layout runs it before placing values in L1); anything else keeps its
place. The move changes the program order only: the same bits, on both emulators."""

from __future__ import annotations

import numpy as np
import pytest
from backend_helpers import BACKEND, Graph, compile_text, device_weights

from ttc.ir.dialects.ttmetal import ENQUEUE_PROGRAM
from ttc.passes import layout
from ttc.runtime.executor import Executor, using_emulator

ENQUEUE = ENQUEUE_PROGRAM.name
LINEAR = 'activation = "none", transpose_b = false'


def branches(side_n: int = 128, side_reads_main: bool = False) -> Graph:
    """x = in @ w0 [512, 256]; main: x @ w1 @ w2 [512, side_n]; side (exported last): x @ w3 [512, side_n], or
    (side_reads_main) x + the main branch's first product [512, 256] then @ w3; their sum."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.op("ttir.linear", [g.input("in", (512, 64)), g.weight("w0", rng.standard_normal((64, 256)) / 8)],
             (512, 256), LINEAR, loc="x")
    width = 256 if side_reads_main else side_n
    m1 = g.op("ttir.linear", [x, g.weight("w1", rng.standard_normal((256, width)) / 16)], (512, width), LINEAR,
              loc="main1")
    m2 = g.op("ttir.linear", [m1, g.weight("w2", rng.standard_normal((width, side_n)) / 16)], (512, side_n),
              LINEAR, loc="main2")
    side = g.op("ttir.add", [x, m1], (512, 256), loc="side_add") if side_reads_main else x
    side = g.op("ttir.linear", [side, g.weight("w3", rng.standard_normal((256, side_n)) / 16)], (512, side_n),
                LINEAR, loc="side")
    g.output(g.op("ttir.add", [m2, side], (512, side_n), loc="merge"), "y")
    return g


def order(g: Graph) -> list[str]:
    module = compile_text(g.text(), dict(g.weights), "layout")
    return [str(op.loc).split('"')[1] for op in module.function().body.ops
            if op.name in ("ttir.linear", "ttir.add")]


def test_a_smaller_side_branch_runs_before_the_main_branch() -> None:
    assert order(branches()) == ["x", "side", "main1", "main2", "merge"]


@pytest.mark.parametrize(("side_n", "reads_main"), [(256, False), (128, True)], ids=["not-smaller", "reads-main"])
def test_other_branches_keep_their_place(side_n: int, reads_main: bool) -> None:
    """A side result as large as the shared value frees nothing; a branch reading the main branch cannot move."""
    expected = ["x", "main1", "main2", *(["side_add"] if reads_main else []), "side", "merge"]
    assert order(branches(side_n, reads_main)) == expected


def test_the_hoisted_order_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    g = branches()
    feeds = {"in": np.random.default_rng(1).standard_normal((512, 64)).astype(np.float32)}
    results = {}
    for hoist in (True, False):
        with monkeypatch.context() as patch:
            if not hoist:
                patch.setattr(layout, "hoist_side_branches", lambda func: 0)
            module = compile_text(g.text(), dict(g.weights), f"fuse,{BACKEND}")
        for emulator in ("native", "reference"):
            with using_emulator(emulator):
                results[hoist, emulator] = Executor(module, device_weights(module)).run(feeds)["y"]
    want = results[False, "reference"]
    assert np.abs(want).max() > 0.1
    for key, got in results.items():
        assert np.array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32)), key
        assert [str(op.loc).split('"')[1] for op in module.function().body.ops if op.name == ENQUEUE][:2] \
            == (["x", "side"] if hoist else ["x", "main1"])
