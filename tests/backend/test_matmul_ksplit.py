"""The K-split matmul plan (passes/ops/matmul_ksplit.py): forced onto a blocking, it gives bit for bit the unsplit
program's result on both emulators (bf16 and bfp8_b weights, LoFi and HiFi4, with a bias, an activation and a
residual in the epilogue, on a padded grid, with zero blocks of K), and the counts the grid pass plans are those
both emulators and the static count execute; the grid pass takes it for a product with few output blocks and a
long K, and not where the unsplit plans fill the grid; a missing semaphore increment is a deadlock naming the
waiting core, a missing wait for the multicast a fault."""

from __future__ import annotations

import io

import numpy as np
import pytest
from backend_helpers import Graph, compile_text, device_weights

from ttc.ir import Module, Operation
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialects import ttkernel, ttmetal
from ttc.ir.dialects.tt import E150, LayoutAttr
from ttc.passes import PassManager
from ttc.passes.cost_model import plan_counts
from ttc.passes.grid import grid_for, ranked_matmul
from ttc.passes.ops.matmul import accumulation_tiles, matmul_shape
from ttc.passes.ops.matmul_ksplit import KSPLIT, VALID, is_ksplit
from ttc.passes.ops.registry import core_units, op_kind
from ttc.profile import static_profile
from ttc.runtime.executor import Executor, using_emulator

M, K, N = 64, 72 * 32, 96  # 2 x 72 x 3 tiles: K in 12 chunks of 6 tiles (matmul.accumulation_tiles)


def product(m: int = M, k: int = K, n: int = N, bias: bool = True, activation: str = "relu",
            residual: bool = False) -> Graph:
    rng = np.random.default_rng(0)
    g = Graph()
    operands = [g.input("x", (m, k)), g.weight("w", rng.standard_normal((k, n)) / np.sqrt(k))]
    if bias:
        operands.append(g.weight("b", rng.standard_normal(n)))
    attrs = f'activation = "{activation}", transpose_b = false'
    if residual:
        operands.append(g.input("r", (m, n)))
        attrs += ', residual = true, residual_activation = "relu"'
    g.output(g.op("ttir.linear", operands, (m, n), attrs, loc="mm"), "y")
    return g


def the_matmul(module: Module) -> Operation:
    return next(op for op in module.walk() if op.name in ("ttir.linear", "ttir.matmul"))


def backend(dtype: str, fidelity: str) -> str:
    return f"layout{{dtype={dtype}}},grid{{math-fidelity={fidelity}}}"


def forced(g: Graph, blocking: dict[str, int], dtype: str, fidelity: str, rows: bool = False) -> tuple[Module, object]:
    """The graph compiled with its matmul on `blocking` (writing its result as rows with `rows`, as the untilize
    fusion makes it: matmul_rows.py), and the matmul's planned counts."""
    module = compile_text(g.text(), dict(g.weights), backend(dtype, fidelity))
    op = the_matmul(module)
    if rows:
        t = op.result.type
        op.result.type = t.with_encoding(LayoutAttr("row_major", t.encoding.memory_space, "interleaved"))
        assert op_kind(op) == "matmul_rows"
    units = core_units(op, blocking)
    grid = grid_for(int(np.prod(units)), E150)
    op.attributes["tt.blocking"] = dict(blocking)
    op.attributes["tt.grid"] = grid
    planned = plan_counts(op, op_kind(op), E150, grid, blocking, fidelity)
    PassManager("lower-to-kernels,allocate", stream=io.StringIO()).run(module)
    return module, planned


def feeds(m: int = M, k: int = K, n: int = N, residual: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, : k // 12] = 0.0  # a first chunk of zeros times weights of either sign
    x[: m // 2, k // 3: k // 2] = 0.0
    out = {"x": x}
    if residual:
        out["r"] = rng.standard_normal((m, n)).astype(np.float32)
    return out


def blocking(m: int, n: int, width: int, h: int, w: int, split: int = 0) -> dict[str, int]:
    b = {"batches": 1, "per_core_m": m, "per_core_n": n, "in0_block_w": width, "out_subblock_h": h,
         "out_subblock_w": w}
    return {**b, KSPLIT: split} if split else b


def check_split(g: Graph, b: dict[str, int], inputs: dict[str, np.ndarray], dtype: str = "bf16",
                fidelity: str = "hifi4", rows: bool = False) -> None:
    """The unsplit blocking and its K split: the same bits on both emulators, each one's planned counts executed
    and counted statically."""
    results = {}
    unsplit = {key: value for key, value in b.items() if key != KSPLIT}
    for label, blk in (("unsplit", unsplit), ("split", b)):
        module, planned = forced(g, blk, dtype, fidelity, rows)
        hand_overs = [op for op in module.walk() if op.name == ttkernel.SEMAPHORE_INC.name]
        assert bool(hand_overs) == (label == "split")
        assert [p.counts for p in static_profile(module, device_weights(module))] == [planned]
        for emulator in ("native", "reference"):
            with using_emulator(emulator):
                executor = Executor(module, device_weights(module))
                results[label, emulator] = executor.run(inputs)["y"]
                assert [p.counts for p in executor.profile] == [planned], (label, emulator)
    want = results["unsplit", "reference"]
    assert np.abs(want).max() > 1  # a real product, not zeros
    for key, got in results.items():
        assert np.array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32)), key


CASES = {  # (blocking, graph options) of the [2 x 72] @ [72 x 3] tiles product
    "3-cores-block-per-core": (blocking(2, 3, 6, 2, 3, 3), {}),
    "12-cores-one-chunk-each": (blocking(2, 1, 3, 2, 1, 12), {}),
    "subblocks-pipelined": (blocking(2, 3, 2, 1, 1, 3), {}),
    "one-row-blocks-no-bias": (blocking(1, 3, 6, 1, 3, 4), {"bias": False, "activation": "none"}),
    "residual": (blocking(2, 1, 6, 1, 1, 6), {"residual": True}),
}


@pytest.mark.parametrize("dtype, fidelity", [("bf16", "hifi4"), ("bfp8_b", "lofi"), ("bfp8_b", "hifi2")])
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_k_split_matches_the_unsplit_bits_and_its_planned_counts(name: str, dtype: str, fidelity: str) -> None:
    b, options = CASES[name]
    check_split(product(**options), b, feeds(residual=bool(options.get("residual"))), dtype, fidelity)


def test_a_padded_grid_and_ragged_rows() -> None:
    """M = 3 tiles (rows masked) in overlapping blocks of 2 by N = 5 blocks of 1, K split 3 ways: 30 units on a
    10 x 3 grid; and 13 N blocks split 2 ways, 26 units on a 9 x 3 grid whose extra core repeats the last core's
    reads and compute but sends, gathers and writes nothing."""
    g = product(m=3 * 32 - 5, n=5 * 32 - 7)
    check_split(g, blocking(2, 1, 6, 2, 1, 3), feeds(m=3 * 32 - 5, n=5 * 32 - 7))
    g = product(m=32, n=13 * 32)
    check_split(g, blocking(1, 1, 6, 1, 1, 2), feeds(m=32, n=13 * 32))


def test_the_grid_pass_splits_k_of_a_product_with_few_output_blocks() -> None:
    """ResNet-50's stage-4 3x3 convolution at batch 1 ([49 x 4608] @ [4608 x 512], its input an L1 intermediate,
    bfp8_b weights, LoFi): its 16 output blocks of 2 x 1 tiles leave most of the grid idle; split along K it is
    cheaper in the model than every unsplit candidate, and chosen."""
    rng = np.random.default_rng(0)
    g = Graph()
    linear = 'activation = "relu", transpose_b = false'
    y = g.op("ttir.linear", [g.input("x", (49, 64)), g.weight("w0", rng.standard_normal((64, 4608)))], (49, 4608),
             linear, loc="first")
    g.output(g.op("ttir.linear", [y, g.weight("w1", rng.standard_normal((4608, 512)))], (49, 512), linear,
                  loc="mm"), "y")
    module = compile_text(g.text(), dict(g.weights), backend("bfp8_b", "lofi"))
    op = [op for op in module.walk() if op.name == "ttir.linear"][1]
    assert "l1" in str(op.operands[0].type)
    b = op.attributes["tt.blocking"]
    assert is_ksplit(b)
    assert op.attributes["tt.grid"].num_cores > 16
    unsplit = [c for c in ranked_matmul(op, E150, "lofi", ()) if not is_ksplit(c[1])]
    assert op.attributes["tt.cost"]["cycles"] < unsplit[0][3].cycles
    shape = matmul_shape(op)
    assert shape.kt // accumulation_tiles(shape.kt) % b[KSPLIT] == 0


@pytest.mark.parametrize("name", ["3-cores-block-per-core", "subblocks-pipelined", "residual"])
def test_a_k_split_writing_rows_matches_the_unsplit_bits(name: str) -> None:
    """A product writing rows (its untilize fused: matmul_rows.py) split along K: the block's finishing core packs
    and writes the rows (the others none), with the unsplit bits and the planned counts on both emulators; with
    ragged rows too."""
    b, options = CASES[name]
    check_split(product(**options), b, feeds(residual=bool(options.get("residual"))), "bfp8_b", "lofi", rows=True)
    if name == "3-cores-block-per-core":
        check_split(product(m=3 * 32 - 5), blocking(1, 3, 6, 1, 3, 3), feeds(m=3 * 32 - 5), rows=True)


def test_a_product_writing_rows_is_offered_the_k_split() -> None:
    """ResNet-50's stage-4 1x1 convolution before a 3x3 ([49 x 2048] @ [2048 x 512]) writing the 3x3's sticks: its
    row-writing candidates include the K splits (matmul_rows.py). (The fused lookup's reader never takes them:
    test_conv_fusion.)"""
    from ttc.passes.ops.matmul import matmul_candidates
    from ttc.passes.ops.matmul_rows import MATMUL_ROWS

    g = product(m=49, k=2048, n=512)
    module = compile_text(g.text(), dict(g.weights), backend("bfp8_b", "lofi"))
    op = the_matmul(module)
    assert any(is_ksplit(b) for b in matmul_candidates(op))
    assert any(is_ksplit(b) for b in MATMUL_ROWS.candidates(op))


def test_no_k_split_where_the_output_fills_the_grid() -> None:
    """A product of 8 x 12 output tiles: the unsplit plans fill the grid and are cheaper; of the blockings with few
    output blocks, whose K splits are offered, none wins."""
    g = product(m=8 * 32, k=2048, n=12 * 32)
    module = compile_text(g.text(), dict(g.weights), backend("bf16", "hifi4"))
    op = the_matmul(module)
    assert not is_ksplit(op.attributes["tt.blocking"])
    splits = [c for c in ranked_matmul(op, E150, "hifi4", ()) if is_ksplit(c[1])]
    assert splits and op.attributes["tt.cost"]["cycles"] < splits[0][3].cycles


@pytest.mark.parametrize("emulator", ["native", "reference"])
@pytest.mark.parametrize("which, semaphore", [(0, 1), (-1, 0)], ids=["receiver-ready", "writer-to-reader"])
def test_a_missing_increment_is_a_deadlock(emulator: str, which: int, semaphore: int) -> None:
    """The first round's ready increment deleted (the block's last core never tells core (0,0) it is ready), or
    the writer's increment of its own core's semaphore (its reader never reads its sums back): core (0,0) waits
    forever, and both emulators name it."""
    module, _ = forced(product(), CASES["3-cores-block-per-core"][0], "bf16", "hifi4")
    program = next(op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name)
    [op for op in program.walk() if op.name == ttkernel.SEMAPHORE_INC.name][which].erase()
    with using_emulator(emulator), pytest.raises(DeviceFault, match=(
            r"deadlock: no kernel on any core can make progress\n  reader kernel on core \(0,0\): "
            rf"ttkernel.semaphore_wait waits for semaphore {semaphore} to reach 1 \(it holds 0\)")):
        Executor(module, device_weights(module)).run(feeds())


@pytest.mark.parametrize("emulator", ["native", "reference"])
def test_a_receiver_that_does_not_wait_for_the_multicast_is_a_fault(emulator: str) -> None:
    """The last core's wait for the first round's valid semaphore deleted: its push of the gathered sums is the
    fault."""
    module, _ = forced(product(), CASES["3-cores-block-per-core"][0], "bf16", "hifi4")
    program = next(op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name)
    next(op for op in program.walk() if op.name == ttkernel.SEMAPHORE_WAIT.name
         and op.attributes["semaphore"] == VALID).erase()
    with using_emulator(emulator), pytest.raises(DeviceFault, match=(
            r"cb_push_back of CB 4 before waiting for the multicast into it to land(.|\n)*"
            r"reader kernel, CB 4, op ttkernel.cb_push_back")):
        Executor(module, device_weights(module)).run(feeds())
