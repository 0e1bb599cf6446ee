"""Every device fault the emulator reports, with the parts of its message that are the contract:
what happened, the core (first offender and how many more), the kernel, the CB, the op and the
ONNX node of the program."""

import re
from collections.abc import Iterator

import numpy as np
import pytest
from runtime_helpers import (
    ProgramSpec,
    Tensor,
    addrgen,
    cb,
    eltwise_program,
    kfor,
    kop,
    replace,
    run,
    schedule_text,
    without,
)

from ttc.ir import parse_module
from ttc.ir.diagnostics import EXIT_DEVICE_FAULT, DeviceFault
from ttc.ir.dialects.tt import E150
from ttc.runtime.executor import Executor, using_emulator
from ttc.runtime.interpreter import DEFAULT_STEP_BUDGET

SHAPE = (64, 96)  # 6 tiles: one per core of the 3x2 grid
L1_BASE = E150.l1_reserved


@pytest.fixture(autouse=True, params=["interpreter", "native"])
def emulator(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on both emulators: the interpreter and the native core (runtime/native_program.py)."""
    if request.param == "native":
        with using_emulator("native"):
            yield request.param
    else:
        with using_emulator("reference"):
            yield request.param


def fault(program: ProgramSpec, extra: list[Tensor] = (), step_budget: int | None = None) -> str:
    """Run a + b -> c with the program and return the DeviceFault's message."""
    a, b, c = (Tensor(n, SHAPE) for n in "abc")
    ones = np.ones(SHAPE, np.float32)
    with pytest.raises(DeviceFault) as info:
        run({"a": (a, ones), "b": (b, ones)}, [c, *extra], program, step_budget=step_budget)
    assert info.value.exit_code == EXIT_DEVICE_FAULT
    return str(info.value)


def check(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in:\n{message}"


NODE = 'ONNX node(s) "add_1"'


# --- out-of-bounds DRAM and L1 ------------------------------------------------------------------


@pytest.mark.parametrize("page", [6, 8, 13, -1])
def test_dram_read_past_the_buffer(page: int) -> None:
    program = eltwise_program((3, 2), starts=[0, 1, 2, 3, page, 5], write_starts=range(6))
    check(fault(program), f"out-of-bounds DRAM read: page {page} of 2048 bytes",
          "has 6 pages of 2048 bytes", "at core (1,1), reader kernel, CB 0, op ttkernel.noc_read_tiles",
          "eltwise on a 3x2 grid", NODE)


def test_dram_write_past_the_buffer_names_every_offending_core() -> None:
    program = eltwise_program((3, 2), write_starts=[0, 1, 2, 6, 7, 8])
    check(fault(program), "out-of-bounds DRAM write: page 6", "at core (0,1) and 2 more cores, writer kernel, "
          "CB 16, op ttkernel.noc_write_tiles", NODE)


def test_address_outside_any_buffer() -> None:
    program = eltwise_program((3, 2))
    program.reader = replace(program.reader, '%a_base = "ttkernel.buffer_address"() {operand = 0}',
                             '%a_base = "ttkernel.constant"() {value = 1048576}')
    check(fault(program), "out-of-bounds DRAM read", "0x100000 is not inside any allocated DRAM buffer",
          "at core (0,0) and 5 more cores, reader kernel")


def test_l1_read_of_an_address_that_is_no_l1_buffer() -> None:
    program = eltwise_program((3, 2))
    program.reader = replace(program.reader, 'memory = "dram", format = bf16} : (index) -> !ttkernel.addrgen',
                             'memory = "l1", format = bf16} : (index) -> !ttkernel.addrgen')
    check(fault(program), "out-of-bounds L1 read", "not inside any allocated L1 buffer", "reader kernel, CB 0")


def test_reading_an_l1_buffer_interleaved_over_the_cores_works_and_past_it_faults() -> None:
    """The input a lives in L1, interleaved over the compute cores; reading its pages works, page 6 faults."""
    a = Tensor("a", SHAPE, memory="l1", address=1 << 19)
    b, c = Tensor("b", SHAPE), Tensor("c", SHAPE)
    program = eltwise_program((3, 2))
    program.reader = replace(program.reader, '%a = "ttkernel.addrgen"(%a_base) {page_size = 2048, memory = "dram"',
                             '%a = "ttkernel.addrgen"(%a_base) {page_size = 2048, memory = "l1"')
    x = np.arange(64 * 96, dtype=np.float32).reshape(SHAPE)
    out, _ = run({"a": (a, x), "b": (b, x)}, [c], program)
    np.testing.assert_array_equal(out["c"], 2 * x.astype("bfloat16").astype(np.float32))
    program.runtime_args = [[[0], [1], [2], [3], [4], [6]], *program.runtime_args[1:]]
    with pytest.raises(DeviceFault, match=r"out-of-bounds L1 read: page 6(.|\n)*core \(2,1\), reader kernel"):
        run({"a": (a, x), "b": (b, x)}, [c], program)


# --- L1 overflow ----------------------------------------------------------------------------------


def with_cbs(*cbs: dict) -> ProgramSpec:
    program = eltwise_program((3, 2))
    program.cbs = list(cbs)
    return program


def test_cb_beyond_l1_size() -> None:
    message = fault(with_cbs(cb(0, 2), cb(1, 2), cb(16, 2, address=E150.l1_size - 2048)))
    check(message, "L1 overflow: CB 16 at 0xff800 (4096 bytes per bank) overflows L1", "beyond the 0x100000",
          "at core (0,0) and 5 more cores, CB 16", NODE)


def test_cbs_overlapping_each_other() -> None:
    check(fault(with_cbs(cb(0, 2, address=L1_BASE), cb(1, 2, address=L1_BASE + 2048), cb(16, 2))),
          "L1 overflow: CB 1 at 0x2ad80", "overlaps CB 0 at 0x2a580..0x2b580", "CB 1", NODE)


def test_cb_below_the_reserved_l1() -> None:
    check(fault(with_cbs(cb(0, 2, address=0x1000), cb(1, 2), cb(16, 2))),
          "L1 overflow: CB 0 at 0x1000", "below the first free L1 byte 0x2a580", "CB 0")


def test_cb_without_address() -> None:
    check(fault(with_cbs(cb(0, 2, address="none"), cb(1, 2), cb(16, 2))),
          "L1 overflow: CB 0 has no address (the program was not allocated)")


def test_cb_overlapping_a_live_l1_buffer() -> None:
    scratch = Tensor("scratch", (32, 32), memory="l1", address=L1_BASE + 0x4000)
    message = fault(with_cbs(cb(0, 2), cb(1, 2), cb(16, 8, address=L1_BASE + 0x3000)), extra=[scratch])
    check(message, "L1 overflow: CB 16", "overlaps buffer tensor<32x32xbf16, #tt.layout<tile, l1, interleaved>>")


def test_program_grid_larger_than_the_device() -> None:
    program = eltwise_program((13, 1))
    check(fault(program), "program grid 13x1 exceeds the device compute grid 12x9")


def test_buffer_without_address() -> None:
    tensors = [Tensor(n, SHAPE) for n in "abc"]
    text = schedule_text(tensors[:2], tensors[2:], [eltwise_program((3, 2))])
    text = text.replace("{address = 4096}", "")  # c was not allocated
    ones = np.ones(SHAPE, np.float32)
    with pytest.raises(DeviceFault, match=r"create_buffer of tensor<64x96xbf16.*has no address: the program "
                                          r"was not allocated"):
        Executor(parse_module(text), {}).run({"a": ones, "b": ones})


# --- circular-buffer protocol --------------------------------------------------------------------


def test_pop_more_than_waited() -> None:
    program = eltwise_program((3, 2))
    program.compute = replace(program.compute, '"ttkernel.cb_pop_front"() {cb = 0, pages = 1}',
                              '"ttkernel.cb_pop_front"() {cb = 0, pages = 2}')
    check(fault(program), "cb_pop_front of 2 pages but only 1 were waited for",
          "at core (0,0) and 5 more cores, compute kernel, CB 0, op ttkernel.cb_pop_front", NODE)


def test_push_more_than_reserved() -> None:
    program = eltwise_program((3, 2))
    program.reader = replace(program.reader, '"ttkernel.cb_push_back"() {cb = 1, pages = 1}',
                             '"ttkernel.cb_push_back"() {cb = 1, pages = 2}')
    check(fault(program), "cb_push_back of 2 pages but only 1 are reserved", "reader kernel, CB 1",
          "op ttkernel.cb_push_back")


def test_tile_offset_outside_the_waited_window() -> None:
    program = eltwise_program((3, 2))
    program.compute = replace(program.compute, "cb_b = 1,", "cb_b = 1, b_offset = 1,")
    check(fault(program), "page offset 1 of CB 1 is outside the 1 page(s) waited at the front",
          "compute kernel, CB 1, op ttkernel.binary_tiles")


def test_noc_read_outside_the_reserved_window() -> None:
    program = eltwise_program((3, 2))
    program.reader = replace(program.reader, "{cb = 0, rows = 1, cols = 1}", "{cb = 0, rows = 1, cols = 2}")
    check(fault(program), "page offset 1 of CB 0 is outside the 1 page(s) reserved at the back",
          "reader kernel, CB 0, op ttkernel.noc_read_tiles")


def test_reserve_and_wait_more_pages_than_the_cb_has() -> None:
    program = eltwise_program((3, 2))
    program.reader = replace(program.reader, '"ttkernel.cb_reserve_back"() {cb = 0, pages = 1}',
                             '"ttkernel.cb_reserve_back"() {cb = 0, pages = 3}')
    check(fault(program), "cb_reserve_back of 3 pages: CB 0 has only 2 pages", "reader kernel, CB 0")
    program = eltwise_program((3, 2))
    program.writer = replace(program.writer, '"ttkernel.cb_wait_front"() {cb = 16, pages = 1}',
                             '"ttkernel.cb_wait_front"() {cb = 16, pages = 4}')
    check(fault(program), "cb_wait_front for 4 pages: CB 16 has only 2 pages", "writer kernel, CB 16")


def test_unconfigured_cb() -> None:
    program = eltwise_program((3, 2))
    program.cbs = program.cbs[:2]
    check(fault(program), "CB 16 is not configured by the program", "compute kernel, CB 16")


def test_noc_format_mismatch() -> None:
    program = eltwise_program((3, 2))
    program.cbs = [cb(0, 2, "bfp8_b"), *program.cbs[1:]]
    check(fault(program), "the buffer's format bf16 differs from CB 0's format bfp8_b", "reader kernel, CB 0")


# --- barriers -------------------------------------------------------------------------------------


def test_push_before_read_barrier() -> None:
    program = eltwise_program((3, 2))
    program.reader = without(program.reader, "noc_read_barrier")
    check(fault(program), "cb_push_back of CB 0 while NoC reads into it have not completed "
          "(missing noc_read_barrier)", "at core (0,0) and 5 more cores, reader kernel, CB 0", NODE)


def test_pop_before_write_barrier() -> None:
    program = eltwise_program((3, 2))
    program.writer = without(program.writer, "noc_write_barrier")
    check(fault(program), "cb_pop_front of CB 16 while NoC writes from it have not completed", "writer kernel")


def test_kernel_ending_with_unfinished_writes() -> None:
    program = eltwise_program((3, 2))
    program.writer = without(without(program.writer, "noc_write_barrier"), '"ttkernel.cb_pop_front"')
    check(fault(program), "the kernel ended with NoC writes from CB 16 not completed (missing noc_write_barrier)",
          "writer kernel, CB 16")


# --- Dst protocol ---------------------------------------------------------------------------------


def test_math_without_acquire() -> None:
    program = eltwise_program((3, 2))
    program.compute = without(program.compute, "tile_regs_acquire")
    check(fault(program), "a math op writes Dst while Dst is released", "compute kernel, op ttkernel.binary_tiles")


def test_dst_slot_beyond_half_dst() -> None:
    program = eltwise_program((3, 2))
    program.compute = replace(program.compute, "rows = 1, cols = 1}", "rows = 1, cols = 1, dst = 8}")
    check(fault(program), "Dst slots 8..8 are outside the 8 tiles one acquire owns", "op ttkernel.binary_tiles")


def test_pack_before_tile_regs_wait() -> None:
    program = eltwise_program((3, 2))
    program.compute = without(program.compute, "tile_regs_wait")
    check(fault(program), "pack_tiles while Dst is committed", "op ttkernel.pack_tiles")


def test_compute_kernel_ending_with_dst_held() -> None:
    program = eltwise_program((3, 2))
    program.compute = without(program.compute, "tile_regs_release")
    check(fault(program), "the kernel ended with Dst waited (missing tile_regs_release)", "compute kernel")
    program = eltwise_program((3, 2), per_core=1)
    program.compute = without(program.compute, "tile_regs_commit")
    check(fault(program), "Dst protocol violation: tile_regs_wait while Dst is acquired (expected committed)")


# --- deadlock and runaway -------------------------------------------------------------------------


def test_deadlock_names_each_blocked_kernel_core_and_cb() -> None:
    program = eltwise_program((3, 2))
    program.reader = without(program.reader, '"ttkernel.cb_push_back"() {cb = 1')
    message = fault(program)
    check(message, "deadlock: no kernel on any core can make progress",
          "compute kernel on core (0,0) and 5 more cores: ttkernel.cb_wait_front waits for 1 filled page(s) of "
          "CB 1 (0 of 2 filled)",
          "writer kernel on core (0,0) and 5 more cores: ttkernel.cb_wait_front waits for 1 filled page(s) of CB 16",
          NODE)
    assert "reader kernel on" not in message  # the reader finished


def test_runaway_program_hits_the_step_budget() -> None:
    program = eltwise_program((3, 2))
    program.compute = [kop("constant", out="zero", value=0), kfor("j", 10**9, [kop("addi", "zero", "zero", out="x")]),
                       *program.compute]
    check(fault(program, step_budget=10_000), "runaway program: more than 10000 kernel ops executed (the step budget)",
          "compute kernel, op ttkernel.addi", NODE)
    assert DEFAULT_STEP_BUDGET == 5_000_000


# --- runtime arguments and operands ----------------------------------------------------------------


def test_missing_runtime_argument_names_the_cores() -> None:
    program = eltwise_program((3, 2))
    program.runtime_args = [[[0], [1], [], [3], [], [5]], *program.runtime_args[1:]]
    check(fault(program), "runtime argument 0 is missing", "at core (2,0) and 1 more core, reader kernel",
          "op ttkernel.get_arg")


def test_buffer_operand_out_of_range() -> None:
    program = eltwise_program((3, 2))
    program.writer = replace(program.writer, "{operand = 2}", "{operand = 3}")
    check(fault(program), "buffer operand #3 does not exist (the program has 3)", "writer kernel")


def test_messages_read_in_order() -> None:
    program = eltwise_program((3, 2))
    program.reader = without(program.reader, "noc_read_barrier")
    lines = fault(program).split("\n")
    assert lines[0].startswith("device fault: ")
    assert re.match(r"  at core \(\d+,\d+\)", lines[1])
    assert lines[2].startswith("  in program eltwise on a 3x2 grid")


# --- Float16 overflow --------------------------------------------------------------------------


F16_OVERFLOW = "Float16 overflow: a value rounded to Float16 exceeds 65504, the largest Float16 value"


def f16_fault(program: ProgramSpec, a: np.ndarray, b: np.ndarray) -> str:
    """Run c = program(a, b) with f16 buffers (so Dst holds Float16) and return the DeviceFault's message."""
    ta, tb, tc = (Tensor(n, a.shape, "f16") for n in "abc")
    with pytest.raises(DeviceFault) as info:
        run({"a": (ta, a), "b": (tb, b)}, [tc], program)
    assert info.value.exit_code == EXIT_DEVICE_FAULT
    return str(info.value)


def test_float16_overflow_of_an_eltwise_result() -> None:
    """65504 + 16 rounds past Float16's range on one core: a fault at the op, on all cores (the interpreter
    computes every core's tiles at once); 65504 + 15 rounds back to 65504, and inf + 1 is no overflow."""
    a, b = np.ones(SHAPE, np.float32), np.ones(SHAPE, np.float32)
    a[40, 70], b[40, 70] = 65504.0, 16.0  # tile (1, 2): core (2,1)
    message = f16_fault(eltwise_program((3, 2), fmt="f16"), a, b)
    check(message, F16_OVERFLOW,
          "(this program holds Float16 in Dst: --softmax-precision f16, or a range layout's bounded-f16 proved)",
          "at core (0,0) and 5 more cores, compute kernel, op ttkernel.binary_tiles", "eltwise on a 3x2 grid", NODE)
    b[40, 70], a[0, 0] = 15.0, np.inf
    out, _ = run({"a": (Tensor("a", SHAPE, "f16"), a), "b": (Tensor("b", SHAPE, "f16"), b)},
                 [Tensor("c", SHAPE, "f16")], eltwise_program((3, 2), fmt="f16"))
    assert out["c"][40, 70] == 65504.0 and out["c"][0, 0] == np.inf


def test_the_earliest_float16_overflow_over_all_cores_is_reported() -> None:
    """Each tile: add, then exp. Core (1,0) overflows in the add of its second tile, core (1,1) in the exp of
    its first: the interpreter (all cores op by op) meets the exp first."""
    program = eltwise_program((3, 2), per_core=2, fmt="f16")
    program.compute = replace(program.compute, '"ttkernel.tile_regs_commit"',
                              kop("sfpu_tiles", fn="exp", count=1) + '\n"ttkernel.tile_regs_commit"')
    shape = (64, 192)  # 12 tiles, two per core
    a, b = np.ones(shape, np.float32), np.ones(shape, np.float32)
    a[5, 3 * 32 + 5], b[5, 3 * 32 + 5] = 65504.0, 32.0  # tile 3: core 1's second
    a[40, 2 * 32 + 1], b[40, 2 * 32 + 1] = 6.0, 6.0  # tile 8: core 4's first; exp(12) = 162755
    ta, tb, tc = (Tensor(n, shape, "f16") for n in "abc")
    with pytest.raises(DeviceFault) as info:
        run({"a": (ta, a), "b": (tb, b)}, [tc], program)
    check(str(info.value), F16_OVERFLOW, "at core (0,0) and 5 more cores, compute kernel, op ttkernel.sfpu_tiles")
    a[40, 2 * 32 + 1] = 4.0  # exp(10) = 22026: only the add of tile 3 overflows
    with pytest.raises(DeviceFault) as info:
        run({"a": (ta, a), "b": (tb, b)}, [tc], program)
    check(str(info.value), F16_OVERFLOW, "op ttkernel.binary_tiles")


@pytest.mark.parametrize("op", ["fill_tiles", "mask_tiles"])
def test_float16_overflow_of_a_fill_value(op: str) -> None:
    """A fill value past Float16's range (a mask's even where no element is padding); -inf fills are fine."""
    def with_fill(value: float) -> ProgramSpec:
        program = eltwise_program((3, 2), fmt="f16")
        line = {"fill_tiles": kop("fill_tiles", count=1, value=value),
                "mask_tiles": kop("mask_tiles", "z", "z", rows=1, cols=1, valid_rows=64, valid_cols=96,
                                  fill=-value)}[op]
        program.compute = [kop("constant", out="z", value=0),
                           *replace(program.compute, '"ttkernel.tile_regs_commit"',
                                    line + '\n"ttkernel.tile_regs_commit"')]
        return program

    ones = np.ones(SHAPE, np.float32)
    check(f16_fault(with_fill(7e4), ones, ones), F16_OVERFLOW, f"compute kernel, op ttkernel.{op}")
    tensors = {"a": (Tensor("a", SHAPE, "f16"), ones), "b": (Tensor("b", SHAPE, "f16"), ones)}
    out, _ = run(tensors, [Tensor("c", SHAPE, "f16")], with_fill(float("inf")))
    assert np.isinf(out["c"]).all() if op == "fill_tiles" else (out["c"] == 2.0).all()


def test_a_bf16_dst_never_overflows() -> None:
    """The same sum with bf16 buffers: bf16's range is float32's."""
    a, b = np.ones(SHAPE, np.float32), np.ones(SHAPE, np.float32)
    a[40, 70], b[40, 70] = 65504.0, 65504.0
    out, _ = run({"a": (Tensor("a", SHAPE), a), "b": (Tensor("b", SHAPE), b)}, [Tensor("c", SHAPE)],
                 eltwise_program((3, 2)))
    assert out["c"][40, 70] == 131072.0


@pytest.mark.parametrize("op", ["copy_tiles", "transpose_tiles"])
@pytest.mark.parametrize("fmt", ["bf16", "f32"])
def test_float16_overflow_of_a_datacopy(op: str, fmt: str) -> None:
    """A bf16 or f32 tile copied into a Float16 Dst (the program's result is f16): 70000 has no Float16 value;
    65280 and inf copy as they are."""
    reader = [kop("get_arg", out="t", index=0), *addrgen("a", 0, fmt), kop("cb_reserve_back", cb=0, pages=1),
              kop("noc_read_tiles", "a", "t", cb=0, rows=1, cols=1), kop("noc_read_barrier"),
              kop("cb_push_back", cb=0, pages=1)]
    compute = [kop("cb_wait_front", cb=0, pages=1), kop("tile_regs_acquire"), kop(op, cb=0, rows=1, cols=1),
               kop("tile_regs_commit"), kop("tile_regs_wait"), kop("cb_reserve_back", cb=16, pages=1),
               kop("pack_tiles", count=1, cb=16), kop("cb_push_back", cb=16, pages=1), kop("tile_regs_release"),
               kop("cb_pop_front", cb=0, pages=1)]
    writer = [kop("get_arg", out="t", index=0), *addrgen("c", 1, "f16"), kop("cb_wait_front", cb=16, pages=1),
              kop("noc_write_tiles", "c", "t", cb=16, rows=1, cols=1), kop("noc_write_barrier"),
              kop("cb_pop_front", cb=16, pages=1)]
    program = ProgramSpec(reader, compute, writer, [cb(0, 2, fmt), cb(16, 2, "f16")], (2, 1),
                          [[[0], [1]], [[], []], [[0], [1]]], kind="copy", node="copy_1")
    x = np.ones((32, 64), np.float32)
    x[3, 40], x[4, 41] = 65280.0, -np.inf  # (65504 has no bf16 value: 65536)
    inputs = {"a": (Tensor("a", x.shape, fmt), x)}
    out, _ = run(inputs, [Tensor("c", x.shape, "f16")], program)
    assert out["c"].max() == 65280.0 and (out["c"] == -np.inf).sum() == 1  # (somewhere, if transposed)
    x[5, 42] = -70000.0
    with pytest.raises(DeviceFault) as info:
        run(inputs, [Tensor("c", x.shape, "f16")], program)
    check(str(info.value), F16_OVERFLOW, f"at core (0,0) and 1 more core, compute kernel, op ttkernel.{op}",
          'copy on a 2x1 grid, ONNX node(s) "copy_1"')
