"""Semaphores and multicast (runtime/multicast.py, the native core's lockstep mode): a row multicast with
tt-metal's ready/valid handshake gives the same bytes, profile and faults on both emulators, its data is each
row's first tiles on every core of the row, and its counts charge the multicast bytes once per sender."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from multicast_programs import row_multicast
from runtime_helpers import Tensor, kop, run
from test_native_program import run_dual

from ttc.ir import parse_module, verify
from ttc.ir.diagnostics import IRError
from ttc.runtime.executor import using_emulator


def inputs(grid: tuple[int, int], blocks: int, tiles: int, seed: int = 0) -> dict:
    a = np.random.default_rng(seed).standard_normal((grid[1] * 32, blocks * tiles * 32)).astype(np.float32)
    return {"a": (Tensor("a", a.shape), a)}


def output(grid: tuple[int, int], blocks: int, tiles: int) -> Tensor:
    return Tensor("c", (blocks * grid[1] * 32, grid[0] * tiles * 32))


@pytest.mark.parametrize("grid, blocks, tiles", [((3, 2), 3, 2), ((4, 1), 5, 1), ((1, 3), 2, 1), ((8, 3), 2, 3)])
def test_row_multicast_matches_on_both_emulators(grid: tuple[int, int], blocks: int, tiles: int) -> None:
    feeds = inputs(grid, blocks, tiles)
    assert run_dual(feeds, [output(grid, blocks, tiles)], row_multicast(grid, blocks, tiles)) is None
    with using_emulator("reference"):
        out, ex = run(feeds, [output(grid, blocks, tiles)], row_multicast(grid, blocks, tiles))
    a = feeds["a"][1].astype(ml_dtypes.bfloat16).astype(np.float32)
    gx, gy = grid
    c = out["c"].reshape(blocks, gy, 32, gx, tiles * 32)
    for i in range(blocks):
        for y in range(gy):
            want = a[y * 32:(y + 1) * 32, i * tiles * 32:(i + 1) * tiles * 32]
            for x in range(gx):
                assert np.array_equal(c[i, y, :, x], want), (i, y, x)
    counts = ex.profile[0].counts
    tile, senders = 2048, gy
    sent = blocks * tiles * tile
    assert counts.dram_read == senders * sent  # each row's tiles read once, by its first core
    assert counts.link_bytes == (sent if gx > 1 else 0) and counts.mcast_fanout == max(gx - 1, 1)
    # per block: the senders' reads and multicasts are pages of all cores // cores (a page leaves its sender
    # once and enters each receiver: 1 + receivers per sender), the writes every core's own
    cores = gx * gy
    read, mcast = senders * tiles // cores, senders * tiles * gx // cores if gx > 1 else 0
    assert counts.noc_bytes == blocks * (read + mcast + tiles) * tile


def test_missing_increment_deadlocks_naming_core_kernel_and_semaphore() -> None:
    grid, blocks, tiles = (3, 2), 2, 1
    text = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)],
                    row_multicast(grid, blocks, tiles, drop="semaphore_inc"))
    assert text is not None and "deadlock" in text
    assert ("reader kernel on core (0,0): ttkernel.semaphore_wait waits for semaphore 0 to reach 2 (it holds 0)"
            in text)


def test_missing_valid_flag_deadlocks_on_a_receiver() -> None:
    """The sender multicasts without setting the receivers' valid semaphore: the first receiver is named."""
    grid, blocks, tiles = (3, 1), 1, 1
    program = row_multicast(grid, blocks, tiles)
    program.reader[-1] = program.reader[-1].replace("pages = 1, semaphore = 1,", "pages = 1, semaphore = -1,")
    text = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)], program)
    assert text is not None and "reader kernel on core (1,0): ttkernel.semaphore_wait waits for semaphore 1" in text


def test_a_push_before_the_receivers_wait_is_a_fault() -> None:
    """The receivers lose their wait for the valid semaphore: lockstep execution lands the multicast before they
    push anyway, so the push of pages they have not seen land is the fault (of every receiver)."""
    grid, blocks, tiles = (3, 2), 2, 1
    program = row_multicast(grid, blocks, tiles)
    program.reader[-1] = "\n".join(line for line in program.reader[-1].split("\n")
                                   if '"ttkernel.semaphore_wait"(%receiver)' not in line)
    assert program.reader[-1].count("semaphore_wait") == 1
    text = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)], program)
    assert text is not None and "cb_push_back of CB 0 before waiting for the multicast into it to land" in text
    assert "at core (1,0) and 3 more cores, reader kernel, CB 0, op ttkernel.cb_push_back" in text


def test_multicast_outside_the_grid_is_a_fault() -> None:
    grid, blocks, tiles = (3, 2), 2, 1
    text = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)],
                    row_multicast(grid, blocks, tiles, rect=(0, 1, 3, 1)))
    assert text is not None
    assert "multicast rectangle (0,1)-(3,1) is outside the program's 3x2 grid" in text
    assert "at core (0,0) and 1 more core, reader kernel, CB 0, op ttkernel.noc_mcast_cb" in text


def test_multicast_before_the_read_barrier_is_a_fault() -> None:
    grid, blocks, tiles = (2, 2), 1, 1
    text = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)],
                    row_multicast(grid, blocks, tiles, drop="noc_read_barrier"))
    assert text is not None and "noc_mcast_cb of CB 0 while NoC reads into it have not completed" in text


def test_multicast_outside_the_reserved_window_is_a_fault() -> None:
    """The receivers' L1 written by a multicast is their reserved CB window: a page past it is a fault."""
    grid, blocks, tiles = (2, 1), 1, 1
    program = row_multicast(grid, blocks, tiles)
    program.reader[-1] = program.reader[-1].replace("cb = 0, pages = 1, semaphore", "cb = 0, cb_offset = 1, "
                                                    "pages = 1, semaphore")
    text = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)], program)
    assert text is not None and "page offset 1 of CB 0 is outside the 1 page(s) reserved at the back" in text


def test_increment_of_a_core_outside_the_grid_is_a_fault() -> None:
    grid, blocks, tiles = (2, 2), 1, 1
    program = row_multicast(grid, blocks, tiles)
    program.runtime_args[0][3][4] = 5  # core (1,1) increments core (5,1)
    text = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)], program)
    assert text is not None and "semaphore increment of core (5,1) outside the program's 2x2 grid" in text
    assert "at core (1,1), reader kernel" in text


@pytest.mark.parametrize("line, message", [
    ('"ttkernel.semaphore_wait"() {semaphore = 4, value = 1} : () -> ()', "semaphore 4 is outside 0..3"),
    ('"ttkernel.noc_mcast_cb"(%i, %i, %i, %i) {cb = 0, pages = 0} : (index, index, index, index) -> ()',
     "'pages' must be positive"),
    ('"ttkernel.noc_mcast_cb"(%i, %i, %i, %i) {cb = 0, pages = 1, semaphore = 9} : (index, index, index, index) -> ()',
     "semaphore 9 is outside"),
])
def test_the_verifier_checks_the_inter_core_ops(line: str, message: str) -> None:
    text = ('module {\n  func.func @main() {\n    %i = "ttkernel.constant"() {value = 0} : () -> index\n'
            f"    {line}\n    func.return\n  }}\n}}\n")
    with pytest.raises(IRError, match=message):
        verify(parse_module(text))


def test_the_inter_core_ops_print_and_parse_back() -> None:
    lines = [kop("constant", out="i", value=0),
             kop("semaphore_set", semaphore=1, value=3), kop("semaphore_wait", "i", semaphore=2, value=1),
             kop("semaphore_inc", "i", "i", "i", semaphore=0, amount=2),
             kop("noc_mcast_cb", "i", "i", "i", "i", "i", cb=3, pages=2, semaphore=1, value=1)]
    text = "module {\n  func.func @main() {\n" + "\n".join(lines) + "\n    func.return\n  }\n}\n"
    module = parse_module(text)
    verify(module)
    assert str(parse_module(str(module))) == str(module)


def test_the_earliest_fault_of_a_lockstep_program_wins() -> None:
    """The native core runs a multicast program core by core between its inter-core ops: core (0,0)'s writer
    writes past the output in its second block, core (2,1)'s in its first, and the interpreter (all cores op by
    op) meets core (2,1)'s fault first, so both emulators report that one."""
    grid, blocks, tiles = (3, 2), 2, 1
    program = row_multicast(grid, blocks, tiles)
    total = blocks * grid[0] * grid[1] * tiles
    program.runtime_args[2][0] = [total - grid[0] * grid[1]]  # block 1 is past the end
    program.runtime_args[2][5] = [total]  # block 0 is past the end
    text = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)], program)
    assert text is not None and "out-of-bounds" in text and "at core (2,1), writer kernel" in text


@pytest.mark.parametrize("rect", [(0, 0, 2, 1), (1, 0, 2, 1)])
def test_overlapping_multicasts_keep_the_grid_order(rect: tuple[int, int, int, int]) -> None:
    """Senders whose rectangles share receivers (or cover another sender) write the same places: their
    multicasts run one after another in grid order, on any thread count (disjoint ones run side by side on
    several threads), and both emulators end with the same bytes, profile or fault."""
    grid, blocks, tiles = (3, 2), 2, 1
    outcome = run_dual(inputs(grid, blocks, tiles), [output(grid, blocks, tiles)],
                       row_multicast(grid, blocks, tiles, rect=rect))
    assert outcome is None or "core" in outcome
