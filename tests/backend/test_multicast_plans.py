"""The multicast matmul plan (passes/ops/matmul_mcast.py) on batched products and at a ragged N edge: forced onto
one blocking, it gives bit for bit the unicast plan's result on both emulators, and the counts the grid pass
plans are those both emulators and the static count execute; the grid pass chooses it for a batched linear layer
where it is faster; a receiver that never increments its sender's ready semaphore is a deadlock naming them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from backend_helpers import Graph, compile_text, device_weights

from ttc.ir import Module, Operation
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialects import ttkernel, ttmetal
from ttc.ir.dialects.tt import E150, GridAttr
from ttc.passes import PassManager
from ttc.passes.cost_model import plan_counts
from ttc.passes.grid import grid_for, ranked_matmul
from ttc.passes.ops.interface import BY_COLUMN
from ttc.passes.ops.matmul import matmul_shape, matmul_units
from ttc.passes.ops.matmul_mcast import (
    GRID_2D,
    IN0_TO_ALL,
    IN1_TO_ALL,
    MCAST,
    MCAST_ARGS,
    mcast_allowed,
    mcast_grid,
)
from ttc.passes.ops.registry import op_kind
from ttc.profile import static_profile
from ttc.runtime.executor import Executor, using_emulator

TRANSPOSED = -1  # (tests only) the 2-D plan transposed: MCAST = GRID_2D with BY_COLUMN
B, M, K, N = 3, 40, 96, 160  # 3 batches of 2 x 3 x 5 tiles (M = 40 keeps the batches apart)


def product(shared: bool, bias: bool = True, batch: int = B, m: int = M, k: int = K, n: int = N,
            residual: bool = False) -> Graph:
    """[batch, m, k] @ [k, n] (+ bias) (+ a residual input r, then relu, in the epilogue): a linear layer's shared
    weights; or [batch, m, k] @ [batch, k, n]."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.input("x", (batch, m, k))
    if shared:
        operands = [x, g.weight("w", rng.standard_normal((k, n)))]
        if bias:
            operands.append(g.weight("b", rng.standard_normal(n)))
        attrs = 'activation = "none", transpose_b = false'
        if residual:
            operands.append(g.input("r", (batch, m, n)))
            attrs += ', residual = true, residual_activation = "relu"'
        y = g.op("ttir.linear", operands, (batch, m, n), attrs, loc="mm")
    else:
        y = g.op("ttir.matmul", [x, g.input("w", (batch, k, n))], (batch, m, n),
                 "transpose_a = false, transpose_b = false", loc="mm")
    g.output(y, "y")
    return g


def the_matmul(module: Module) -> Operation:
    return next(op for op in module.walk() if op.name in ("ttir.linear", "ttir.matmul"))


def forced(g: Graph, blocking: dict[str, int], mcast: int) -> tuple[Module, object]:
    """The graph compiled with the matmul on `blocking`, unicast (0) or the multicast plan `mcast`, and its
    planned counts."""
    module = compile_text(g.text(), dict(g.weights), "layout,grid")
    op = the_matmul(module)
    shape = matmul_shape(op)
    b = {**blocking, MCAST: GRID_2D, BY_COLUMN: 1} if mcast == TRANSPOSED else {**blocking, MCAST: mcast} if mcast \
        else dict(blocking)
    if mcast:
        assert mcast_allowed(op, shape, b)
    units = matmul_units(shape, b)
    grid = GridAttr(*mcast_grid(shape, b)) if mcast in (GRID_2D, TRANSPOSED) else grid_for(units[0] * units[1] * units[2], E150)
    op.attributes["tt.blocking"] = b
    op.attributes["tt.grid"] = grid
    planned = plan_counts(op, op_kind(op), E150, grid, b, "hifi4")
    PassManager("lower-to-kernels,allocate", stream=io.StringIO()).run(module)
    return module, planned


def feeds(shared: bool, batch: int = B, m: int = M, k: int = K, n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {"x": rng.standard_normal((batch, m, k)).astype(np.float32)}
    if not shared:
        out["w"] = rng.standard_normal((batch, k, n)).astype(np.float32)
    return out


def has_multicast(module: Module) -> bool:
    return any(op.name == ttkernel.NOC_MCAST_CB.name for op in module.walk())


def blocking(batches: int, m: int, n: int, width: int, h: int, w: int) -> dict[str, int]:
    return {"batches": batches, "per_core_m": m, "per_core_n": n, "in0_block_w": width, "out_subblock_h": h,
            "out_subblock_w": w}


BLOCKINGS = {  # (plan, blocking) of the 3 x [2 x 3] @ [3 x 5] tiles product
    "2d-one-batch-per-row": (GRID_2D, blocking(1, 1, 1, 1, 1, 1)),
    "2d-batches-per-core": (GRID_2D, blocking(3, 1, 2, 3, 1, 1)),
    "2d-all-rows": (GRID_2D, blocking(1, 2, 1, 3, 2, 1)),
    "2d-one-column": (GRID_2D, blocking(1, 1, 5, 3, 1, 5)),
    "2d-ragged": (GRID_2D, blocking(1, 1, 2, 1, 1, 2)),
    "2d-transposed": (TRANSPOSED, blocking(3, 1, 1, 1, 1, 1)),
    "2d-transposed-wide-k": (TRANSPOSED, blocking(3, 1, 1, 3, 1, 1)),
    "2d-transposed-ragged": (TRANSPOSED, blocking(3, 1, 2, 1, 1, 2)),
    "in0-to-all": (IN0_TO_ALL, blocking(3, 2, 1, 1, 2, 1)),
    "in0-to-all-ragged": (IN0_TO_ALL, blocking(3, 2, 2, 3, 1, 2)),
    "in1-to-all": (IN1_TO_ALL, blocking(3, 1, 5, 1, 1, 5)),
}


@pytest.mark.parametrize("shared", [True, False], ids=["shared-in1", "per-batch-in1"])
@pytest.mark.parametrize("name", sorted(BLOCKINGS))
def test_the_multicast_plan_matches_the_unicast_bits_and_its_planned_counts(shared: bool, name: str) -> None:
    check_plan(product(shared), *BLOCKINGS[name], feeds(shared))


@pytest.mark.parametrize("name", sorted(n for n, (_, b) in BLOCKINGS.items() if (N // 32) % b["per_core_n"] == 0))
def test_a_fused_residual_is_read_by_every_core_under_each_multicast_plan(name: str) -> None:
    """A residual add (and ReLU) in the epilogue: each core reads its own output block's residual tiles after the
    multicast operands' arguments (batched, 2-D and 1-D plans alike), giving the unicast plan's bits."""
    inputs = {**feeds(True), "r": np.random.default_rng(3).standard_normal((B, M, N)).astype(np.float32)}
    check_plan(product(True, residual=True), *BLOCKINGS[name], inputs)


def test_no_multicast_plan_for_a_residual_at_a_ragged_edge() -> None:
    module = compile_text(product(True, residual=True).text(), dict(product(True).weights), "layout")
    op = the_matmul(module)
    plan, b = BLOCKINGS["2d-ragged"]
    assert not mcast_allowed(op, matmul_shape(op), {**b, MCAST: plan})


def test_the_one_dimensional_plans_on_a_padded_grid() -> None:
    """13 units (a prime beyond the grid's width) run on 14 cores, the last repeating the 13th unit's work and
    taking part in the handshake: in1 from core 0 to the 13 others (13 M blocks), in0 likewise (13 N blocks)."""
    tall = product(True, batch=1, m=13 * 32, k=64, n=64)
    check_plan(tall, IN1_TO_ALL, blocking(1, 1, 2, 1, 1, 2), feeds(True, batch=1, m=13 * 32, k=64, n=64))
    wide = product(True, batch=1, m=64, k=64, n=13 * 32)
    check_plan(wide, IN0_TO_ALL, blocking(1, 2, 1, 2, 2, 1), feeds(True, batch=1, m=64, k=64, n=13 * 32))


def check_plan(g: Graph, plan: int, b: dict[str, int], inputs: dict[str, np.ndarray]) -> None:
    """Unicast and multicast on `b`: the same bits on both emulators, and each one's planned counts executed."""
    results = {}
    for mcast in (0, plan):
        module, planned = forced(g, b, mcast)
        assert has_multicast(module) == bool(mcast)
        assert [p.counts for p in static_profile(module, device_weights(module))] == [planned]
        for emulator in ("native", "reference"):
            with using_emulator(emulator):
                executor = Executor(module, device_weights(module))
                results[mcast, emulator] = executor.run(inputs)["y"]
                assert [p.counts for p in executor.profile] == [planned], (mcast, emulator)
    want = results[0, "reference"]
    assert np.abs(want).max() > 1  # a real product, not zeros
    for key, got in results.items():
        assert np.array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32)), key


def test_a_per_batch_in1_goes_down_its_batch_groups_rows_only() -> None:
    """One grid column, a row per batch and M block: a per-batch in1 goes from each batch's first row to its second
    (fan-out 1, three senders); a shared in1 from the top core down all six rows (fan-out 5, one sender)."""
    plan, b = BLOCKINGS["2d-one-column"]
    for shared, fanout, senders in ((False, 1, 3), (True, 5, 1)):
        module, planned = forced(product(shared), b, plan)
        assert planned.mcast_fanout == fanout
        program = next(op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name)
        reader_args = program.attributes["runtime_args"][0]
        assert sum(core[MCAST_ARGS + 5] for core in reader_args) == senders  # in1 senders


def test_the_grid_pass_multicasts_a_batched_linear_layer() -> None:
    """A ViT-like batched linear layer (197 rows per image do not merge into one matrix): the weights go down the
    cores that share them instead of being read by every one; faster and less DRAM than without multicast."""
    g = product(True, batch=8, m=197, k=256, n=1024)
    chosen = the_matmul(compile_text(g.text(), dict(g.weights), "layout,grid"))
    unicast = the_matmul(compile_text(g.text(), dict(g.weights), "layout,grid{multicast=false}"))
    assert chosen.attributes["tt.blocking"].get(MCAST) in (GRID_2D, IN1_TO_ALL)
    assert matmul_shape(chosen).batches == 8
    assert chosen.attributes["tt.cost"]["cycles"] < unicast.attributes["tt.cost"]["cycles"]
    costs = [plan_counts(op, op_kind(op), E150, op.attributes["tt.grid"], op.attributes["tt.blocking"], "hifi4")
             for op in (chosen, unicast)]
    assert costs[0].dram_read < costs[1].dram_read / 2


@pytest.mark.parametrize("emulator", ["native", "reference"])
@pytest.mark.parametrize("shared, name, which, semaphore", [
    (True, "2d-batches-per-core", 0, 0), (True, "2d-batches-per-core", 1, 2), (False, "2d-batches-per-core", 1, 2),
    (True, "in0-to-all", 0, 0), (False, "in1-to-all", 0, 2), (True, "2d-transposed", 0, 0),
    (False, "2d-transposed", 1, 2)],
    ids=["2d-in0", "2d-shared-in1", "2d-per-batch-in1", "in0-to-all", "in1-to-all", "transposed-in0",
         "transposed-in1"])
def test_a_missing_ready_increment_is_a_deadlock(emulator: str, shared: bool, name: str, which: int,
                                                 semaphore: int) -> None:
    """The reader's `which`-th semaphore_inc deleted: the sender, core (0,0), waits forever."""
    plan, b = BLOCKINGS[name]
    module, _ = forced(product(shared), b, plan)
    program = next(op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name)
    [op for op in program.walk() if op.name == ttkernel.SEMAPHORE_INC.name][which].erase()
    with using_emulator(emulator), pytest.raises(DeviceFault, match=(
            rf"deadlock: no kernel on any core can make progress\n  reader kernel on core \(0,0\): "
            rf"ttkernel.semaphore_wait waits for semaphore {semaphore} to reach \d+ \(it holds 0\)")):
        Executor(module, device_weights(module)).run(feeds(shared))


@pytest.mark.parametrize("emulator", ["native", "reference"])
@pytest.mark.parametrize("shared, name, cb", [(True, "2d-batches-per-core", 0), (False, "2d-batches-per-core", 1),
                                              (True, "in0-to-all", 0), (True, "in1-to-all", 1),
                                              (True, "2d-transposed", 0), (False, "2d-transposed", 1)],
                         ids=["2d-in0", "2d-per-batch-in1", "in0-to-all", "in1-to-all", "transposed-in0",
                              "transposed-in1"])
def test_a_receiver_that_does_not_wait_for_the_multicast_is_a_fault(emulator: str, shared: bool, name: str,
                                                                     cb: int) -> None:
    """The receivers' wait for the valid semaphore of CB `cb`'s multicast deleted: their push is the fault."""
    plan, b = BLOCKINGS[name]
    module, _ = forced(product(shared), b, plan)
    program = next(op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name)
    waits = [op for op in program.walk() if op.name == ttkernel.SEMAPHORE_WAIT.name]
    receivers = [op for op in waits if op.attributes["semaphore"] == (1 if cb == 0 else 3)]
    receivers[0].erase()
    with using_emulator(emulator), pytest.raises(DeviceFault, match=(
            rf"cb_push_back of CB {cb} before waiting for the multicast into it to land(.|\n)*"
            rf"reader kernel, CB {cb}, op ttkernel.cb_push_back")):
        Executor(module, device_weights(module)).run(feeds(shared))


def test_the_grid_pass_transposes_the_2d_plan_for_more_m_blocks_than_grid_rows() -> None:
    """A tall product of an L1 intermediate (M 123 tiles, as ResNet-50's stage-3 3x3 convolutions at batch 20): the
    plain 2-D grid holds at most 9 M blocks (the e150's rows), the transposed one 12 (its columns); the grid pass
    picks the transposed plan, M blocks along x and N blocks along y, faster than anything without it."""
    rng = np.random.default_rng(0)
    g = Graph()
    m, k, n, linear = 123 * 32, 1024, 256, 'activation = "none", transpose_b = false'
    y = g.op("ttir.linear", [g.input("x", (m, 64)), g.weight("w0", rng.standard_normal((64, k)))], (m, k), linear,
             loc="first")
    g.output(g.op("ttir.linear", [y, g.weight("w1", rng.standard_normal((k, n)))], (m, n), linear, loc="mm"), "y")
    module = compile_text(g.text(), dict(g.weights), "layout,grid")
    op = [op for op in module.walk() if op.name == "ttir.linear"][1]
    assert "l1" in str(op.operands[0].type)
    b, grid = op.attributes["tt.blocking"], op.attributes["tt.grid"]
    assert b[MCAST] == GRID_2D and b[BY_COLUMN] == 1
    _, m_blocks, n_blocks = matmul_units(matmul_shape(op), b)
    assert (grid.x, grid.y) == (m_blocks, n_blocks) and m_blocks > E150.compute_grid[1]
    plain = [c for c in ranked_matmul(op, E150, "hifi4", ()) if not c[1].get(BY_COLUMN)]
    assert op.attributes["tt.cost"]["cycles"] < plain[0][3].cycles
