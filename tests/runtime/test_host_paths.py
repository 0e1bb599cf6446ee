"""The executor's per-run fast paths: what a native run keeps from one run to the next (the buffers' DeviceBuffer,
the encoded programs, their profiles, @main's schedule) and the host transfers done in native code
(`native_program.write_tensor`, `read_tensor`, `poison`, `im2col`: runtime/native/bind_host.cpp). Each must give what the
Python definition gives: the same bytes, poison marks and dirty watches, and runs whose inputs, weights or
device bytes changed must not see a stale copy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ttc
from ttc.ir.dialects.ttir import im2col_rows
from ttc.runtime import native_program
from ttc.runtime.device import POISON, POISON_BLOCK, Allocation, Memory
from ttc.runtime.formats import DataFormat
from ttc.runtime.layout import pages_to_tensor, tensor_to_pages

MLP = "examples/mlp.onnx"


def _memory_pair(banks: int = 8) -> tuple[Memory, Memory]:
    """Two equal memories with a byte pattern in them (so that untouched bytes are visible)."""
    pair = []
    for _ in range(2):
        memory = Memory("DRAM", banks, 1 << 20, 32, grow=True)
        memory._ensure_capacity(1 << 17)
        memory.data[...] = (np.arange(memory.data.size) % 251).astype(np.uint8).reshape(memory.data.shape)
        pair.append(memory)
    return pair[0], pair[1]


def _same(a: Memory, b: Memory) -> None:
    assert np.array_equal(a._data, b._data), "bytes differ"
    assert np.array_equal(a._marks, b._marks), "poison marks differ"
    assert a._marked == b._marked and a.dirty == b.dirty


@pytest.mark.parametrize("fmt", ["bf16", "f32", "bfp8_b", "bfp4_b"])
@pytest.mark.parametrize("shape", [(1, 784), (3, 40, 70), (64, 32), (5,), ()])
@pytest.mark.parametrize("address", [0, 96, 2 * POISON_BLOCK + 32])
def test_native_host_transfers_match_the_python_paths(fmt: str, shape: tuple[int, ...], address: int) -> None:
    """write_tensor / read_tensor / poison against tensor_to_pages + Memory.write_buffer, Memory.read_buffer +
    pages_to_tensor and Memory.poison: bytes, marks (a poisoned buffer with partial blocks at both ends, a
    neighbour poisoned too) and the dirty marks of a watched constant beside it."""
    rng = np.random.default_rng(sum(shape) + address)
    host = (rng.standard_normal(shape) * 10).astype(np.float32)
    pages = tensor_to_pages(host, fmt)
    python, native = _memory_pair()
    allocs = []
    for memory in (python, native):
        alloc = memory.allocate(address, pages.shape[1], pages.shape[0], "buffer")
        neighbour = memory.allocate(-(-alloc.end // 32) * 32 + 64, 2048, 9, "neighbour")
        memory.watch("constant", neighbour.address, neighbour.end)
        allocs.append((alloc, neighbour))
    (alloc, neighbour), (alloc2, neighbour2) = allocs
    python.poison(alloc)
    python.poison(neighbour)
    native_program.poison(native, alloc2)
    native_program.poison(native, neighbour2)
    _same(python, native)

    python.write_buffer(alloc, pages)
    python.touch(alloc.address, alloc.address + -(-alloc.num_pages // python.banks) * alloc.page_size)
    assert native_program.write_tensor(native, alloc2, host, fmt, "tile") == pages.nbytes
    _same(python, native)

    want = pages_to_tensor(python.read_buffer(alloc), shape, fmt)
    got = native_program.read_tensor(native, alloc2, shape, fmt, "tile")
    assert got is not None and got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32))
    # the neighbour is still poisoned (marked), and reads POISON on both
    assert (python.read_buffer(neighbour) == POISON).all() and (native.read_buffer(neighbour2) == POISON).all()
    _same(python, native)


def test_native_read_fills_marked_blocks_as_the_python_read() -> None:
    """Reading a buffer nobody wrote: both paths fill its marked blocks (and clear the memory's flag when the
    fill covered every mark)."""
    python, native = _memory_pair()
    for memory in (python, native):
        memory.allocate(0, 2048, 16, "unwritten")
    python.poison(python.allocations[0])
    native_program.poison(native, native.allocations[0])
    want = pages_to_tensor(python.read_buffer(python.allocations[0]), (128, 128), "bf16")
    got = native_program.read_tensor(native, native.allocations[0], (128, 128), "bf16", "tile")
    assert np.isnan(want).all() and np.array_equal(np.isnan(got), np.isnan(want))
    _same(python, native)


def test_native_transfers_leave_other_buffers_to_the_python_paths() -> None:
    """Row-major, Int32, Float16 and sharded or dead buffers are not the native paths' (the caller falls back)."""
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    alloc = memory.allocate(0, 4 * 16, 4, "rows")
    assert native_program.write_tensor(memory, alloc, np.zeros((4, 16), np.int32), "i32", "row_major") == 0
    tiles = memory.allocate(4096, 4096, 1, "i32 tiles")
    assert native_program.write_tensor(memory, tiles, np.zeros((32, 32), np.int32), "i32", "tile") == 0
    assert native_program.read_tensor(memory, tiles, (32, 32), "i32", "tile") is None
    half = memory.allocate(8192, DataFormat.FLOAT16.tile_bytes, 1, "f16")
    assert native_program.read_tensor(memory, half, (32, 32), "f16", "tile") is None
    dead = Allocation(1 << 16, 2048, "freed", 2048, 1)
    assert native_program.read_tensor(memory, dead, (32, 32), "bf16", "tile") is None


def _mlp_inputs(compiled: ttc.CompiledModel, seed: int) -> dict[str, np.ndarray]:
    [spec] = compiled.manifest["inputs"]
    return {spec["name"]: np.random.default_rng(seed).standard_normal(spec["shape"]).astype(np.float32)}


def _bits(outputs: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: np.ascontiguousarray(value).tobytes() for name, value in outputs.items()}


def test_repeated_native_runs_with_new_inputs_give_the_references_bits() -> None:
    """Runs 2..4 (everything cached: buffers, encodings, profiles) with different inputs each give the reference
    emulator's bits for those inputs, and profiles equal to the reference's."""
    native, reference = ttc.compile(MLP), ttc.compile(MLP)
    for seed in range(4):
        feeds = _mlp_inputs(native, seed)
        got = native.run(feeds, emulator="native", threads=1)
        want = reference.run(feeds, emulator="reference")
        assert _bits(got) == _bits(want), f"run {seed}"
        assert native.profile == reference.profile
    outputs = [_bits(native.run(_mlp_inputs(native, seed), emulator="native")) for seed in (7, 8)]
    assert outputs[0] != outputs[1], "different inputs must give different outputs (nothing stale)"


def test_device_bytes_changed_between_runs_are_not_stale() -> None:
    """A weight overwritten in DRAM between runs is written again (its watch goes dirty), and bytes scribbled
    over the activations between runs are poisoned again: the run gives the first run's bits."""
    compiled = ttc.compile(MLP)
    feeds = _mlp_inputs(compiled, 3)
    want = _bits(compiled.run(feeds, emulator="native", threads=1))
    executor = compiled.executor()
    dram = executor.device.dram
    ranges = list(dram._watch.values())
    assert ranges, "the weights are watched"
    for start, end in ranges:  # every weight overwritten from the host side
        dram.data[:, start:end] = 0x3C
        dram.touch(start, end)
    dram.data[:, max(end for _, end in ranges):] = 0x7E  # and everything above the weights (activations)
    executor.device.l1.data[...] = 0x41
    assert _bits(compiled.run(feeds, emulator="native")) == want


def test_buffers_and_profiles_are_kept_across_runs() -> None:
    """A second run reuses each create_buffer's DeviceBuffer and each program's profile record; the buffers are
    freed after every run (nothing live between runs)."""
    compiled = ttc.compile(MLP)
    compiled.run(_mlp_inputs(compiled, 1), emulator="native", threads=1)
    executor = compiled.executor()
    buffers = {op: spec.buffer for op, spec in executor._buffer_specs.items()}
    profiles = list(compiled.profile)
    assert all(buffer is not None for buffer in buffers.values())
    compiled.run(_mlp_inputs(compiled, 2), emulator="native")
    assert {op: spec.buffer for op, spec in executor._buffer_specs.items()} == buffers
    assert all(a is b for a, b in zip(compiled.profile, profiles, strict=True))
    assert not executor._live and not executor.device.dram._buffers


@pytest.mark.parametrize("disjoint", [True, False])
def test_touch_marks_exactly_the_watched_ranges_it_meets(disjoint: bool) -> None:
    """`Memory.touch` (bisection over disjoint watched ranges, else a comparison with all) marks dirty exactly the
    ranges with start < end' and start' < end, empty ranges and touches included."""
    rng = np.random.default_rng(5 + disjoint)
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    ranges, at = {}, 0
    for i in range(40):
        start = at + int(rng.integers(0, 3)) * 32 if disjoint else int(rng.integers(0, 4000))
        end = start + int(rng.integers(0, 4)) * 32
        ranges[f"c{i}"] = (start, end)
        memory.watch(f"c{i}", start, end)
        at = end
    assert (memory._watch_sorted is not None) == disjoint
    for _ in range(300):
        start = int(rng.integers(-64, max(at, 4000) + 64))
        end = start + int(rng.integers(0, 200))
        memory.dirty = set()
        memory.touch(start, end)
        assert memory.dirty == {k for k, (s, e) in ranges.items() if start < e and s < end}, (start, end)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 9),
       w=st.integers(1, 9), kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)), pads=st.tuples(*[st.integers(0, 2)] * 4),
       dilations=st.tuples(st.integers(1, 2), st.integers(1, 2)), float64=st.booleans())
def test_native_im2col_is_the_definitions(seed, n, c, h, w, kernel, strides, pads, dilations, float64) -> None:
    """The host's im2col matrix (write_buffer {window}) in native code gives `ttir.im2col_rows`'s bits for any
    window (strides, asymmetric pads, dilations, batches) and NaN, inf and -0 values; a float64 input as float32
    (the write packs a float format), a window without a position in the images an error."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float64 if float64 else np.float32)
    x[rng.random(x.shape) < 0.1] = rng.choice([np.nan, np.inf, -np.inf, -0.0])
    window = (*kernel, *strides, *pads, *dilations)
    span_h = h + pads[0] + pads[2] - (kernel[0] - 1) * dilations[0] - 1
    span_w = w + pads[1] + pads[3] - (kernel[1] - 1) * dilations[1] - 1
    if span_h < 0 or span_w < 0:
        with pytest.raises(ValueError, match="no position"):
            native_program.im2col(x, window)
        return
    want = im2col_rows(x, window).astype(np.float32)
    got = native_program.im2col(x, window)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
