"""Overlapping M splits of a matmul (`matmul.m_splits`, `matmul.row_start`): M tiles that no core count divides
well (31 tile rows, a prime: ResNet-50's stage-4 convolutions at batch 20) split into ceil(M / blocks) rows per
core, the last block moved back to end at M. The rows two blocks share are computed by both cores from the same
operands with the same accumulation chunks, so both write the same bytes there: the result is bit-identical to an
exact split's, on both emulators, with planned = executed = static counts and no race between the cores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators
from onnx import TensorProto, helper, numpy_helper

from ttc.compiler import CompileOptions, compile_model, default_pipeline
from ttc.passes.ops import eltwise, embedding, matmul
from ttc.passes.ops.geometry import tile_shape
from ttc.passes.ops.matmul import m_splits, row_start

MT = 31


def linear_model(m: int, k: int, n: int, bias: bool, residual: bool = False, seed: int = 7) -> onnx.ModelProto:
    """|x| @ w [+ b, relu] [+ r, relu] on an [m, k] input: the residual add fuses into the linear's epilogue."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w")]
    nodes = [helper.make_node("Abs", ["x"], ["a"], name="/abs"), helper.make_node("MatMul", ["a", "w"], ["p"], name="/mm")]
    last = "p"
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        nodes += [helper.make_node("Add", ["p", "b"], ["s"], name="/bias"), helper.make_node("Relu", ["s"], ["y"])]
        last = "y"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])]
    if residual:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [m, n]))
        nodes += [helper.make_node("Add", [last, "r"], ["q"], name="/residual"),
                  helper.make_node("Relu", ["q"], ["z"], name="/relu2")]
        last = "z"
    graph = helper.make_graph(nodes, "linear", inputs,
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_m_splits_add_overlapping_blocks_and_row_start_ends_at_m() -> None:
    assert m_splits(31) == [1, 2, 3, 4, 5, 6, 7, 8, 11, 16, 31]
    assert m_splits(12) == [1, 2, 3, 4, 6, 12]  # every ceil(12 / blocks) up to 12 blocks divides 12
    assert 5 in m_splits(512)  # 103 blocks of 5 fill the e150's 108 cores (exact splits: 64 or 128 blocks)
    starts = row_start(31, 8, np.arange(4))
    assert starts.tolist() == [0, 8, 16, 23]  # the last block shares row 23 with the third
    assert set(np.concatenate([np.arange(s, s + 8) for s in starts]).tolist()) == set(range(31))


def only(monkeypatch: pytest.MonkeyPatch, overlapping: bool, mcast: bool = False) -> None:
    """Restrict the matmul's candidates to overlapping (or exact) M splits of a few rows per core, with the
    unicast or the multicast plan."""
    original = matmul.matmul_candidates

    def restricted(op):
        mt = matmul.matmul_shape(op).mt
        return (b for b in original(op) if bool(mt % b["per_core_m"]) == overlapping and b["per_core_m"] < mt
                and bool(b.get("mcast")) == mcast)
    monkeypatch.setattr(matmul, "matmul_candidates", restricted)


@pytest.mark.parametrize(("bias", "residual", "mcast"), [(False, False, False), (True, False, False),
                                                         (True, True, False), (False, False, True),
                                                         (True, True, True)])
def test_overlapping_split_is_bit_identical_to_an_exact_one(bias: bool, residual: bool, mcast: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """M = 31 tiles less 5 rows (the bias makes the padding rows non-zero: the last block re-masks them); with
    the multicast plan each grid row's sender reads its block's rows (the last row's moved back)."""
    m, k, n = MT * 32 - 5, 256, 96
    model = linear_model(m, k, n, bias, residual)
    name = "z" if residual else "y" if bias else "p"
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((m, k)).astype(np.float32)}
    if residual:
        feeds["r"] = rng.standard_normal((m, n)).astype(np.float32)
    with monkeypatch.context() as patch:
        only(patch, overlapping=True, mcast=mcast)
        plans, compiled = compile_with_plans(model)
    [program] = [op for op in compiled.module.walk()
                 if op.name == "ttmetal.enqueue_program" and op.attributes["kind"] == "matmul"]
    assert program.attributes["grid"].num_cores > 3  # more than the one core of each N column
    assert any(op.name == "ttkernel.noc_mcast_cb" for op in program.walk()) == mcast
    golden_on_both_emulators(model, compiled, plans, feeds, name)
    check_static_equals_executed(compiled, compiled.profile)
    overlapping = compiled.run(feeds)[name]
    exact = compile_model(model, CompileOptions(pipeline=default_pipeline().replace("grid{", "grid{max-cores=1,")))
    np.testing.assert_array_equal(overlapping, exact.run(feeds)[name])


@pytest.mark.parametrize("mcast", [False, True])
def test_overlapping_split_has_no_race_between_cores(mcast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both cores of a shared row write it; the race check (which lets cores write the same bytes) finds none."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from test_native_program import dual_programs

    model = linear_model(MT * 32, 128, 64, bias=True)
    with monkeypatch.context() as patch:
        only(patch, overlapping=True, mcast=mcast)
        _, compiled = compile_with_plans(model)
    feeds = {"x": np.random.default_rng(1).standard_normal((MT * 32, 128)).astype(np.float32)}
    with dual_programs() as dual:
        compiled.run(feeds)
    assert dual.programs > 0 and not dual.faults
    assert not dual.races, dual.races[:3]


def test_grid_pass_spreads_a_prime_m_over_more_cores() -> None:
    """ResNet-50's stage-4 3x3 convolution at batch 20 as its im2col product (M 31, K 144, N 16 tiles): the exact
    splits leave one block of 31 rows per N column (16 cores); the cost model now picks an overlapping split."""
    model = linear_model(MT * 32 - 20, 144 * 32, 16 * 32, bias=True)
    compiled = compile_model(model, CompileOptions(pipeline=default_pipeline(perf_preset="published")))
    [program] = [op for op in compiled.module.walk()
                 if op.name == "ttmetal.enqueue_program" and op.attributes["kind"] == "matmul"]
    cores = program.attributes["grid"].num_cores
    assert cores > 16 and cores % MT  # not one block per N column, nor one tile row per core


def window_model(op: str, channels: int = 32, size: int = 20) -> onnx.ModelProto:
    """Relu then a 3x3 window (pads 1): a convolution, whose im2col lookup reads the computed input's sticks, or a
    max pool (the elementwise maximum of nine lookups)."""
    rng = np.random.default_rng(5)
    inits, inputs, attrs = [], ["r"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    if op == "Conv":
        w = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
        inits, inputs = [numpy_helper.from_array(w, "w")], ["r", "w"]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/relu"), helper.make_node(op, inputs, ["y"], name="/window",
                                                                                    **attrs)]
    graph = helper.make_graph(nodes, "window", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def only_rows(monkeypatch: pytest.MonkeyPatch, module, name: str, overlapping: bool) -> None:
    """Restrict the candidates of a kind (`module.name(...)`) to overlapping (or exact) splits of their tile rows,
    where an op has such splits."""
    original = getattr(module, name)

    def restricted(arg):
        rt = (arg.rt if hasattr(arg, "rt") else tile_shape(arg.result.type.shape).rt)
        candidates = list(original(arg))
        return iter([b for b in candidates if bool(rt % b["rows"]) == overlapping] or candidates)
    monkeypatch.setattr(module, name, restricted)


@pytest.mark.parametrize(("op", "kind", "module", "name"), [("Conv", "embedding", embedding, "row_candidates"),
                                                             ("MaxPool", "eltwise", eltwise, "eltwise_candidates")],
                         ids=["im2col-lookup", "max-pool-maximum"])
def test_overlapping_row_split_is_bit_identical_to_an_exact_one(op: str, kind: str, module, name: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3x3 window over 400 pixels (13 tile rows, a prime): the lookups (the convolution's im2col lookup of 9
    positions) or the max pool's elementwise maximum on overlapping blocks of rows, the last moved back to end at
    row 13; both cores of a shared row write the same bytes. Golden on both emulators with planned = executed =
    static counts, no race, and the exact split's bits."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from test_native_program import dual_programs

    model = window_model(op)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 32, 20, 20)).astype(np.float32)}
    results = {}
    for overlapping in (True, False):
        with monkeypatch.context() as patch:
            only_rows(patch, module, name, overlapping)
            plans, compiled = compile_with_plans(model)
        programs = [p for p in compiled.module.walk()
                    if p.name == "ttmetal.enqueue_program" and p.attributes["kind"] == kind]
        if overlapping:  # a 13-row program on more cores than an exact split of its rows allows
            assert any(p.attributes["grid"].num_cores not in (1, 9, 13, 117) for p in programs)
            golden_on_both_emulators(model, compiled, plans, feeds)
            check_static_equals_executed(compiled, compiled.profile)
            with dual_programs() as dual:
                compiled.run(feeds)
            assert dual.programs > 0 and not dual.faults and not dual.races, dual.races[:3]
        results[overlapping] = compiled.run(feeds)["y"]
    np.testing.assert_array_equal(results[True], results[False])
