"""Block-float copies for matmuls (passes/layout.py, `matmul_copies`): under `activations=bfp8_b` with a matmul
fidelity, a computed value that a matmul reads as its a operand and another op reads too (a post-norm block's
norm result: its first linear and its residual add) gets a bfp8_b copy for the matmul where the cost model's
unpacker saves more than the copy program costs; the value itself stays bf16."""

from __future__ import annotations

import numpy as np
from backend_helpers import Graph, compile_graph, device_weights

import ttc.passes.layout as layout_pass
from ttc.ir.dialects import ttir, ttmetal
from ttc.profile import static_profile
from ttc.runtime.executor import Executor, using_emulator

PRESET = "fuse,layout{dtype=bfp8_b activations=bfp8_b matmul-fidelity=F},grid{math-fidelity=F}"
R, D, H = 2048, 512, 1024  # 64 x 16 tiles through a 512 -> 1024 -> 512 feed-forward block


def post_norm_block() -> Graph:
    """h = norm(x); out = norm(h + fc2(gelu(fc1(h)))): h is read by fc1 (operand a) and by the residual add."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.input("x", (R, D))
    h = g.op("ttir.layer_norm", [x, g.weight("g0", np.ones(D))], (R, D), "axis = -1, epsilon = 1.0e-05", loc="ln0")
    a = g.op("ttir.linear", [h, g.weight("w1", rng.standard_normal((D, H)) / 23), g.weight("b1", rng.standard_normal(H))],
             (R, H), 'activation = "gelu", transpose_b = false', loc="fc1")
    b = g.op("ttir.linear", [a, g.weight("w2", rng.standard_normal((H, D)) / 32)], (R, D),
             'activation = "none", transpose_b = false', loc="fc2")
    y = g.op("ttir.add", [h, b], (R, D), "", loc="residual")
    g.output(g.op("ttir.layer_norm", [y, g.weight("g1", np.ones(D))], (R, D), "axis = -1, epsilon = 1.0e-05",
                  loc="ln1"), "out")
    return g


def pipeline(fidelity: str, rest: str = "") -> str:
    return PRESET.replace("F", fidelity) + rest


def fc1_operand(module):
    fc1 = next(op for op in module.walk() if op.name == ttir.LINEAR.name and "fc1" in str(op.loc))
    return fc1.operands[0]


def test_a_norm_result_read_by_a_matmul_and_an_add_gets_a_bfp8_b_copy_for_the_matmul() -> None:
    module = compile_graph(post_norm_block(), pipeline=pipeline("hifi2"))
    a = fc1_operand(module)
    assert a.owner.name == ttir.ELTWISE.name and a.type.element_type.name == "bfp8_b"
    h = a.owner.operands[0]
    assert h.owner.name == ttir.LAYER_NORM.name and h.type.element_type.name == "bf16"
    others = [user for user, _ in h.uses if user is not a.owner]  # the copy and the residual add (fused: an eltwise)
    assert len(h.uses) == 2 and [user.name for user in others] == [ttir.ELTWISE.name]


def test_no_copy_where_the_unpacker_does_not_bound_the_matmul_or_the_product_is_small() -> None:
    """At HiFi4 the multiplier, not the unpacker, bounds a bf16 x bf16 product; a 64 x 64 product saves less
    than a copy program's launch."""
    module = compile_graph(post_norm_block(), pipeline=pipeline("hifi4"))
    assert fc1_operand(module).owner.name == ttir.LAYER_NORM.name
    small = Graph()
    x = small.input("x", (64, 64))
    h = small.op("ttir.layer_norm", [x, small.weight("g", np.ones(64))], (64, 64), "axis = -1, epsilon = 1.0e-05",
                 loc="ln0")
    f = small.op("ttir.linear", [h, small.weight("w", np.ones((64, 64)))], (64, 64),
                 'activation = "none", transpose_b = false', loc="fc1")
    small.output(small.op("ttir.add", [h, f], (64, 64), "", loc="residual"), "out")
    assert fc1_operand(compile_graph(small, pipeline=pipeline("hifi2"))).owner.name == ttir.LAYER_NORM.name


def test_the_copy_runs_alike_on_both_emulators_and_makes_the_matmul_cheaper(monkeypatch) -> None:
    rest = ",lower-to-kernels,allocate"
    inputs = {"x": np.random.default_rng(1).standard_normal((R, D)).astype(np.float32)}
    results, fc1_cycles = {}, {}
    for copies in (True, False):
        if not copies:
            monkeypatch.setattr(layout_pass, "matmul_copies", lambda *args: [])
        module = compile_graph(post_norm_block(), pipeline=pipeline("hifi2", rest))
        monkeypatch.undo()
        static = static_profile(module, device_weights(module))
        programs = [op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name]
        assert len(programs) == (6 if copies else 5)
        fc1_cycles[copies] = next(p.cycles for p, op in zip(static, programs, strict=True)
                                  if "fc1" in str(op.loc) and p.kind == "matmul")
        for emulator in ("native", "reference"):
            with using_emulator(emulator):
                executor = Executor(module, device_weights(module))
                results[copies, emulator] = executor.run(inputs)["out"]
                assert [p.counts for p in executor.profile] == [p.counts for p in static], emulator
    with_copy = np.asarray(results[True, "reference"])
    assert np.array_equal(np.asarray(results[True, "native"]).view(np.uint32), with_copy.view(np.uint32))
    without = np.asarray(results[False, "reference"])
    assert np.linalg.norm(with_copy - without) / np.linalg.norm(without) < 0.02  # the a operand's bits HiFi2 reads
    assert fc1_cycles[True] < 0.95 * fc1_cycles[False]  # its unpacker reads 1088 bytes of a tile of h, not 2048
