"""Kernel programs written by hand, run on the emulated device and compared bit for bit with the
numerics model: eltwise, broadcast, matmul (K blocking, grids, fidelity), SFPU, reduce, transpose,
mask, indexed gather, per-core runtime arguments, and mutations of the programs."""

from collections.abc import Iterator

import numpy as np
import pytest
from runtime_helpers import (
    ProgramSpec,
    Tensor,
    addrgen,
    cb,
    core_args,
    eltwise_program,
    kop,
    matmul_program,
    replace,
    run,
    without,
)

from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialects.tt import E150
from ttc.runtime import numerics as N
from ttc.runtime.executor import using_emulator
from ttc.runtime.formats import tilize, untilize

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True, params=["interpreter", "native", "compared"])
def emulator(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on both emulators: the interpreter and the native core (runtime/native_program.py);
    "compared" runs each program on both and checks that every DRAM and L1 byte, profile and fault agree."""
    if request.param == "native":
        with using_emulator("native"):
            yield request.param
    elif request.param == "compared":
        from test_native_program import dual_programs

        with dual_programs():
            yield request.param
    else:
        with using_emulator("reference"):
            yield request.param


def bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def assert_bits_equal(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_array_equal(bits(got), bits(want))


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run_eltwise(program: ProgramSpec, a: np.ndarray, b: np.ndarray, fmt: str = "bf16"):
    ta, tb, tc = (Tensor(n, a.shape, fmt) for n in "abc")
    out, executor = run({"a": (ta, a), "b": (tb, b)}, [tc], program)
    return out["c"], executor


# --- (a) eltwise --------------------------------------------------------------------------------


def test_eltwise_add_on_3x2_grid_is_bit_exact() -> None:
    a, b = rand(64, 96), rand(64, 96)
    out, executor = run_eltwise(eltwise_program((3, 2)), a, b)
    assert out.dtype == np.float32 and out.shape == (64, 96)
    assert_bits_equal(out, N.eltwise_binary(N.bf16_round(a), N.bf16_round(b), "add"))
    [profile] = executor.profile
    assert (profile.kind, profile.nodes, profile.cores) == ("eltwise", ("add_1",), 6)
    assert profile.compute_cycles == E150.tile_op_cycles["add"]
    assert profile.noc_bytes == 3 * 2048 and profile.dram_bytes == 6 * 3 * 2048
    assert profile.counts.tiles == (("add", 1),) and profile.counts.dram_written == 6 * 2048
    assert profile.cycles == max(profile.compute_cycles, profile.dram_cycles, profile.noc_cycles) \
        + E150.launch_cycles + 6 * E150.launch_cycles_per_core
    assert profile.bound in ("compute", "dram", "noc")


@pytest.mark.parametrize("op", ["sub", "mul"])
def test_eltwise_loop_over_tiles_with_bfp8_operands(op: str) -> None:
    a, b = rand(64, 128), rand(64, 128)  # 8 tiles, 2 cores x 4 tiles
    out, executor = run_eltwise(eltwise_program((2, 1), per_core=4, op=op, fmt="bfp8_b"), a, b, fmt="bfp8_b")
    qa, qb = (N.bf16_round(untilize(_quantize_tiles(x, "bfp8_b"))) for x in (a, b))
    want = untilize(_quantize_tiles(N.eltwise_binary(qa, qb, op), "bfp8_b"))
    assert_bits_equal(out, want)
    assert executor.profile[0].compute_cycles == 4 * E150.tile_op_cycles[op]


def _quantize_tiles(x: np.ndarray, fmt: str) -> np.ndarray:
    from ttc.runtime.formats import quantize

    return quantize(tilize(x), fmt)


def _bcast_program(mode: str, grid: tuple[int, int], b_tiles: list[int]) -> ProgramSpec:
    program = eltwise_program(grid)
    reader = replace(program.reader, '"ttkernel.noc_read_tiles"(%b, %t)', '"ttkernel.noc_read_tiles"(%b, %tb)')
    reader.insert(0, kop("get_arg", out="tb", index=1))
    compute = replace(program.compute, 'op = "add"', f'op = "add", bcast = "{mode}"')
    args = program.runtime_args
    reader_args = [[start[0], bt] for start, bt in zip(args[0], b_tiles, strict=True)]
    return ProgramSpec(reader, compute, program.writer, program.cbs, grid, [reader_args, args[1], args[2]])


@pytest.mark.parametrize(("mode", "b_shape"), [("row", (1, 96)), ("col", (64, 1)), ("scalar", (1, 1))])
def test_binary_broadcast(mode: str, b_shape: tuple[int, int]) -> None:
    a, b = rand(64, 96), rand(*b_shape)
    b_tile = {"row": lambda r, c: c, "col": lambda r, c: r, "scalar": lambda r, c: 0}[mode]
    grid = (3, 2)
    program = _bcast_program(mode, grid, [b_tile(c // 3, c % 3) for c in range(6)])
    ta, tb, tc = Tensor("a", a.shape), Tensor("b", b.shape), Tensor("c", a.shape)
    out, _ = run({"a": (ta, a), "b": (tb, b)}, [tc], program)
    assert_bits_equal(out["c"], N.eltwise_binary(N.bf16_round(a), N.bf16_round(b), "add"))


# --- (b) matmul ---------------------------------------------------------------------------------


def run_matmul(a: np.ndarray, b: np.ndarray, program: ProgramSpec) -> tuple[np.ndarray, object]:
    ta, tb, tc = Tensor("a", a.shape), Tensor("b", b.shape), Tensor("c", (a.shape[0], b.shape[1]))
    out, executor = run({"a": (ta, a), "b": (tb, b)}, [tc], program)
    return out["c"], executor


def test_matmul_k_blocked_on_2x2_grid_matches_numerics_and_1x1_grid() -> None:
    a, b = rand(64, 128), rand(128, 64)
    blocked, executor = run_matmul(a, b, matmul_program(2, 4, 2, (2, 2), 1, 1, block_k=2))
    want = N.matmul_tiles_accumulate(np.zeros((64, 64), np.float32), N.bf16_round(a), N.bf16_round(b))
    assert_bits_equal(blocked, want)
    single, _ = run_matmul(a, b, matmul_program(2, 4, 2, (1, 1), 2, 2, block_k=2))
    assert_bits_equal(single, blocked)
    subblocked, _ = run_matmul(a, b, matmul_program(2, 4, 2, (1, 1), 2, 2, block_k=4, subblock=(1, 2)))
    assert_bits_equal(subblocked, blocked)
    [profile] = executor.profile
    # per core: 4 tile-MACs at HiFi4 (4 phases) of bf16 operands and one fill; the matrix unit takes its
    # MVMULs at the measured efficiency, or the unpacking of 2 bf16 tiles per MAC, whichever is longer
    assert profile.counts.tiles == (("datacopy", 1), ("matmul.hifi4.bf16.bf16", 4))
    matrix = max(E150.matmul_cycles_per_phase * 4 * 4 / E150.matmul_efficiency, 4 * 4096 / E150.unpack_bytes_per_cycle)
    assert profile.compute_cycles == matrix + E150.tile_op_cycles["datacopy"]


def test_matmul_fidelity_changes_bits_and_cycles() -> None:
    a, b = rand(32, 64), rand(64, 32)
    hifi4, e4 = run_matmul(a, b, matmul_program(1, 2, 1, (1, 1), 1, 1, block_k=2, fidelity="hifi4"))
    lofi, e1 = run_matmul(a, b, matmul_program(1, 2, 1, (1, 1), 1, 1, block_k=2, fidelity="lofi"))
    want = N.matmul_tiles_accumulate(np.zeros((32, 32), np.float32), N.bf16_round(a), N.bf16_round(b), "lofi")
    assert_bits_equal(lofi, want)
    assert not np.array_equal(bits(lofi), bits(hifi4))
    assert e4.profile[0].compute_cycles > e1.profile[0].compute_cycles


def test_matmul_without_zeroing_dst_gives_nan() -> None:
    """Dst is undefined after tile_regs_acquire: accumulating into it without fill_tiles is wrong."""
    program = matmul_program(1, 2, 1, (1, 1), 1, 1, block_k=1)
    program.compute = without(program.compute, "ttkernel.fill_tiles")
    out, _ = run_matmul(rand(32, 64), rand(64, 32), program)
    assert np.isnan(out).all()


# --- (c) SFPU, reduce, transpose ----------------------------------------------------------------


def unary_program(grid: tuple[int, int], math: list[str], reader_args: list[list[int]],
                  writer_args: list[list[int]], compute_args: list[list[int]] | None = None,
                  copy: str = "copy_tiles") -> ProgramSpec:
    """c = math(a) tile by tile: each core one tile, read at reader arg 0, written at writer arg 0."""
    reader = [kop("get_arg", out="t", index=0), *addrgen("a", 0), kop("cb_reserve_back", cb=0, pages=1),
              kop("noc_read_tiles", "a", "t", cb=0, rows=1, cols=1), kop("noc_read_barrier"),
              kop("cb_push_back", cb=0, pages=1)]
    compute = [kop("cb_wait_front", cb=0, pages=1), kop("tile_regs_acquire"), kop(copy, cb=0, rows=1, cols=1),
               *math, kop("tile_regs_commit"), kop("tile_regs_wait"), kop("cb_reserve_back", cb=16, pages=1),
               kop("pack_tiles", count=1, cb=16), kop("cb_push_back", cb=16, pages=1), kop("tile_regs_release"),
               kop("cb_pop_front", cb=0, pages=1)]
    writer = [kop("get_arg", out="t", index=0), *addrgen("c", 1), kop("cb_wait_front", cb=16, pages=1),
              kop("noc_write_tiles", "c", "t", cb=16, rows=1, cols=1), kop("noc_write_barrier"),
              kop("cb_pop_front", cb=16, pages=1)]
    cores = grid[0] * grid[1]
    args = [reader_args, compute_args or [[] for _ in range(cores)], writer_args]
    return ProgramSpec(reader, compute, writer, [cb(0, 2), cb(16, 2)], grid, args, kind="unary")


def test_sfpu_chain_matches_numerics() -> None:
    x = rand(64, 64)
    chain = [("exp", 0.0), ("mul_scalar", 0.75), ("sub_from_scalar", 2.0), ("abs", 0.0), ("sqrt", 0.0),
             ("pow_scalar", 1.5), ("max_scalar", 0.5), ("add_scalar", -0.25), ("gelu", 0.0)]
    math = [kop("sfpu_tiles", fn=fn, count=1, param=param) for fn, param in chain]
    tiles = [[i] for i in range(4)]
    ta, tc = Tensor("a", x.shape), Tensor("c", x.shape)
    out, executor = run({"a": (ta, x)}, [tc], unary_program((2, 2), math, tiles, tiles))
    want = N.bf16_round(x)
    for fn, param in chain:
        want = N.sfpu_unary(want, fn, param)
    assert_bits_equal(out["c"], want)
    cycles = E150.tile_op_cycles
    assert executor.profile[0].compute_cycles == cycles["datacopy"] + cycles["exp"] + cycles["sqrt"] \
        + cycles["gelu"] + cycles["exp"] + 5 * cycles["mul"]  # pow_scalar costs as exp, the rest as mul


def test_binary_sfpu_reads_two_dst_slots_and_rounds_once() -> None:
    """x ** 3 with the exponent filled into slot 1: the float32 power of the Dst values, one bf16 rounding,
    costed as a log (binary SFPU functions cost by SFPU_COST_KEYS)."""
    x = rand(32, 64)
    math = [kop("fill_tiles", dst=1, count=1, value=3.0), kop("sfpu_binary_tiles", fn="pow", dst=0, dst_b=1, count=1)]
    tiles = [[0], [1]]
    ta, tc = Tensor("a", x.shape), Tensor("c", x.shape)
    out, executor = run({"a": (ta, x)}, [tc], unary_program((2, 1), math, tiles, tiles))
    want = N.bf16_round(np.power(N.bf16_round(x).astype(np.float64), 3.0).astype(np.float32))
    assert_bits_equal(out["c"], want)
    cycles = E150.tile_op_cycles
    assert executor.profile[0].compute_cycles == 2 * cycles["datacopy"] + cycles["log"]


def test_binary_sfpu_operand_slots_outside_the_acquired_half_are_a_fault() -> None:
    program = unary_program((1, 1), [kop("sfpu_binary_tiles", fn="pow", dst=0, dst_b=8, count=1)], [[0]], [[0]])
    x = rand(32, 32)
    with pytest.raises(DeviceFault, match=r"Dst slots 8..8 are outside the 8 tiles one acquire owns"):
        run({"a": (Tensor("a", x.shape), x)}, [Tensor("c", x.shape)], program)


def test_dst_slots_are_nan_again_whenever_their_half_is_acquired() -> None:
    """Dst is undefined after every tile_regs_acquire, not just the first: a slot math wrote under one
    acquire reads NaN when its half comes back (the third acquire), and in the next program."""
    x = rand(32, 32)
    ta, tc = Tensor("a", x.shape), Tensor("c", x.shape)

    def acquire(*math: str) -> list[str]:
        return [kop("tile_regs_acquire"), *math, kop("tile_regs_commit"), kop("tile_regs_wait")]

    pack = [kop("cb_reserve_back", cb=16, pages=1), kop("pack_tiles", count=1, cb=16),
            kop("cb_push_back", cb=16, pages=1), kop("tile_regs_release")]
    copy = kop("copy_tiles", cb=0, rows=1, cols=1)
    for third, want_nan in ((acquire(), True), (acquire(copy), False)):
        program = unary_program((1, 1), [], [[0]], [[0]])
        program.compute = [kop("cb_wait_front", cb=0, pages=1), *acquire(copy), kop("tile_regs_release"),
                           *acquire(copy), kop("tile_regs_release"), *third, *pack, kop("cb_pop_front", cb=0, pages=1)]
        out, _ = run({"a": (ta, x)}, [tc], program)
        assert np.isnan(out["c"]).all() == want_nan
    unpacked = unary_program((1, 1), [], [[0]], [[0]])
    unpacked.compute = [kop("cb_wait_front", cb=0, pages=1), *acquire(), *pack, kop("cb_pop_front", cb=0, pages=1)]
    out, _ = run({"a": (ta, x)}, [tc], unary_program((1, 1), [], [[0]], [[0]]), unpacked)
    assert np.isnan(out["c"]).all()


def test_transpose_with_per_core_tile_coordinates() -> None:
    x = rand(64, 96)  # 2 x 3 tiles -> y is 96 x 64, 3 x 2 tiles
    grid = (3, 2)
    reader = core_args(grid, lambda c, r: [r * 3 + c])
    writer = core_args(grid, lambda c, r: [c * 2 + r])
    ta, tc = Tensor("a", x.shape), Tensor("c", (96, 64))
    out, _ = run({"a": (ta, x)}, [tc], unary_program(grid, [], reader, writer, copy="transpose_tiles"))
    assert_bits_equal(out["c"], N.bf16_round(x).T)


def reduce_program(kind: str, dim: str, fill: float) -> ProgramSpec:
    """Per core (1 x 2 grid) one row of 3 tiles reduced into one output tile."""
    reader = [kop("get_arg", out="t", index=0), *addrgen("a", 0), kop("cb_reserve_back", cb=0, pages=3),
              kop("noc_read_tiles", "a", "t", cb=0, rows=1, cols=3), kop("noc_read_barrier"),
              kop("cb_push_back", cb=0, pages=3)]
    compute = [kop("cb_wait_front", cb=0, pages=3), kop("tile_regs_acquire"), kop("fill_tiles", count=1, value=fill),
               kop("reduce_tiles", kind=kind, dim=dim, cb=0, rows=1, cols=3, scaler=0.5, fidelity="hifi2"),
               kop("tile_regs_commit"), kop("tile_regs_wait"), kop("cb_reserve_back", cb=16, pages=1),
               kop("pack_tiles", count=1, cb=16), kop("cb_push_back", cb=16, pages=1), kop("tile_regs_release"),
               kop("cb_pop_front", cb=0, pages=3)]
    writer = [kop("get_arg", out="t", index=0), *addrgen("c", 1), kop("cb_wait_front", cb=16, pages=1),
              kop("noc_write_tiles", "c", "t", cb=16, rows=1, cols=1), kop("noc_write_barrier"),
              kop("cb_pop_front", cb=16, pages=1)]
    return ProgramSpec(reader, compute, writer, [cb(0, 3), cb(16, 1)], (1, 2),
                       [[[0], [3]], [[], []], [[0], [1]]], kind="reduce")


@pytest.mark.parametrize(("kind", "fill"), [("sum", 0.0), ("max", float("-inf"))])
def test_row_reduce(kind: str, fill: float) -> None:
    x = rand(64, 96)
    ta, tc = Tensor("a", x.shape), Tensor("c", (64, 32))
    out, executor = run({"a": (ta, x)}, [tc], reduce_program(kind, "row", fill))
    tiles = tilize(N.bf16_round(x))  # [2, 3, 32, 32]
    want = N.reduce_block(np.full((2, 32, 32), fill, np.float32), tiles, "row", kind, 0.5, "hifi2")
    assert_bits_equal(out["c"], want.reshape(64, 32))
    if kind == "sum":
        np.testing.assert_allclose(out["c"][:, 0], 0.5 * N.bf16_round(x).sum(axis=1), rtol=0.02, atol=0.05)
        assert executor.profile[0].counts.tiles == (("datacopy", 1), ("reduce_sum.hifi2", 3))
        assert executor.profile[0].compute_cycles == E150.tile_op_cycles["datacopy"] \
            + 3 * 2 * 32 / E150.matmul_efficiency
    else:
        assert_bits_equal(out["c"][:, 0], N.bf16_round(0.5 * N.bf16_round(x).max(axis=1)))


# --- (d) mask -----------------------------------------------------------------------------------


def test_mask_sets_padding_even_where_the_data_is_inf() -> None:
    """recip turns the zero padding of a 40 x 50 tensor into inf; mask_tiles selects `fill` there.

    The output buffer is the whole padded 64 x 64 so the padding is visible; row/col tile come
    from the compute kernel's per-core runtime arguments.
    """
    x = rand(40, 50)
    grid = (2, 2)
    tile = core_args(grid, lambda c, r: [r * 2 + c])
    coords = core_args(grid, lambda c, r: [r, c])
    math = [kop("sfpu_tiles", fn="recip", count=1), kop("get_arg", out="rt", index=0),
            kop("get_arg", out="ct", index=1),
            kop("mask_tiles", "rt", "ct", rows=1, cols=1, valid_rows=40, valid_cols=50, fill=-1.5)]
    ta, tc = Tensor("a", x.shape), Tensor("c", (64, 64))
    out, _ = run({"a": (ta, x)}, [tc], unary_program(grid, math, tile, tile, compute_args=coords))
    want = np.full((64, 64), -1.5, np.float32)
    want[:40, :50] = N.sfpu_unary(x, "recip")
    assert_bits_equal(out["c"], want)
    unmasked = without(unary_program(grid, math, tile, tile, compute_args=coords).compute, "mask_tiles")
    program = unary_program(grid, math, tile, tile, compute_args=coords)
    program.compute = unmasked
    raw, _ = run({"a": (ta, x)}, [Tensor("c", (64, 64))], program)
    assert np.isinf(raw["c"][40:, :]).all()


# --- indexed gather -----------------------------------------------------------------------------


def test_noc_read_tiles_indexed_gathers_tiles_named_by_an_index_table() -> None:
    """An int32 index table (row-major, one row per core) drives which tiles each core fetches;
    a negative entry -1 - i fetches tile i."""
    table = np.array([[3, 0], [-1 - 5, 2]], dtype=np.int64)  # core 0: tiles 3, 0; core 1: tiles 5, 2
    x = rand(64, 96)
    reader = [kop("get_arg", out="row", index=0), *addrgen("a", 0), *addrgen("idx", 1, fmt="i32", page=8),
              kop("cb_reserve_back", cb=2, pages=1), kop("noc_read_pages", "idx", "row", cb=2, count=1),
              kop("noc_read_barrier"), kop("cb_push_back", cb=2, pages=1), kop("cb_wait_front", cb=2, pages=1),
              kop("cb_reserve_back", cb=0, pages=2),
              kop("noc_read_tiles_indexed", "a", cb=0, index_cb=2, count=2), kop("noc_read_barrier"),
              kop("cb_push_back", cb=0, pages=2), kop("cb_pop_front", cb=2, pages=1)]
    compute = [kop("cb_wait_front", cb=0, pages=2), kop("tile_regs_acquire"), kop("copy_tiles", cb=0, rows=1, cols=2),
               kop("tile_regs_commit"), kop("tile_regs_wait"), kop("cb_reserve_back", cb=16, pages=2),
               kop("pack_tiles", count=2, cb=16), kop("cb_push_back", cb=16, pages=2), kop("tile_regs_release"),
               kop("cb_pop_front", cb=0, pages=2)]
    writer = [kop("get_arg", out="t", index=0), *addrgen("c", 2), kop("cb_wait_front", cb=16, pages=2),
              kop("noc_write_tiles", "c", "t", cb=16, rows=1, cols=2), kop("noc_write_barrier"),
              kop("cb_pop_front", cb=16, pages=2)]
    cbs = [cb(0, 2), cb(2, 1, "i32", page=16), cb(16, 2)]
    program = ProgramSpec(reader, compute, writer, cbs, (2, 1), [[[0], [1]], [[], []], [[0], [2]]], kind="gather",
                          buffers=["a", "idx", "c"])
    ta, ti, tc = Tensor("a", x.shape), Tensor("idx", table.shape, "i32", "row_major", host="i64"), Tensor("c", (32, 128))
    out, _ = run({"a": (ta, x), "idx": (ti, table)}, [tc], program)
    tiles = tilize(N.bf16_round(x)).reshape(6, 32, 32)
    assert_bits_equal(out["c"], np.concatenate([tiles[i] for i in (3, 0, 5, 2)], axis=1))


# --- (f) mutations --------------------------------------------------------------------------------


def test_shifting_one_cores_runtime_arg_changes_only_that_cores_tile() -> None:
    a, b = rand(64, 96), rand(64, 96)
    base, _ = run_eltwise(eltwise_program((3, 2)), a, b)
    starts = [0, 1, 2, 3, 5, 5]  # core (1,1) reads tile 5 but still writes tile 4
    shifted, _ = run_eltwise(eltwise_program((3, 2), starts=starts, write_starts=range(6)), a, b)
    changed = untilize(tilize(bits(shifted)) != tilize(bits(base))).reshape(2, 32, 3, 32).any(axis=(1, 3))
    assert changed.tolist() == [[False, False, False], [False, True, False]]
    assert_bits_equal(shifted[32:, 32:64], base[32:, 64:96])


def test_deleting_a_pop_front_is_a_fault_or_a_deadlock() -> None:
    """With room in the CB the program runs to its end with pages left in CB 0, which the device reports
    (the second tile would silently reuse the first tile of a); without room it deadlocks."""
    a, b = rand(32, 128), rand(32, 128)  # 4 tiles: 2 per core
    program = eltwise_program((2, 1), per_core=2)
    program.compute = without(program.compute, '"ttkernel.cb_pop_front"() {cb = 0')
    with pytest.raises(DeviceFault, match=r"ended with 2 page\(s\) pushed and never popped in CB 0"
                                          r"(.|\n)*at core \(0,0\) and 1 more core, CB 0"):
        run_eltwise(program, a, b)
    program = eltwise_program((2, 1), per_core=4)
    program.compute = without(program.compute, '"ttkernel.cb_pop_front"() {cb = 0')
    with pytest.raises(DeviceFault, match=r"deadlock(.|\n)*reader kernel on core \(0,0\) and 1 more core: "
                                          r"ttkernel.cb_reserve_back waits for 1 free page\(s\) of CB 0"):
        run_eltwise(program, rand(32, 256), rand(32, 256))


def test_loop_bounds_and_index_arithmetic() -> None:
    """The reader walks the tiles backwards (lower = 1, t = 8 - i via muli/addi), the compute loop
    has step 3; the writer goes forwards, so the output holds the tiles in reverse order."""
    a, b = rand(128, 64), rand(128, 64)  # 4 x 2 = 8 tiles
    program = eltwise_program((1, 1), per_core=8, starts=[8], write_starts=[0])
    program.reader = replace(program.reader, "lower = 0, step = 1, upper = 8", "lower = 1, step = 1, upper = 9")
    program.reader = replace(program.reader, '%t = "ttkernel.addi"(%t0, %i)', '%t = "ttkernel.addi"(%t0, %back)')
    program.reader = [kop("constant", out="minus_one", value=-1), *program.reader]
    program.reader = replace(program.reader, '%t = "ttkernel.addi"',
                             kop("muli", "i", "minus_one", out="back") + '\n%t = "ttkernel.addi"')
    program.compute = replace(program.compute, "lower = 0, step = 1, upper = 8", "lower = 0, step = 3, upper = 24")
    out, _ = run_eltwise(program, a, b)
    want = tilize(N.eltwise_binary(N.bf16_round(a), N.bf16_round(b), "add")).reshape(8, 32, 32)[::-1]
    assert_bits_equal(tilize(out).reshape(8, 32, 32), want)


def test_every_ttkernel_op_has_one_handler_and_no_ttir_op_has_any() -> None:
    from ttc.ir.dialect import registered_dialects
    from ttc.runtime.handlers import HANDLERS

    kernel_ops = {op.name for op in registered_dialects()["ttkernel"].ops} - {"ttkernel.for"}
    assert set(HANDLERS) == kernel_ops  # ttkernel.for is the kernel runner's own control flow
    assert all(name.startswith("ttkernel.") for name in HANDLERS)


# --- row lookups, tilize / untilize, ragged edges -------------------------------------------------


def row_lookup_program(ids_per_page: int, width: int) -> ProgramSpec:
    """tt-metal's embedding on 2 cores: core c looks up the ids 32c.. of index page 0 (at most 32 of them,
    `mini`) in a row-major bf16 table, tilizes the 32 rows and writes tile row c."""
    cols = -(-width // 32)
    row_bytes = width * 2
    reader = [kop("get_arg", out="r", index=0), kop("constant", out="zero", value=0),
              kop("constant", out="c32", value=32), kop("constant", out="n", value=ids_per_page),
              kop("constant", out="m32", value=-32), *addrgen("t", 0, page=row_bytes),
              *addrgen("ids", 1, fmt="i32", page=ids_per_page * 4),
              kop("muli", "r", "c32", out="first"), kop("muli", "r", "m32", out="back"),
              kop("addi", "n", "back", out="left"), kop("mini", "c32", "left", out="valid"),
              kop("cb_reserve_back", cb=8, pages=1), kop("noc_read_pages", "ids", "zero", cb=8, count=1),
              kop("noc_read_barrier"), kop("cb_push_back", cb=8, pages=1), kop("cb_wait_front", cb=8, pages=1),
              kop("cb_reserve_back", cb=0, pages=32),
              kop("noc_read_rows_indexed", "t", "first", "valid", cb=0, index_cb=8, count=32),
              kop("noc_read_barrier"), kop("cb_push_back", cb=0, pages=32), kop("cb_pop_front", cb=8, pages=1)]
    compute = [kop("cb_wait_front", cb=0, pages=32), kop("tile_regs_acquire"), kop("tilize_tiles", cb=0, cols=cols),
               kop("tile_regs_commit"), kop("tile_regs_wait"), kop("cb_reserve_back", cb=16, pages=cols),
               kop("pack_tiles", count=cols, cb=16), kop("cb_push_back", cb=16, pages=cols), kop("tile_regs_release"),
               kop("cb_pop_front", cb=0, pages=32)]
    writer = [kop("get_arg", out="t", index=0), *addrgen("c", 2), kop("cb_wait_front", cb=16, pages=cols),
              kop("noc_write_tiles", "c", "t", cb=16, rows=1, cols=cols), kop("noc_write_barrier"),
              kop("cb_pop_front", cb=16, pages=cols)]
    cbs = [cb(0, 32, page=row_bytes), cb(8, 1, "i32", page=ids_per_page * 4), cb(16, cols)]
    return ProgramSpec(reader, compute, writer, cbs, (2, 1), [[[0], [1]], [[], []], [[0], [cols]]],
                       kind="embedding", buffers=["t", "ids", "c"])


def test_row_lookup_copies_table_rows_exactly_and_zero_fills_the_last_tile_row() -> None:
    table, ids = rand(10, 70), RNG.integers(0, 10, (1, 40))
    tt = Tensor("t", table.shape, "bf16", "row_major")
    ti, tc = Tensor("ids", ids.shape, "i32", "row_major", host="i64"), Tensor("c", (64, 70))
    out, _ = run({"t": (tt, table), "ids": (ti, ids)}, [tc], row_lookup_program(40, 70))
    expected = np.zeros((64, 70), np.float32)
    expected[:40] = N.bf16_round(table)[ids[0]]
    assert_bits_equal(out["c"], expected)  # padding rows 40.. are zero, and the tile padding with them


def test_row_lookup_of_an_id_outside_the_table_is_a_fault() -> None:
    table, ids = rand(10, 64), np.full((1, 40), 3)
    ids[0, 35] = 10
    tt = Tensor("t", table.shape, "bf16", "row_major")
    ti, tc = Tensor("ids", ids.shape, "i32", "row_major", host="i64"), Tensor("c", (64, 64))
    with pytest.raises(DeviceFault, match=r"out-of-bounds DRAM read.*\n.*core \(1,0\), reader kernel, CB 0"):
        run({"t": (tt, table), "ids": (ti, ids)}, [tc], row_lookup_program(40, 64))


def test_untilize_packs_rows_and_writes_only_the_real_ones() -> None:
    """pack_rows + noc_write_rows: a [40, 70] tile-layout tensor to row-major pages on 2 cores."""
    x = rand(40, 70)
    reader = [kop("get_arg", out="t", index=0), *addrgen("a", 0), kop("cb_reserve_back", cb=0, pages=3),
              kop("noc_read_tiles", "a", "t", cb=0, rows=1, cols=3), kop("noc_read_barrier"),
              kop("cb_push_back", cb=0, pages=3)]
    compute = [kop("cb_reserve_back", cb=16, pages=32), kop("cb_wait_front", cb=0, pages=3), kop("tile_regs_acquire"),
               kop("copy_tiles", cb=0, rows=1, cols=3), kop("tile_regs_commit"), kop("tile_regs_wait"),
               kop("pack_rows", cb=16, cols=3), kop("tile_regs_release"), kop("cb_pop_front", cb=0, pages=3),
               kop("cb_push_back", cb=16, pages=32)]
    writer = [kop("get_arg", out="page", index=0), kop("get_arg", out="valid", index=1),
              *addrgen("c", 1, page=140), kop("cb_wait_front", cb=16, pages=32),
              kop("noc_write_rows", "c", "page", "valid", cb=16, count=32), kop("noc_write_barrier"),
              kop("cb_pop_front", cb=16, pages=32)]
    program = ProgramSpec(reader, compute, writer, [cb(0, 3), cb(16, 32, page=140)], (2, 1),
                          [[[0], [3]], [[], []], [[0, 32], [32, 8]]], kind="untilize")
    out, _ = run({"a": (Tensor("a", x.shape), x)}, [Tensor("c", x.shape, "bf16", "row_major")], program)
    assert_bits_equal(out["c"], N.bf16_round(x))


def test_valid_cols_reads_zeros_and_writes_nothing_past_a_ragged_edge() -> None:
    """Both cores copy 2 tile columns; core 1 owns only 1 (valid_cols 1): its second column is neither read
    (zeros in the CB) nor written (the output keeps what was there: here, the first core's tile)."""
    x = rand(32, 96)
    reader = [kop("get_arg", out="t", index=0), kop("get_arg", out="v", index=1), *addrgen("a", 0),
              kop("cb_reserve_back", cb=0, pages=2), kop("noc_read_tiles", "a", "t", "v", cb=0, rows=1, cols=2),
              kop("noc_read_barrier"), kop("cb_push_back", cb=0, pages=2)]
    writer = [kop("get_arg", out="t", index=0), kop("get_arg", out="v", index=1), *addrgen("c", 1),
              kop("cb_wait_front", cb=0, pages=2), kop("noc_write_tiles", "c", "t", "v", cb=0, rows=1, cols=2),
              kop("noc_write_barrier"), kop("cb_pop_front", cb=0, pages=2)]
    program = ProgramSpec(reader, [], writer, [cb(0, 2)], (2, 1), [[[0, 2], [2, 1]], [[], []], [[0, 2], [2, 1]]])
    out, _ = run({"a": (Tensor("a", x.shape), x)}, [Tensor("c", x.shape)], program)
    assert_bits_equal(out["c"], N.bf16_round(x))
