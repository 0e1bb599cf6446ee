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
from ttc.passes.grid import grid_for
from ttc.passes.ops.matmul import matmul_shape, matmul_units
from ttc.passes.ops.matmul_mcast import MCAST, MCAST_ARGS, mcast_allowed, mcast_grid
from ttc.passes.ops.registry import op_kind
from ttc.profile import static_profile
from ttc.runtime.executor import Executor, using_emulator

B, M, K, N = 3, 40, 96, 160  # 3 batches of 2 x 3 x 5 tiles (M = 40 keeps the batches apart)


def product(shared: bool, bias: bool = True, batch: int = B, m: int = M, k: int = K, n: int = N) -> Graph:
    """[batch, m, k] @ [k, n] (+ bias): a linear layer's shared weights; or [batch, m, k] @ [batch, k, n]."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.input("x", (batch, m, k))
    if shared:
        operands = [x, g.weight("w", rng.standard_normal((k, n)))]
        if bias:
            operands.append(g.weight("b", rng.standard_normal(n)))
        y = g.op("ttir.linear", operands, (batch, m, n), 'activation = "none", transpose_b = false', loc="mm")
    else:
        y = g.op("ttir.matmul", [x, g.input("w", (batch, k, n))], (batch, m, n),
                 "transpose_a = false, transpose_b = false", loc="mm")
    g.output(y, "y")
    return g


def the_matmul(module: Module) -> Operation:
    return next(op for op in module.walk() if op.name in ("ttir.linear", "ttir.matmul"))


def forced(g: Graph, blocking: dict[str, int], mcast: bool) -> tuple[Module, object]:
    """The graph compiled with the matmul on `blocking` (unicast or multicast), and its planned counts."""
    module = compile_text(g.text(), dict(g.weights), "layout,grid")
    op = the_matmul(module)
    shape = matmul_shape(op)
    b = {**blocking, MCAST: 1} if mcast else dict(blocking)
    if mcast:
        assert mcast_allowed(op, shape, b)
        grid = GridAttr(*mcast_grid(shape, b))
    else:
        units = matmul_units(shape, b)
        grid = grid_for(units[0] * units[1] * units[2], E150)
    op.attributes["tt.blocking"] = b
    op.attributes["tt.grid"] = grid
    planned = plan_counts(op, op_kind(op), E150, grid, b, "hifi4")
    PassManager("lower-to-kernels,allocate", stream=io.StringIO()).run(module)
    return module, planned


def feeds(shared: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {"x": rng.standard_normal((B, M, K)).astype(np.float32)}
    if not shared:
        out["w"] = rng.standard_normal((B, K, N)).astype(np.float32)
    return out


def has_multicast(module: Module) -> bool:
    return any(op.name == ttkernel.NOC_MCAST_CB.name for op in module.walk())


BLOCKINGS = {
    "one-batch-per-row": dict(batches=1, per_core_m=1, per_core_n=1, in0_block_w=1, out_subblock_h=1, out_subblock_w=1),
    "batches-per-core": dict(batches=3, per_core_m=1, per_core_n=2, in0_block_w=3, out_subblock_h=1, out_subblock_w=1),
    "all-rows": dict(batches=1, per_core_m=2, per_core_n=1, in0_block_w=3, out_subblock_h=2, out_subblock_w=1),
    "one-column": dict(batches=1, per_core_m=1, per_core_n=5, in0_block_w=3, out_subblock_h=1, out_subblock_w=5),
    "ragged": dict(batches=1, per_core_m=1, per_core_n=2, in0_block_w=1, out_subblock_h=1, out_subblock_w=2),
}


@pytest.mark.parametrize("shared", [True, False], ids=["shared-in1", "per-batch-in1"])
@pytest.mark.parametrize("name", sorted(BLOCKINGS))
def test_the_multicast_plan_matches_the_unicast_bits_and_its_planned_counts(shared: bool, name: str) -> None:
    blocking = BLOCKINGS[name]
    results = {}
    for mcast in (False, True):
        module, planned = forced(product(shared), blocking, mcast)
        assert has_multicast(module) == mcast
        assert [p.counts for p in static_profile(module, device_weights(module))] == [planned]
        for emulator in ("native", "reference"):
            with using_emulator(emulator):
                executor = Executor(module, device_weights(module))
                results[mcast, emulator] = executor.run(feeds(shared))["y"]
                assert [p.counts for p in executor.profile] == [planned], (mcast, emulator)
    want = results[False, "reference"]
    assert np.abs(want).max() > 1  # a real product, not zeros
    for key, got in results.items():
        assert np.array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32)), key


def test_a_per_batch_in1_goes_down_its_batch_groups_rows_only() -> None:
    """One grid column, a row per batch and M block: a per-batch in1 goes from each batch's first row to its second
    (fan-out 1, three senders); a shared in1 from the top core down all six rows (fan-out 5, one sender)."""
    blocking = BLOCKINGS["one-column"]
    for shared, fanout, senders in ((False, 1, 3), (True, 5, 1)):
        module, planned = forced(product(shared), blocking, True)
        assert planned.mcast_fanout == fanout
        program = next(op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name)
        reader_args = program.attributes["runtime_args"][0]
        assert sum(core[MCAST_ARGS + 5] for core in reader_args) == senders  # in1 senders


def test_the_grid_pass_multicasts_a_batched_linear_layer() -> None:
    """A ViT-like batched linear layer (197 rows per image do not merge into one matrix): the weights go down the
    columns instead of being read by every grid row; faster and less DRAM than without multicast."""
    g = product(True, batch=8, m=197, k=256, n=1024)
    chosen = the_matmul(compile_text(g.text(), dict(g.weights), "layout,grid"))
    unicast = the_matmul(compile_text(g.text(), dict(g.weights), "layout,grid{multicast=false}"))
    assert chosen.attributes["tt.blocking"].get(MCAST) == 1
    assert matmul_shape(chosen).batches == 8
    assert chosen.attributes["tt.cost"]["cycles"] < unicast.attributes["tt.cost"]["cycles"]
    costs = [plan_counts(op, op_kind(op), E150, op.attributes["tt.grid"], op.attributes["tt.blocking"], "hifi4")
             for op in (chosen, unicast)]
    assert costs[0].dram_read < costs[1].dram_read / 2


@pytest.mark.parametrize("emulator", ["native", "reference"])
@pytest.mark.parametrize("shared, which, semaphore", [(True, 0, 0), (True, 1, 2), (False, 1, 2)],
                         ids=["in0", "shared-in1", "per-batch-in1"])
def test_a_missing_ready_increment_is_a_deadlock(emulator: str, shared: bool, which: int, semaphore: int) -> None:
    """The reader's `which`-th semaphore_inc (0: in0's, 1: in1's) deleted: the sender waits forever."""
    module, _ = forced(product(shared), BLOCKINGS["batches-per-core"], True)
    program = next(op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name)
    [op for op in program.walk() if op.name == ttkernel.SEMAPHORE_INC.name][which].erase()
    with using_emulator(emulator), pytest.raises(DeviceFault, match=(
            rf"deadlock: no kernel on any core can make progress\n  reader kernel on core \(0,0\): "
            rf"ttkernel.semaphore_wait waits for semaphore {semaphore} to reach \d+ \(it holds 0\)")):
        Executor(module, device_weights(module)).run(feeds(shared))
