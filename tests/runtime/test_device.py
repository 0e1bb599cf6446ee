"""Tests for ttc.runtime.device: banked memories, the allocation table, page addressing and faults,
and the numerics additions the interpreter uses (block reduce, scalar SFPU forms)."""

import numpy as np
import pytest

from ttc.ir.dialects.tt import E75, E150
from ttc.runtime import numerics as N
from ttc.runtime.device import Device, Fault, Memory, interleaved_size


def test_dram_grows_only_to_the_highest_allocation() -> None:
    device = Device(E150)
    assert device.dram.data.shape == (8, 0)
    device.dram.allocate(3 << 20, 2048, 100, "buffer w")
    assert device.dram.data.shape[0] == 8 and (3 << 20) + 13 * 2048 <= device.dram.data.shape[1] <= 8 << 20
    assert device.l1.data.shape == (E150.compute_cores, E150.l1_size)
    assert Device(E75).l1.data.shape[0] == 88


def test_interleaved_pages_round_robin_over_banks() -> None:
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    memory.allocate(4096, 2048, 20, "buffer x")
    assert interleaved_size(20, 2048, 8, 32) == 3 * 2048
    bank, offset = memory.locate(4096, np.arange(20)[None], 2048)
    np.testing.assert_array_equal(bank[0], np.arange(20) % 8)
    np.testing.assert_array_equal(offset[0], 4096 + (np.arange(20) // 8) * 2048)
    pages = np.arange(20 * 2048, dtype=np.int64).astype(np.uint8).reshape(1, 20, 2048)
    memory.write(bank, offset, pages)
    np.testing.assert_array_equal(memory.read(bank, offset, 2048), pages)
    assert memory.data[9 % 8, 4096 + 2048: 4096 + 4096].tolist() == pages[0, 9].tolist()


def test_locate_faults_name_the_reason_and_the_cores() -> None:
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    memory.allocate(0, 2048, 20, "buffer x")
    with pytest.raises(Fault, match=r"page 20 of 2048 bytes at base 0x0: buffer x at 0x0 has 20 pages") as info:
        memory.locate(0, np.array([[1, 2], [3, 20], [21, 4]]), 2048, "read")
    assert info.value.cores.tolist() == [False, True, True]
    with pytest.raises(Fault, match="0x8000 is not inside any allocated DRAM buffer"):
        memory.locate(np.array([0, 0x8000]), np.array([[0], [0]]), 2048)
    with pytest.raises(Fault, match="page -1"):
        memory.locate(0, np.array([[-1]]), 2048)
    with pytest.raises(Fault, match="page 19 of 4096 bytes"):  # pages bigger than the buffer's
        memory.locate(0, np.array([[19]]), 4096)


def test_allocation_table_rejects_overlap_misalignment_and_overflow() -> None:
    l1 = Memory("L1", 4, 1 << 20, 16, floor=0x2A580)
    l1.allocate(0x80000, 2048, 8, "buffer y")
    with pytest.raises(Fault, match=r"CB 3 at 0x80400 .* overlaps buffer y at 0x80000..0x81000 in L1"):
        l1.reserve(0x80400, 4096, "CB 3")
    with pytest.raises(Fault, match="not aligned to 16 bytes"):
        l1.reserve(0x30008, 64, "CB 1")
    with pytest.raises(Fault, match="below the first free L1 byte 0x2a580"):
        l1.reserve(0x1000, 64, "CB 1")
    with pytest.raises(Fault, match="overflows L1"):
        l1.reserve(0xFFF00, 512, "CB 2")
    l1.free(0x80000)
    l1.reserve(0x80400, 4096, "CB 3")
    with pytest.raises(Fault, match="no L1 allocation starts there"):
        l1.free(0x80000)


def test_cb_regions_are_not_buffers_for_the_noc() -> None:
    l1 = Memory("L1", 4, 1 << 20, 16, floor=0x2A580)
    l1.reserve(0x30000, 4096, "CB 0")
    with pytest.raises(Fault, match="not inside any allocated L1 buffer"):
        l1.locate(0x30000, np.array([[0]]), 2048)


def test_watched_ranges_become_dirty_when_written() -> None:
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    alloc = memory.allocate(0, 2048, 8, "buffer w")
    memory.watch("w", alloc.address, alloc.end)
    assert memory.is_clean("w", 0, alloc.end)
    bank, offset = memory.locate(0, np.arange(8)[None], 2048)
    memory.write(bank[:, 5:], offset[:, 5:], np.zeros((1, 3, 2048), np.uint8))
    assert not memory.is_clean("w", 0, alloc.end)
    memory.watch("w", alloc.address, alloc.end)
    memory.touch(alloc.end, alloc.end + 64)  # next to it, not over it
    assert memory.is_clean("w", 0, alloc.end)


def test_signature_names_the_set_of_live_buffers_and_keys_the_table_cache() -> None:
    """The signature depends on which buffers are live, not on the order they came in; a set seen before gets
    its cached buffer table, which is the one a fresh build gives; CB regions do not count."""
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    empty = memory.signature
    a = memory.allocate(0, 2048, 8, "buffer a")
    b = memory.allocate(4096, 2048, 20, "buffer b")
    both = memory.signature
    table = [column.tolist() for column in memory._buffer_table()]
    assert table == [[0, 4096], [2048, 4096 + 3 * 2048], [2048, 2048], [8, 20]]
    memory.free(0)
    assert memory.signature not in (empty, both)
    assert [column.tolist() for column in memory._buffer_table()] == [[4096], [4096 + 3 * 2048], [2048], [20]]
    memory.free(4096)
    assert memory.signature == empty and memory._buffer_table()[0].size == 0
    memory.add(b)
    memory.add(a)
    assert memory.signature == both
    assert [column.tolist() for column in memory._buffer_table()] == table
    memory.free(4096)
    memory.allocate(4096, 2048, 21, "buffer b'")  # the same address, one page more: another set
    assert memory.signature != both
    assert memory._buffer_table()[3].tolist() == [8, 21]
    memory.reserve(0x40000, 64, "CB 0")
    assert not memory.only_buffers and memory.signature != both


def test_free_buffers_at_once_is_freeing_them_one_by_one() -> None:
    """All the live buffers go in one pass (signature, table, addresses as after single frees); a subset, or a
    memory with a CB region too, takes the single frees; a buffer that is not live faults as `free` does."""
    memory = Memory("L1", 4, 1 << 20, 32)
    empty = memory.signature
    a = memory.allocate(0, 2048, 8, "buffer a")
    b = memory.allocate(8192, 2048, 20, "buffer b")
    memory._buffer_table()
    memory.free_buffers([b, a])
    assert memory.signature == empty and not memory.allocations and not memory._starts
    assert memory._buffer_table()[0].size == 0
    memory.add(a)
    memory.add(b)
    memory.reserve(0x40000, 64, "CB 0")
    memory.free_buffers([a])  # not everything: one by one
    assert sorted(memory.allocations) == [8192, 0x40000] and memory._starts == [8192, 0x40000]
    memory.free_buffers([b])  # the CB stays
    assert list(memory.allocations) == [0x40000] and memory.signature == empty
    with pytest.raises(Fault, match="no L1 allocation starts there"):
        memory.free_buffers([a])


def test_watch_bounds_skip_far_writes_but_not_near_ones() -> None:
    memory = Memory("DRAM", 8, 1 << 20, 32, grow=True)
    memory.watch("w", 4096, 8192)
    memory.watch("v", 16384, 20480)
    memory.touch(0, 4096)
    memory.touch(20480, 30000)
    memory.touch(8192, 16384)  # between the two ranges
    assert memory.is_clean("w", 4096, 8192) and memory.is_clean("v", 16384, 20480)
    memory.touch(20479, 20480)
    assert memory.is_clean("w", 4096, 8192) and not memory.is_clean("v", 16384, 20480)


def test_core_ids_place_the_grid_at_the_origin_row_major() -> None:
    device = Device(E150)
    assert device.core_ids(3, 2).tolist() == [0, 1, 2, 12, 13, 14]
    with pytest.raises(Fault, match="program grid 12x10 exceeds the device compute grid 12x9"):
        device.core_ids(12, 10)


# --- numerics additions -------------------------------------------------------------------------


@pytest.mark.parametrize("dim", ["row", "col", "scalar"])
@pytest.mark.parametrize("kind", ["sum", "max"])
def test_reduce_block_equals_successive_reduce_tiles(dim: str, kind: str) -> None:
    rng = np.random.default_rng(1)
    x = N.bf16_round(rng.standard_normal((3, 5, 32, 32)) * 4)
    dst = N.bf16_round(rng.standard_normal((3, 32, 32)))
    want = dst
    for t in range(5):
        want = N.reduce_tiles(want, x[:, t], dim, kind, 0.5, "hifi2")
    got = N.reduce_block(dst, x, dim, kind, 0.5, "hifi2")
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_sfpu_scalar_forms_compute_in_float32() -> None:
    x = np.array([1.0, -2.5, 3.0, 0.0, 256.0], np.float32)
    assert N.sfpu_unary(x, "add_scalar", 0.5).tolist() == [1.5, -2.0, 3.5, 0.5, 256.0]
    assert N.sfpu_unary(x, "mul_scalar", -2.0).tolist() == [-2.0, 5.0, -6.0, -0.0, -512.0]
    assert N.sfpu_unary(x, "sub_from_scalar", 1.0).tolist() == [0.0, 3.5, -2.0, 1.0, -255.0]
    assert N.sfpu_unary(x, "max_scalar", 0.0).tolist() == [1.0, 0.0, 3.0, 0.0, 256.0]
    assert N.sfpu_unary(np.float32(3.0), "pow_scalar", 2.0) == 9.0
    assert N.sfpu_unary(np.float32(256.0), "add_scalar", 0.9) == 256.0  # below half a bf16 ulp of 256
    assert N.sfpu_unary(np.float32(256.0), "add_scalar", 1.1) == 258.0
