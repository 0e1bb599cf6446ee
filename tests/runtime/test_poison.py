"""Lazy poison (runtime/device.py Memory.poison): a fresh buffer's whole 256-byte blocks are only marked, and
whoever touches them first (Python through `Memory.data` and the host buffer paths, the native core per NoC
page) sees the POISON bytes an eager fill would have left. Both emulators must leave the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import Tensor, build, eltwise_program

import ttc
from ttc import zoo
from ttc.runtime.device import POISON, POISON_BLOCK, Allocation, Memory
from ttc.runtime.executor import Executor


def test_marked_blocks_read_as_an_eager_fill() -> None:
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    memory._ensure_capacity(1 << 16)
    pattern = (np.arange(memory.data.size) % 251).astype(np.uint8).reshape(memory.data.shape)
    memory.data[...] = pattern
    alloc = Allocation(POISON_BLOCK + 96, 5 * POISON_BLOCK + 64, "buffer")  # partial blocks at both ends
    memory.poison(alloc)
    assert memory._marks.any(), "whole blocks are marked, not filled"
    want = pattern.copy()
    want[:, alloc.address:alloc.end] = POISON
    assert np.array_equal(memory.data, want)
    assert not memory._marks.any() and not memory._marked


def test_host_buffer_paths_fill_only_what_they_touch() -> None:
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    first = memory.allocate(0, 2048, 16, "first")
    second = memory.allocate(first.end, 2048, 16, "second")
    memory.poison(first)
    memory.poison(second)
    pages = np.arange(16 * 2048, dtype=np.uint64).astype(np.uint8).reshape(16, 2048)
    memory.write_buffer(first, pages)
    assert np.array_equal(memory.read_buffer(first), pages)
    assert memory._marks[:, second.address // POISON_BLOCK:].any(), "the other buffer stays marked"
    assert (memory.read_buffer(second) == POISON).all()


def test_dram_growth_keeps_the_marks() -> None:
    memory = Memory("DRAM", 8, 1 << 30, 32, grow=True)
    alloc = memory.allocate(0, 2048, 64, "small")
    memory.poison(alloc)
    memory.allocate(4 << 20, 2048, 8, "far")  # grows the banks past the first MiB
    assert memory.data.shape[1] > 1 << 20
    assert (memory.data[:, alloc.address:alloc.end] == POISON).all()


def _unwritten_operand_module(tiles: int, cores: int):
    """c = a + d with d an output nobody writes: the program reads poisoned pages. Buffers sit at 64-byte
    steps, so tile pages straddle the 256-byte blocks (partial blocks are filled, whole ones cleared)."""
    a = Tensor("a", (32, 32 * tiles), address=64)
    d = Tensor("d", (32, 32 * tiles), address=64 + 4 * 2048 + 192)
    c = Tensor("c", (32, 32 * tiles), address=64 + 8 * 2048 + 320)
    program = eltwise_program((cores, 1), per_core=tiles // cores)
    program.buffers = ["a", "d", "c"]
    return build([a], [c, d], [program])


@pytest.mark.parametrize("threads", [1, 2])
def test_programs_reading_poisoned_pages_match_the_reference(threads: int) -> None:
    module = _unwritten_operand_module(tiles=12, cores=4)
    feeds = {"a": np.random.default_rng(0).standard_normal((32, 384)).astype(np.float32)}
    runs = {}
    for emulator in ("reference", "native"):
        executor = Executor(module, {}, emulator=emulator, threads=threads)
        for _ in range(2):  # the second run poisons buffers whose blocks the first one filled or cleared
            outputs = executor.run(feeds)
        runs[emulator] = (outputs, executor.device.dram.data.copy(), executor.device.l1.data.copy())
    (want_out, want_dram, want_l1), (got_out, got_dram, got_l1) = runs["reference"], runs["native"]
    assert np.isnan(got_out["c"]).all() and np.isnan(got_out["d"]).all()
    for name in want_out:
        assert np.array_equal(want_out[name].view(np.uint8), got_out[name].view(np.uint8)), name
    assert np.array_equal(want_dram, got_dram)
    assert np.array_equal(want_l1, got_l1)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_buffer_left_partly_poisoned_reads_as_poison_on_every_read(threads: int) -> None:
    """The native core looks at a buffer region's marks once per run and, finding none, skips each page's look
    (program.cpp: Core::clean_range). Here a first program writes only d's first 8 tiles (bank 0-7's first page),
    so d keeps marked blocks only in banks 0-3 past their first page; a second program reads all of d, three
    tiles a core: every read of the unwritten tiles must still see POISON, as the reference sees it (the first
    run's too, where the bytes under the marks are still zero)."""
    a = Tensor("a", (32, 32 * 12), address=64)
    d = Tensor("d", (32, 32 * 12), address=64 + 12 * 2048 + 192)
    c = Tensor("c", (32, 32 * 12), address=64 + 24 * 2048 + 320)
    first = eltwise_program((4, 1), per_core=2, node="add_1")
    first.buffers = ["a", "a", "d"]
    second = eltwise_program((4, 1), per_core=3, node="add_2")
    second.buffers = ["a", "d", "c"]
    module = build([a], [c, d], [first, second])
    feeds = {"a": np.random.default_rng(2).standard_normal((32, 384)).astype(np.float32)}
    runs = {}
    for emulator in ("reference", "native"):
        executor = Executor(module, {}, emulator=emulator, threads=threads)
        runs[emulator] = [executor.run(feeds) for _ in range(2)]
        runs[emulator].append((executor.device.dram.data.copy(), executor.device.l1.data.copy()))
    for want, got in zip(runs["reference"][:2], runs["native"][:2], strict=True):
        assert np.isnan(got["c"][:, 256:]).all() and not np.isnan(got["c"][:, :256]).any()
        for name in want:
            assert np.array_equal(want[name].view(np.uint8), got[name].view(np.uint8)), name
    assert np.array_equal(runs["reference"][2][0], runs["native"][2][0])
    assert np.array_equal(runs["reference"][2][1], runs["native"][2][1])

def test_a_whole_model_leaves_the_same_memory_on_both_emulators() -> None:
    compiled = ttc.compile(zoo.mlp(batch=1))
    name = compiled.module.function("main").arg_attrs(0)["ttir.name"]
    feeds = {name: np.random.default_rng(1).standard_normal((1, 784)).astype(np.float32)}
    memories = {}
    for emulator in ("reference", "native"):
        executor = Executor(compiled.module, compiled.device_weights, emulator=emulator)
        executor.run(feeds)
        executor.run(feeds)
        memories[emulator] = (executor.device.dram.data.copy(), executor.device.l1.data.copy())
    assert np.array_equal(memories["reference"][0], memories["native"][0])
    assert np.array_equal(memories["reference"][1], memories["native"][1])


def test_a_bank_size_off_the_block_grid() -> None:
    memory = Memory("L1", 4, 0x2A580 + 4096, 32)  # the bytes past the last whole block are never marked
    alloc = memory.allocate(0x2A580 - 1024, 2048, 2, "buffer")
    memory.poison(alloc)
    assert memory._marks.any()
    assert (memory.data[:, alloc.address:alloc.end] == POISON).all()
    assert not memory.data[:, :alloc.address].any() and not memory.data[:, alloc.end:].any()
