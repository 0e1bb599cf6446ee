"""grid: core grids and blockings from the cost model, within the device and L1; the model agrees
with the emulator's cycle count; an op that cannot fit is a UserError naming its node."""

from __future__ import annotations

import re

import numpy as np
import pytest
from backend_helpers import Graph, body_text, compile_graph, device_weights

from ttc.ir import Operation, UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import E75, E150, DeviceAttr
from ttc.passes.cost_model import plan_counts
from ttc.passes.ops.geometry import HALF_DST, module_device
from ttc.passes.ops.matmul import matmul_shape
from ttc.passes.ops.registry import l1_footprint, op_kind
from ttc.runtime.executor import Executor

PIPELINE = "layout,grid"


def matmul(m: int, k: int, n: int, batch: tuple[int, ...] = ()) -> Graph:
    g = Graph()
    x = g.input("x", (*batch, m, k))
    y = g.op("ttir.linear", [x, g.weight("w", np.zeros((k, n)))], (*batch, m, n),
             'activation = "none", transpose_b = false', loc="mm")
    g.output(y, "y")
    return g


def device_ops(module) -> list[Operation]:
    return [op for op in module.function().body.ops if op_kind(op) and "tt.grid" in op.attributes]


def test_attributes_are_recorded() -> None:
    out = body_text(compile_graph(matmul(64, 96, 128), pipeline=PIPELINE + "{math-fidelity=hifi2}"))
    line = next(line for line in out.splitlines() if '"ttir.linear"' in line)
    assert re.search(r'\{activation = "none", transpose_b = false, tt.blocking = \{batches = 1, per_core_m = \d+, '
                     r'per_core_n = \d+, in0_block_w = \d+, out_subblock_h = \d+, out_subblock_w = \d+(, mcast = 1)?\}, '
                     r'tt.cost = \{cycles = \d+, bound = "(compute|dram|noc)"\}, tt.grid = #tt.grid<\d+x\d+>, '
                     r'tt.math_fidelity = "hifi2", tt.sharding = \{layout = "interleaved", reason = "interleaved: [^"]+"\}\}',
                     line), line


def test_large_matmul_uses_many_cores_small_ones_fewer() -> None:
    large = device_ops(compile_graph(matmul(1024, 1024, 1024), pipeline=PIPELINE))[0]
    small = device_ops(compile_graph(matmul(32, 64, 64), pipeline=PIPELINE))[0]
    tiny = device_ops(compile_graph(matmul(8, 8, 8), pipeline=PIPELINE))[0]
    assert large.attributes["tt.grid"].num_cores > 8
    assert large.attributes["tt.grid"].num_cores > small.attributes["tt.grid"].num_cores
    assert tiny.attributes["tt.grid"].num_cores == 1
    assert large.attributes["tt.cost"]["bound"] in ("compute", "dram")  # not NoC latency or launch


def blocking_is_exact(op: Operation) -> None:
    """The blocking covers the work with one unit per core (blocks divide K and their subblocks exactly; M and N
    blocks may overhang); subblocks fit half of Dst."""
    b, grid = op.attributes["tt.blocking"], op.attributes["tt.grid"]
    if op.name != "ttir.linear":
        return
    shape = matmul_shape(op)
    assert shape.kt % b["in0_block_w"] == 0
    assert b["out_subblock_h"] * b["out_subblock_w"] <= HALF_DST
    assert b["per_core_m"] % b["out_subblock_h"] == 0 and b["per_core_n"] % b["out_subblock_w"] == 0
    # M and N blocks may be rounded up (an overlapping M split, a ragged N edge); a 1-D multicast plan's grid may
    # hold more cores than units (the extra ones repeat the last unit)
    units = (shape.batches // b["batches"]) * -(-shape.mt // b["per_core_m"]) * -(-shape.nt // b["per_core_n"])
    assert units == grid.num_cores or (b.get("mcast", 0) in (2, 3) and units < grid.num_cores)
    assert shape.batches % b["batches"] == 0
    assert b["per_core_m"] <= shape.mt and b["per_core_n"] <= shape.nt


@pytest.mark.parametrize("device", [E150, E75], ids=["e150", "e75"])
@pytest.mark.parametrize(("m", "k", "n", "batch"), [(1024, 512, 1536, ()), (96, 64, 4096, ()), (4096, 64, 32, ()),
                                                    (128, 64, 128, (12,)), (50, 70, 17, (3, 5))])
def test_grids_never_exceed_the_compute_grid(device: DeviceAttr, m: int, k: int, n: int, batch) -> None:
    module = compile_graph(matmul(m, k, n, batch), pipeline=PIPELINE, device=device)
    gx, gy = device.compute_grid
    for op in device_ops(module):
        grid = op.attributes["tt.grid"]
        assert grid.x <= gx and grid.y <= gy
        blocking_is_exact(op)


def test_max_cores_limits_the_grid() -> None:
    module = compile_graph(matmul(1024, 1024, 1024), pipeline="layout,grid{max-cores=4}")
    assert device_ops(module)[0].attributes["tt.grid"].num_cores <= 4


def test_chosen_blocking_fits_l1() -> None:
    module = compile_graph(matmul(2048, 2048, 2048), pipeline=PIPELINE)
    op = device_ops(module)[0]
    assert l1_footprint(op, module_device(module), op.attributes["tt.blocking"]) <= E150.l1_free


def test_op_that_cannot_fit_names_its_node_and_the_budget() -> None:
    """Softmax and layer norm rows of any length fit (row-chunked), so the misfit is asked of the grid pass's
    choice directly, with a budget below the smallest footprint of any blocking."""
    from ttc.passes.grid import choose

    g = Graph()
    g.output(g.op("ttir.softmax", [g.input("x", (32, 200000))], (32, 200000), "axis = -1", loc="/too/wide"), "y")
    module = compile_graph(g, pipeline="layout")
    [op] = [op for op in module.function().body.ops if op.name == ttir.SOFTMAX.name]
    with pytest.raises(UserError) as error:
        choose(op, module_device(module), 4096, "hifi4")
    message = str(error.value)
    assert message.startswith('node "/too/wide": \'ttir.softmax\' does not fit in L1 on e150: its smallest '
                              "footprint over all grids and blockings is ")
    assert "bytes per core (circular buffers + L1 tensors), the budget is 4096 bytes" in message
    assert "try layout{l1-intermediates=false}" in message


def test_unknown_fidelity_is_a_user_error() -> None:
    with pytest.raises(UserError, match="grid: unknown math fidelity 'hifi5'"):
        compile_graph(matmul(32, 32, 32), pipeline="layout,grid{math-fidelity=hifi5}")


@pytest.mark.parametrize("fidelity", ["lofi", "hifi4"])
def test_cost_model_compute_matches_the_emulator(fidelity: str) -> None:
    """The planned counts are what the emulator counts for the generated kernels, and the cycles the grid pass
    recorded are the profile's."""
    g = Graph()
    x = g.input("x", (70, 200))
    w = g.weight("w", np.ones((200, 96), np.float32) * 0.01)
    y = g.op("ttir.linear", [x, w, g.weight("b", np.ones(96, np.float32))], (70, 96),
             'activation = "sigmoid", transpose_b = false', loc="fc")
    d = "tensor<70x96xf32, #tt.layout<tile, dram, interleaved>>"
    body = [f'%0 = "ttir.exp"(%b0) : ({d}) -> {d} loc("e")',
            f'%1 = "ttir.mul"(%0, %b0) : ({d}, {d}) -> {d} loc("m")', f'"ttir.yield"(%1) : ({d}) -> () loc("m")']
    g.output(g.op("ttir.eltwise", [y], (70, 96), loc="ew", body=body), "z")
    pipeline = f"layout,grid{{math-fidelity={fidelity} max-cores=3}}"
    gridded = compile_graph(g, pipeline=pipeline)
    planned = [plan_counts(op, op_kind(op), E150, op.attributes["tt.grid"], op.attributes["tt.blocking"], fidelity)
               for op in device_ops(gridded)]
    recorded = [op.attributes["tt.cost"]["cycles"] for op in device_ops(gridded)]
    module = compile_graph(g, pipeline=pipeline + ",lower-to-kernels,allocate")
    executor = Executor(module, device_weights(module))
    executor.run({"x": np.zeros((70, 200), np.float32)})
    assert [p.counts for p in executor.profile] == planned
    assert [round(p.cycles) for p in executor.profile] == recorded


def test_softmax_along_another_axis_is_a_user_error() -> None:
    g = Graph()
    g.output(g.op("ttir.softmax", [g.input("x", (64, 32))], (64, 32), "axis = 0", loc="sm0"), "y")
    with pytest.raises(UserError, match=r'node "sm0": \'ttir.softmax\' along axis 0 of a rank-2 tensor'):
        compile_graph(g, pipeline=PIPELINE)


def test_eltwise_body_the_kernel_cannot_run_is_a_user_error() -> None:
    d = "tensor<8x8xf32, #tt.layout<tile, dram, interleaved>>"
    body = ['%c = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("two")',
            f'%0 = "ttir.div"(%c, %b0) : (tensor<f32>, {d}) -> {d} loc("/div/Div")',
            f'"ttir.yield"(%0) : ({d}) -> () loc("/div/Div")']
    g = Graph()
    g.output(g.op("ttir.eltwise", [g.input("x", (8, 8))], (8, 8), loc="/div/Div", body=body), "y")
    with pytest.raises(UserError, match=r'node "/div/Div": \'ttir.div\' with a scalar base cannot run in a fused '
                                        "elementwise kernel"):
        compile_graph(g, pipeline=PIPELINE)
