"""Sharded L1 buffers in the emulated device: the page -> (core, offset) map of height and block shards,
host reads and writes through it, bounds faults, and the layout check of address generators."""

import numpy as np
import pytest

from ttc.ir.dialects.tt import E150
from ttc.runtime.device import Device, Fault, ShardSpec

PAGE = 2048


def test_height_shards_hold_full_width_row_bands() -> None:
    """6 x 2 tiles, 2 tile rows per shard on cores 0, 1, 2: page i = (r, c) lives on core r // 2."""
    l1 = Device(E150).l1
    spec = ShardSpec(cols=2, shard_rows=2, shard_cols=2, banks=(0, 1, 2))
    alloc = l1.allocate_sharded(E150.l1_reserved, PAGE, 12, spec, "buffer y")
    assert alloc.size == 4 * PAGE  # one shard per core, the same range on every core
    bank, offset = l1.locate(E150.l1_reserved, np.arange(12)[None], PAGE)
    np.testing.assert_array_equal(bank[0], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(offset[0], E150.l1_reserved + np.tile(np.arange(4), 3) * PAGE)
    assert l1.layout_at(E150.l1_reserved) == "height_sharded"


def test_block_shards_follow_the_2d_grid_on_the_device() -> None:
    """4 x 4 tiles in 2 x 2 shards on a 2 x 2 grid: shard (i, j) on grid core (x = j, y = i), whose device
    core is y * 12 + x on an e150."""
    device = Device(E150)
    banks = tuple(int(b) for b in device.core_ids(2, 2))
    assert banks == (0, 1, 12, 13)
    spec = ShardSpec(cols=4, shard_rows=2, shard_cols=2, banks=banks, layout="block_sharded")
    device.l1.allocate_sharded(E150.l1_reserved, PAGE, 16, spec, "buffer y")
    bank, offset = device.l1.locate(E150.l1_reserved, np.arange(16)[None], PAGE)
    np.testing.assert_array_equal(bank[0].reshape(4, 4), [[0, 0, 1, 1], [0, 0, 1, 1], [12, 12, 13, 13],
                                                          [12, 12, 13, 13]])
    np.testing.assert_array_equal((offset[0] - E150.l1_reserved).reshape(4, 4) // PAGE,
                                  [[0, 1, 0, 1], [2, 3, 2, 3], [0, 1, 0, 1], [2, 3, 2, 3]])
    data = np.arange(16 * PAGE, dtype=np.int64).astype(np.uint8).reshape(1, 16, PAGE)
    device.l1.write(bank, offset, data)
    np.testing.assert_array_equal(device.l1.read(bank, offset, PAGE), data)
    assert device.l1.data[13, E150.l1_reserved + 3 * PAGE] == data[0, 15, 0]  # tile (3, 3) is core 13's last


def test_pages_beyond_the_tensor_fault() -> None:
    l1 = Device(E150).l1
    l1.allocate_sharded(E150.l1_reserved, PAGE, 12, ShardSpec(2, 2, 2, (0, 1, 2)), "buffer y")
    with pytest.raises(Fault, match=r"out-of-bounds L1 read: page 12 of sharded buffer y at 0x2a580, which has "
                                    r"12 pages in 3 shards") as info:
        l1.locate(E150.l1_reserved, np.array([[0, 1], [12, 3]]), PAGE, "read")
    assert info.value.cores.tolist() == [False, True]


def test_more_shards_than_cores_is_a_fault() -> None:
    with pytest.raises(Fault, match="buffer y: 4 shards of 2x2 tiles need more than the 3 cores of its grid"):
        Device(E150).l1.allocate_sharded(E150.l1_reserved, PAGE, 16, ShardSpec(2, 2, 2, (0, 1, 2)), "buffer y")
