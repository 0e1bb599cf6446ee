"""lower-to-kernels: the host schedule, the programs' kernels, CBs and runtime args, gathers and their
index tables, and the errors for what the device cannot do."""

from __future__ import annotations

import numpy as np
import pytest
from backend_helpers import Graph, body_text, check, compile_graph, dev, programs

from ttc.ir import UserError, parse_module, print_module
from ttc.ir.core import Operation
from ttc.passes.ops.geometry import CB_TOTAL, cb_bytes, l1_share, module_device, tensor
from ttc.passes.ops.registry import l1_footprint, op_kind

LOWER = "layout,grid,lower-to-kernels"


def mlp_then_heads() -> Graph:
    """linear(relu) -> reshape [40, 2, 32] -> transpose (1, 0, 2): the reshape folds into the gather."""
    g = Graph()
    x = g.input("x", (40, 64))
    h = g.op("ttir.linear", [x, g.weight("w", np.ones((64, 64)))], (40, 64), 'activation = "relu", transpose_b = false',
             loc="fc")
    split = g.op("ttir.reshape", [h], (40, 2, 32), loc="split")
    g.output(g.op("ttir.transpose", [split], (2, 40, 32), "perm = [1, 0, 2]", loc="heads"), "y")
    return g


def kernel_ops(program: Operation, index: int) -> list[str]:
    return [op.name for op in program.regions[index].blocks[0].ops for op in op.walk()]


def test_host_schedule() -> None:
    module = compile_graph(mlp_then_heads(), pipeline=LOWER)
    out = "\n".join(line for line in body_text(module).splitlines() if "ttkernel" not in line and line not in "}{")
    check(out,
          '%0 = "ttmetal.create_buffer"() : () -> tensor<40x64xbf16, #tt.layout<tile, dram, interleaved>> loc("x")',
          '"ttmetal.write_buffer"(%arg0, %0) : (tensor<40x64xf32>, ',
          '%1 = "ttmetal.create_buffer"() : () -> tensor<64x64xbf16, #tt.layout<tile, dram, interleaved>> loc("w")',
          '"ttmetal.write_constant"(%1) {value = #tt.weight<"w">}',
          '%2 = "ttmetal.create_buffer"() : () -> tensor<40x64xbf16, #tt.layout<tile, l1, interleaved>> loc("fc")',
          '// program 0: fc (matmul, grid 2x2)',
          '"ttmetal.enqueue_program"(%0, %1, %2) {',
          'grid = #tt.grid<2x2>,', 'kind = "matmul",', 'runtime_args = [', '// reader, per core',
          '// compute, per core', '// writer, per core', '} ({', '^reader:', '^compute:', '^writer:',
          '"ttmetal.deallocate"(%0)', '"ttmetal.deallocate"(%1)',
          '"ttmetal.create_buffer"() : () -> tensor<4x8xi32, #tt.layout<row_major, dram, interleaved>> loc("heads")',
          '"ttmetal.write_constant"(%23) {value = #tt.weight<"heads.tile_index">}',
          '%24 = "ttmetal.create_buffer"() : () -> tensor<2x40x32xbf16, #tt.layout<tile, dram, interleaved>>',
          '// program 1: heads (+1) (data_movement, grid 4x1)',
          '"ttmetal.enqueue_program"(%2, %23, %24) {', 'kind = "data_movement",',
          '[[0], [1], [2], [3]],  // reader, per core', '[[], [], [], []],  // compute, per core',
          '[[0], [1], [2], [3]]  // writer, per core',
          '}) : (tensor<40x64xbf16, #tt.layout<tile, l1, interleaved>>, tensor<4x8xi32, #tt.layout<row_major, dram, '
          'interleaved>>, tensor<2x40x32xbf16, #tt.layout<tile, dram, interleaved>>) -> () loc(fused["split", "heads"])',
          '"ttmetal.deallocate"(%2)', '"ttmetal.deallocate"(%23)',
          '%33 = "ttmetal.read_buffer"(%24)', '"ttmetal.deallocate"(%24)', "func.return %33")
    text = print_module(module)
    assert print_module(parse_module(text, "lowered.mlir", module.weights)) == text


def test_index_table_names_the_source_tile_of_each_output_tile() -> None:
    module = compile_graph(mlp_then_heads(), pipeline=LOWER)
    table = module.weights["heads.tile_index"]
    # output tiles (head, row tile): (0, 0) (0, 1) (1, 0) (1, 1) <- input tiles (row tile, head) = 0, 2, 1, 3
    np.testing.assert_array_equal(table[:, 0], [0, 2, 1, 3])
    assert table.dtype == np.int32 and not table[:, 1:].any()


def test_transposed_gather_flags_tiles_and_transposes_in_compute() -> None:
    g = Graph()
    g.output(g.op("ttir.transpose", [g.input("x", (64, 96))], (96, 64), "perm = [1, 0]", loc="t"), "y")
    module = compile_graph(g, pipeline=LOWER)
    table = next(w for name, w in module.weights.items() if name.endswith("tile_index"))
    assert sorted(-1 - table[table < 0]) == list(range(6))  # every entry flagged (-1 - i); zeros pad a row
    (program,) = programs(module)
    assert "ttkernel.transpose_tiles" in kernel_ops(program, 1)
    assert "ttkernel.noc_read_tiles_indexed" in kernel_ops(program, 0)


def test_kernel_text_does_not_grow_with_the_tensor() -> None:
    def ops_for(shape: tuple[int, int]) -> list[int]:
        g = Graph()
        d = dev(shape)
        body = [f'%0 = "ttir.exp"(%b0) : ({d}) -> {d} loc("e")', f'"ttir.yield"(%0) : ({d}) -> () loc("e")']
        g.output(g.op("ttir.eltwise", [g.input("x", shape)], shape, loc="e", body=body), "y")
        (program,) = programs(compile_graph(g, pipeline=LOWER))
        return [len(list(region.blocks[0].ops)) for region in program.regions]

    small, large = ops_for((64, 64)), ops_for((2048, 4096))
    assert max(large) <= max(small) + 12


def test_a_binary_sfpu_phase_runs_its_block_in_rounds_of_half_a_dst_acquire() -> None:
    """pow of two [64, 256] tensors with blocks of 8 tiles: both operands fill Dst, so each block is two
    rounds of 4 tiles (copy a to slots 0..3, b to 4..7, pow), each packed on its own."""
    g = Graph()
    d = dev((64, 256))
    body = [f'%0 = "ttir.pow"(%b0, %b1) : ({d}, {d}) -> {d} loc("pow")', f'"ttir.yield"(%0) : ({d}) -> () loc("pow")']
    g.output(g.op("ttir.eltwise", [g.input("x", (64, 256)), g.input("y", (64, 256))], (64, 256), loc="pow",
                  body=body), "z")
    module = compile_graph(g, pipeline="layout,grid{max-cores=1},lower-to-kernels")
    (program,) = programs(module)
    compute = [op for top in program.regions[1].blocks[0].ops for op in top.walk()]
    powers = [op for op in compute if op.name == "ttkernel.sfpu_binary_tiles"]
    assert [(op.attr("fn"), op.attr("dst"), op.attr("dst_b"), op.attr("count")) for op in powers] == \
        [("pow", 0, 4, 4)] * 2
    copies = [(op.attr("cb"), op.attr("offset"), op.attr("dst")) for op in compute if op.name == "ttkernel.copy_tiles"]
    assert copies == [(0, 0, 0), (1, 0, 4), (0, 4, 0), (1, 4, 4)]
    assert [op.attr("count") for op in compute if op.name == "ttkernel.pack_tiles"] == [4, 4]


def test_matmul_kernels_loop_over_k_and_subblocks() -> None:
    g = Graph()
    g.output(g.op("ttir.linear", [g.input("x", (64, 8192)), g.weight("w", np.zeros((8192, 256)))], (64, 256),
                  'activation = "none", transpose_b = false', loc="mm"), "y")
    module = compile_graph(g, pipeline="layout,grid{max-cores=1},lower-to-kernels")
    (program,) = programs(module)
    compute = kernel_ops(program, 1)
    assert compute.count("ttkernel.matmul_tiles") <= 9  # first, middle and last K step of first/middle/last chunk
    assert "ttkernel.for" in compute
    adds = [op for top in program.regions[1].blocks[0].ops for op in top.walk() if op.name == "ttkernel.binary_tiles"]
    assert adds and all(op.attributes["cb_a"] == CB_TOTAL for op in adds)  # K = 8192 is summed in chunks
    assert {"ttkernel.noc_read_tiles", "ttkernel.noc_read_barrier"} <= set(kernel_ops(program, 0))
    assert program.attributes["runtime_args"] == (((0, 0, 0),), ((0, 0),), ((0,),))


def test_emitted_cbs_are_the_footprint() -> None:
    """Per program: the CB configs sum (aligned) to footprint's CB plan, plus the L1 tensors' shares."""
    g = mlp_then_heads()
    gridded = compile_graph(g, pipeline="layout,grid")
    device = module_device(gridded)
    ops = [op for op in gridded.function().body.ops if op_kind(op) and "tt.grid" in op.attributes]
    expected = [l1_footprint(op, device, op.attributes["tt.blocking"]) for op in ops]
    lowered = compile_graph(g, pipeline=LOWER)
    got = [cb_bytes(p.attributes["cbs"]) + sum(l1_share(tensor(v), device) for v in p.operands)
           for p in programs(lowered)]
    assert got == expected


def test_not_tile_granular_reshape_is_a_user_error() -> None:
    g = Graph()
    g.output(g.op("ttir.reshape", [g.input("x", (40, 64))], (64, 40), loc="/model/Reshape"), "y")
    with pytest.raises(UserError, match=r'node "/model/Reshape": reshape to \[64, 40\] from \[40, 64\] is not a '
                                        r"tile-granular data movement \(an output tile takes data from several "
                                        r"input tiles\)"):
        compile_graph(g, pipeline=LOWER)


def test_program_without_grid_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r'node "fc": \'ttir.linear\' has no tt.grid \(run the grid pass first\)'):
        compile_graph(mlp_then_heads(), pipeline="layout,lower-to-kernels")
