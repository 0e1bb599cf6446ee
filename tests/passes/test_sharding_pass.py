"""grid: the memory layout of matmul results (interleaved, L1 height-sharded, L1 block-sharded), chosen with
the cost model and checked against L1; the choice and its reason are printed on the op and in the result type.

The inputs are two chained `ttir.linear`s in the form `layout,grid` receive (device tensors in DRAM, the
first result an intermediate read only by the second)."""

from __future__ import annotations

import dataclasses
import io
import re
from typing import TYPE_CHECKING

import numpy as np
import pytest

import ttc.passes.grid as grid_pass
from ttc.ir import UserError
from ttc.ir.dialects.tt import E150
from ttc.ir.target import Cost
from ttc.passes import PassManager
from ttc.passes.ops import matmul

if TYPE_CHECKING:
    from conftest import IRHarness

LINEAR = 'activation = "none", transpose_b = false'


def dev(m: int, n: int, layout: str = "dram, interleaved") -> str:
    return f"tensor<{m}x{n}xbf16, #tt.layout<tile, {layout}>>"


def chain(ir: IRHarness, m: int, k: int, n: int, n2: int = 32,
          first_layout: str = "dram, interleaved") -> tuple[str, dict[str, np.ndarray]]:
    """x [m, k] @ w1 [k, n] -> y (intermediate, `first_layout`) @ w2 [n, n2] -> the result."""
    text = ir.module(
        f"%arg0: tensor<{m}x{k}xf32>", f"tensor<{m}x{n2}xf32>",
        f'%0 = "ttir.to_layout"(%arg0) : (tensor<{m}x{k}xf32>) -> {dev(m, k)} loc("x")',
        f'%1 = "ttir.constant"() {{value = #tt.weight<"w1">}} : () -> {dev(k, n)} loc("w1")',
        f'%2 = "ttir.linear"(%0, %1) {{{LINEAR}}} : ({dev(m, k)}, {dev(k, n)}) -> {dev(m, n, first_layout)} '
        'loc("mm1")',
        f'%3 = "ttir.constant"() {{value = #tt.weight<"w2">}} : () -> {dev(n, n2)} loc("w2")',
        f'%4 = "ttir.linear"(%2, %3) {{{LINEAR}}} : ({dev(m, n, first_layout)}, {dev(n, n2)}) -> {dev(m, n2)} '
        'loc("mm2")',
        f'%5 = "ttir.to_layout"(%4) : ({dev(m, n2)}) -> tensor<{m}x{n2}xf32> loc("y")',
        f'func.return %5 : tensor<{m}x{n2}xf32> loc("ret")')
    weights = {"w1": np.zeros((k, n), np.float32), "w2": np.zeros((n, n2), np.float32)}
    return text, weights


def linear_line(out: str, loc: str) -> str:
    return next(line for line in out.splitlines() if '"ttir.linear"' in line and f'loc("{loc}")' in line)


def sharded_result(line: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """(memory layout, grid, shard) of the op's result type."""
    found = re.search(r"-> tensor<[^,]+, #tt.layout<tile, l1, (\w+), grid = (\d+)x(\d+), shard = (\d+)x(\d+)>>",
                      line)
    assert found, line
    return found[1], (int(found[2]), int(found[3])), (int(found[4]), int(found[5]))


def test_tall_narrow_result_is_height_sharded(ir: IRHarness) -> None:
    """A tall, narrow result: 98 x 2 tiles. Each core owns a band of full-width rows. (Unicast plans only: the
    multicast plan on a 2 x 7 grid is modelled faster still, interleaved; and K = 512: at K = 64 the product is
    DRAM-bound on 10 cores, cheaper interleaved than on the shard grid's many cores; the rule tested is the
    sharding.)"""
    out = ir.run_body("layout,grid{multicast=false}", *chain(ir, 3136, 512, 64))
    line = linear_line(out, "mm1")
    ir.check(line, 'tt.sharding = {layout = "height_sharded", reason = "height_sharded: M 98 >= 4 x N 2 tiles; ')
    memory_layout, grid, shard = sharded_result(line)
    cores = grid[0] * grid[1]
    assert memory_layout == "height_sharded" and shard[1] == 2 and shard[0] * cores == 98
    assert f"tt.grid = #tt.grid<{grid[0]}x{grid[1]}>" in line  # the program's grid is the shard grid
    assert re.search(rf"{cores} cores own {shard[0]}x2 tile shards; \d+ cycles \(NoC \d+\) vs .*interleaved \d+",
                     line), line
    # the consumer reads the sharded activation
    assert f"height_sharded, grid = {grid[0]}x{grid[1]}" in linear_line(out, "mm2").split("->")[0]


def test_large_result_is_block_sharded_on_a_2d_grid(ir: IRHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Among the exact N and M splits (a ragged one, 11 columns of 3 tiles, or an overlapping one filling the grid,
    11 blocks of 3 tiles on the transposed multicast grid, is cheaper here but cannot be block sharded)."""
    monkeypatch.setattr(matmul, "GRID_COLUMNS", 1)
    monkeypatch.setattr(matmul, "MAX_OVERLAP_BLOCKS", 1)
    monkeypatch.setattr(matmul, "GRID_FILLS", ())
    out = ir.run_body("layout,grid", *chain(ir, 1024, 1024, 1024, 256))
    line = linear_line(out, "mm1")
    ir.check(line, 'tt.sharding = {layout = "block_sharded", reason = "block_sharded: M 32 and N 32 tiles both >= 8')
    memory_layout, grid, shard = sharded_result(line)
    blocking = re.search(r"per_core_m = (\d+), per_core_n = (\d+)", line)
    assert blocking
    assert memory_layout == "block_sharded" and grid[0] > 1 and grid[1] > 1
    assert shard == (int(blocking[1]), int(blocking[2]))  # each core owns its M-block x N-block
    assert grid[0] * shard[1] == 32 and grid[1] * shard[0] == 32  # N blocks along x, M blocks along y
    assert f"tt.grid = #tt.grid<{grid[0]}x{grid[1]}>" in line


@pytest.mark.parametrize(("m", "n", "reason"), [
    (64, 3072, "interleaved: M 2 tiles < 8: too few rows to shard"),  # a decoder at batch 1
    (128, 768, "interleaved: M 4 tiles < 8: too few rows to shard"),
    (256, 128, "interleaved: M 8 tiles < 4 x N 4 tiles (not tall) and N < 8 tiles (not wide)"),
])
def test_short_or_square_small_results_stay_interleaved(ir: IRHarness, m: int, n: int, reason: str) -> None:
    out = ir.run_body("layout,grid", *chain(ir, m, 64, n))
    line = linear_line(out, "mm1")
    ir.check(line, f'tt.sharding = {{layout = "interleaved", reason = "{reason}"}}')
    assert "_sharded" not in line


def test_result_read_by_the_host_stays_interleaved(ir: IRHarness) -> None:
    line = linear_line(ir.run_body("layout,grid", *chain(ir, 3136, 64, 64)), "mm2")
    assert 'tt.sharding = {layout = "interleaved", reason = "interleaved: the result is read by the host"}' in line
    assert line.endswith('-> tensor<3136x32xbf16, #tt.layout<tile, dram, interleaved>> loc("mm2")')


def test_the_cost_model_decides_between_eligible_layouts(ir: IRHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sharding is a candidate by rule, chosen by cost: a model that charges sharded results more flips it."""
    estimate = grid_pass.estimate

    def sharding_costs_more(op, kind, device, grid, blocking, fidelity, result_layout=None, weights=None) -> Cost:
        cost = estimate(op, kind, device, grid, blocking, fidelity, result_layout, weights)
        extra = 1e6 if result_layout is not None else 0.0
        return Cost(cost.compute, cost.dram, cost.noc, cost.launch + extra)

    monkeypatch.setattr(grid_pass, "estimate", sharding_costs_more)
    line = linear_line(ir.run_body("layout,grid", *chain(ir, 3136, 64, 64)), "mm1")
    assert re.search(r'reason = "interleaved: \d+ cycles \(NoC \d+\), cheaper than height_sharded \d+', line), line
    assert "_sharded" not in line.split("->")[-1]


def test_a_shard_too_large_for_l1_falls_back_to_interleaved(ir: IRHarness) -> None:
    """128 x 8 tiles on at most 4 cores: a shard of 512 KiB or more per core is not tried."""
    out = ir.run_body("layout,grid{max-cores=4}", *chain(ir, 4096, 64, 256))
    line = linear_line(out, "mm1")
    assert 'reason = "interleaved: ' in line
    assert "no height_sharded candidate fits L1 (best: a shard of 524288 bytes per core is above 350054 (40% of " \
           "free L1))" in line
    assert "_sharded" not in line.split("->")[-1]
    # with more cores the shards are small enough
    line = linear_line(ir.run_body("layout,grid{max-cores=8}", *chain(ir, 4096, 64, 256)), "mm1")
    assert sharded_result(line)[2] == (16, 8)


def test_l1_interleaved_fallback_stays_in_dram_when_layout_put_it_there(ir: IRHarness) -> None:
    out = ir.run_body("layout{l1-intermediates=false},grid{max-cores=4}", *chain(ir, 4096, 64, 256))
    assert linear_line(out, "mm1").endswith('-> tensor<4096x256xbf16, #tt.layout<tile, dram, interleaved>> loc("mm1")')


def test_a_given_sharded_layout_is_kept(ir: IRHarness) -> None:
    given = "l1, height_sharded, grid = 7x1, shard = 14x2"
    line = linear_line(ir.run_body("grid", *chain(ir, 3136, 64, 64, first_layout=given)), "mm1")
    assert "tt.grid = #tt.grid<7x1>" in line and "per_core_m = 14, per_core_n = 2" in line
    assert sharded_result(line) == ("height_sharded", (7, 1), (14, 2))
    assert 'reason = "height_sharded: given in the input IR; 7 cores own 14x2 tile shards; ' in line


def test_a_given_shard_that_cannot_fit_names_the_node_and_core(ir: IRHarness) -> None:
    """98 x 16 tiles on 2 cores: 49 x 16 tiles = 1605632 bytes per core, more than a core's L1."""
    given = "l1, height_sharded, grid = 2x1, shard = 49x16"
    with pytest.raises(UserError, match=r'node "mm1": the height_sharded result tensor<3136x512xbf16, .*> does not '
                                        r"fit in L1 on e150: its shard takes 1605632 bytes on core \(0,0\) and each "
                                        r"other core of grid 2x1, \d+ bytes per core .* the budget is 875136 bytes"):
        ir.run("grid", *chain(ir, 3136, 64, 512, first_layout=given))


def test_allocate_names_the_node_and_core_when_a_shard_does_not_fit(ir: IRHarness) -> None:
    """The shards chosen for an e150 (unicast plans, as above) allocated on a device with 4 KiB of free L1 per
    core."""
    module = ir.run("layout,grid{multicast=false},lower-to-kernels", *chain(ir, 3136, 512, 64))
    module.attributes["tt.device"] = dataclasses.replace(E150, l1_size=E150.l1_reserved + 4096)
    with pytest.raises(UserError, match=r'node "mm1": L1 is full on core \(0,0\) \(and each of the \d+ cores of grid '
                                        r"\d+x\d+ holding the height_sharded buffer tensor<3136x64xbf16, .*>\): a shard "
                                        r"of \d+x2 tiles needs \d+ bytes, the largest free range is 4096 bytes"):
        PassManager("allocate", stream=io.StringIO()).run(module)


def test_a_sharded_layout_without_its_shard_shape_is_a_user_error(ir: IRHarness) -> None:
    with pytest.raises(UserError, match=r"a sharded tensor lives in L1 in tile layout with a grid and a shard shape"):
        ir.run("grid", *chain(ir, 3136, 64, 64, first_layout="l1, height_sharded"))


def test_an_l1_result_no_blocking_fits_beside_spills_to_dram(ir: IRHarness) -> None:
    """An intermediate placed in L1 (as `layout` may, from a heap the grid's own decisions change) that leaves
    its op no room: the grid pass moves it to DRAM and picks a blocking, instead of refusing (here its
    [8192, 8192] share alone is more than a core's L1)."""
    out = ir.run_body("grid", *chain(ir, 8192, 32, 8192, first_layout="l1, interleaved"))
    first, second = linear_line(out, "mm1"), linear_line(out, "mm2")
    assert f"-> {dev(8192, 8192)}" in first, first
    assert f"({dev(8192, 8192)}, " in second, second
    assert "tt.grid" in first and "tt.grid" in second


def test_a_matmul_no_blocking_fits_goes_in_column_pieces(ir: IRHarness) -> None:
    """On one core (max-cores=1) the [1024, 512] product of a 1024-long K keeps its whole 512-tile block in L1
    (the running total of its accumulation chunks: 1 MB): the grid pass splits the weight into column pieces
    (4 of 128 columns, a 256 KB total each), one product per piece, joined by a concat, instead of refusing."""
    out = ir.run_body("grid{max-cores=1}", *chain(ir, 1024, 1024, 512))
    pieces = [line for line in out.splitlines() if '"ttir.linear"' in line and "-> tensor<1024x128xbf16" in line]
    assert len(pieces) == 4 and all("tt.grid" in line for line in pieces), out
    joined = next(line for line in out.splitlines() if '"ttir.concat"' in line)
    assert "-> tensor<1024x512xbf16" in joined and "tt.grid" in joined, joined
    ir.check(out, '"ttir.concat"', 'loc("mm2")')
