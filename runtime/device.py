"""The emulated Grayskull's memories: 8 DRAM channels and the L1 of every compute core.

Both are *banked* byte arrays `[banks, capacity]` with one allocation table each. Allocation is in
lockstep: a buffer at `address` owns [address, address + size) in every bank. Interleaved buffers put
page i in bank i % banks at address + (i // banks) * page_size; the DRAM banks are the 8 channels,
the L1 banks are the compute cores in row-major order (bank b = core (b % grid_x, b // grid_x)).

Sharded buffers (L1 only) have a `ShardSpec`: tile page i (row r = i // cols, column c = i % cols of
the tensor's tiles, batches stacked along the rows) lives in shard (r // shard_rows) * shards_per_row +
c // shard_cols, held by the core `banks[shard]`, at address + ((r % shard_rows) * shard_cols +
c % shard_cols) * page_size. Like every L1 buffer it takes the same address range in every core.

Every NoC access goes through `Memory.locate`, which checks each page against the buffer table: an
address outside any buffer, or a page beyond the buffer's pages, is a `Fault`. The host reads and writes
a live interleaved buffer whole, as a view of its own byte range (`read_buffer`, `write_buffer`). Circular
buffers are per-core L1 regions the running program reserves (`reserve`), so a CB can overlap
neither another CB nor a live L1 buffer.

DRAM grows to the highest allocated address (a model never touches 8 GiB); L1 is allocated once with
np.zeros, whose untouched pages the OS never makes resident.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import mmap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ttc.ir.dialects.tt import DeviceAttr

_DRAM_GROWTH = 1 << 20  # grow DRAM banks in MiB steps (at least doubling)
POISON = 0xFF  # the byte a fresh buffer holds until something writes it (NaN in bf16, float32 and bfp)
POISON_BLOCK = 256  # poisoning marks blocks of this many bytes (per bank) and fills them when first touched


class Fault(Exception):
    """A device fault before context is added: what happened, and which cores (bool mask) did it.

    The interpreter and the executor turn it into a `DeviceFault` naming core, kernel, op and node.
    """

    def __init__(self, what: str, cores: np.ndarray | None = None, cb: int | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.cores = cores
        self.cb = cb


@dataclass(frozen=True)
class ShardSpec:
    """Where the tile pages of a sharded buffer live: shards of shard_rows x shard_cols tiles, row-major over
    the tensor's (rows x cols) tiles, shard k on L1 bank (core) banks[k]."""

    cols: int
    shard_rows: int
    shard_cols: int
    banks: tuple[int, ...]
    layout: str = "height_sharded"

    @property
    def shards_per_row(self) -> int:
        return -(-self.cols // self.shard_cols)

    def shard_bytes(self, page_size: int, alignment: int) -> int:
        size = self.shard_rows * self.shard_cols * page_size
        return -(-size // alignment) * alignment


@dataclass(frozen=True)
class Allocation:
    """`size` bytes at `address` in every bank: an interleaved buffer, or a CB region (no pages)."""

    address: int
    size: int
    label: str
    page_size: int = 0
    num_pages: int = 0
    is_cb: bool = False
    shard: ShardSpec | None = None

    @functools.cached_property
    def end(self) -> int:
        return self.address + self.size

    @functools.cached_property
    def signature(self) -> tuple[int, int]:
        """Two independent 64-bit hashes of what a buffer table holds of it (see `Memory.signature`)."""
        row = (self.address, self.size, self.page_size, self.num_pages, self.shard)
        return hash(row), hash((row, 0x5BD1E995))


def interleaved_size(num_pages: int, page_size: int, banks: int, alignment: int) -> int:
    """Bytes per bank of an interleaved buffer (pages rounded up to whole rows, then aligned)."""
    size = -(-num_pages // banks) * page_size
    return -(-size // alignment) * alignment


def zeroed_banks(banks: int, size: int) -> np.ndarray:
    """A zero-filled uint8 array [banks, size] whose pages the OS provides on first touch, in small pages.

    The memories are large (L1: 108 MiB) and sparsely used. With transparent huge pages on, numpy's zeroed
    arrays are backed by 2 MiB pages, and the first write into each bank's few used bytes zeroes a whole huge
    page: 0.17 s for a first write across the L1 banks, against 0.4 ms with 4 KiB pages.

    Banks lie `BANK_SKEW` bytes further apart than their size (the array is a view with that row stride), so
    that the same address in different banks is not the same host cache set: with banks a power of two apart,
    a read gathering rows from many cores' L1 (an im2col lookup) keeps evicting its own lines. Only host
    pointers see the skew; addresses, bytes and every result are the same."""
    if not banks * size:
        return np.zeros((banks, size), dtype=np.uint8)
    stride = size + BANK_SKEW
    if not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.zeros((banks, stride), dtype=np.uint8)[:, :size]
    region = mmap.mmap(-1, banks * stride)
    region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype=np.uint8).reshape(banks, stride)[:, :size]


# 1237 (a prime) cache lines: bank b starts b * 1237 lines past a power-of-two multiple, spreading the banks'
# equal addresses over the cache sets of every power-of-two period of sets.
BANK_SKEW = 1237 * 64


_TABLE_CACHE = 4096  # buffer tables kept per memory (one per distinct set of live buffers)


class Memory:
    """A banked memory with an allocation table; all reads and writes are vectorised over pages."""

    def __init__(self, name: str, banks: int, bank_size: int, alignment: int, floor: int = 0,
                 grow: bool = False) -> None:
        self.name = name
        self.banks = banks
        self.bank_size = bank_size
        self.alignment = alignment
        self.floor = floor  # lowest allocatable address (firmware below it in L1)
        self.grow = grow
        self._data = zeroed_banks(banks, 0 if grow else bank_size)
        # Lazy poison: 1 marks a block of POISON_BLOCK bytes of a bank that holds POISON bytes not yet written
        # (`poison`). Whoever touches the bytes fills the block first (`data`, `_materialize`; the native core
        # per page, or skips the fill when a write covers the whole block), so every observer sees the bytes an
        # eager fill would have left.
        self._marks = np.zeros((banks, self._data.shape[1] // POISON_BLOCK), dtype=np.uint8)
        self._marked = False  # some mark may be set
        self._block_view: tuple[np.ndarray | None, np.ndarray | None] = (None, None)  # data, `_blocks` of it
        self.allocations: dict[int, Allocation] = {}
        self._starts: list[int] = []  # sorted addresses of all allocations (CBs too), for overlap checks
        self._table: tuple[np.ndarray, ...] = ()
        self._buffers: dict[int, Allocation] = {}  # address -> buffer (not a CB)
        self._sharded: dict[int, Allocation] = {}  # address -> sharded buffer
        self._stale = True  # the table needs rebuilding (a buffer was added or freed)
        self.version = 0  # counts buffer (not CB) allocations and frees
        # The set of live buffers as a 128-bit key, kept by XOR as buffers come and go, so that a schedule that
        # repeats each run finds its tables (and its CB placement checks) in caches instead of rebuilding them.
        self.signature = (0, 0)
        self._tables: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        self._watch: dict[str, tuple[int, int]] = {}  # ranges whose contents someone relies on
        self._watch_ranges = np.zeros((0, 2), dtype=np.int64)
        self._watch_low = self._watch_high = 0  # the watched ranges lie inside [low, high)
        self._watch_keys: list[str] = []
        self._watch_sorted: tuple[list[int], list[int], list[str]] | None = None  # see `watch`
        self.dirty: set[str] = set()

    @property
    def data(self) -> np.ndarray:
        """The bytes [banks, capacity], every poisoned block filled (see `poison`)."""
        if self._marked:
            self._materialize(0, self._data.shape[1])
        return self._data

    def _materialize(self, start: int, end: int) -> None:
        """Fill the marked blocks that meet bytes [start, end) of any bank with POISON and clear their marks."""
        if not self._marked:
            return
        lo, hi = start // POISON_BLOCK, -(-end // POISON_BLOCK)
        marks = self._marks[:, lo:hi]
        if marks.any():
            self._blocks()[:, lo:hi][marks.view(bool)] = POISON
            marks[...] = 0
        if lo == 0 and hi >= self._marks.shape[1]:
            self._marked = False

    def _blocks(self) -> np.ndarray:
        """The bytes as POISON_BLOCK blocks [banks, blocks, POISON_BLOCK] (a view, made once per data array)."""
        data, blocks = self._block_view
        if data is not self._data:
            data = self._data
            blocks = np.lib.stride_tricks.as_strided(  # any capacity
                data, (self.banks, self._marks.shape[1], POISON_BLOCK), (data.strides[0], POISON_BLOCK, 1))
            self._block_view = (data, blocks)
        return blocks

    # -- allocation table ---------------------------------------------------------------------

    def allocate(self, address: int, page_size: int, num_pages: int, label: str) -> Allocation:
        """Register an interleaved buffer of `num_pages` pages at `address` (in every bank)."""
        size = interleaved_size(num_pages, page_size, self.banks, self.alignment)
        return self._add(Allocation(address, size, label, page_size, num_pages))

    def allocate_sharded(self, address: int, page_size: int, num_pages: int, shard: ShardSpec,
                         label: str) -> Allocation:
        """Register a sharded buffer: one shard's bytes at `address` in every bank (the shard cores use theirs)."""
        rows = -(-num_pages // shard.cols)
        shards = -(-rows // shard.shard_rows) * shard.shards_per_row
        if shards > len(shard.banks):
            raise Fault(f"{label}: {shards} shards of {shard.shard_rows}x{shard.shard_cols} tiles need more than "
                        f"the {len(shard.banks)} cores of its grid")
        size = shard.shard_bytes(page_size, self.alignment)
        return self._add(Allocation(address, size, label, page_size, num_pages, shard=shard))

    def layout_at(self, base: int | np.ndarray) -> str:
        """'interleaved', or the sharded layout of the buffer starting at `base`."""
        if not self._sharded:
            return "interleaved"
        alloc = self._sharded.get(base if isinstance(base, int) else int(np.asarray(base).flat[0]))
        return alloc.shard.layout if alloc is not None and alloc.shard is not None else "interleaved"

    def reserve(self, address: int, size: int, label: str) -> Allocation:
        """Register a per-core region (a circular buffer) at `address`."""
        self.touch(address, address + size)  # the program will write it
        return self._add(Allocation(address, size, label, is_cb=True))

    def add(self, alloc: Allocation) -> Allocation:
        """Register an allocation made earlier by `allocate` or `allocate_sharded` (and since freed) again: how a
        schedule that runs many times re-creates its buffers without working them out each time."""
        address, end, starts = alloc.address, alloc.end, self._starts
        below = bisect.bisect_left(starts, end)  # allocations starting before alloc ends
        if alloc.is_cb or address % self.alignment or address < self.floor or end > self._data.shape[1] \
                or address in self.allocations or (below and self.allocations[starts[below - 1]].end > address):
            return self._add(alloc)  # anything but a well-placed buffer in free space, as `_add` handles it
        starts.insert(below, address)  # no allocation starts inside [address, end): `below` is its place
        self.allocations[address] = self._buffers[address] = alloc
        if alloc.shard is not None:
            self._sharded[address] = alloc
        first, second = self.signature  # `_sign` inline (a schedule re-adds every buffer on every run)
        mine = alloc.signature
        self.signature = (first ^ mine[0], second ^ mine[1])
        self._stale = True
        self.version += 1
        return alloc

    def _add(self, alloc: Allocation) -> Allocation:
        if alloc.address % self.alignment or alloc.address < self.floor or alloc.end > self.bank_size:
            self._misplaced(alloc)
        below = bisect.bisect_left(self._starts, alloc.end)  # allocations starting before alloc ends
        if below and self.allocations[self._starts[below - 1]].end > alloc.address:  # they do not overlap,
            for other in self.allocations.values():  # so only the last of them can reach into alloc
                if alloc.address < other.end and other.address < alloc.end:
                    raise Fault(f"{self._what(alloc)} overlaps {other.label} at {other.address:#x}..{other.end:#x} "
                                f"in {self.name}")
        self._ensure_capacity(alloc.end)
        replaced = self.allocations.get(alloc.address)  # an empty buffer can share its address
        if replaced is None:
            bisect.insort(self._starts, alloc.address)
        elif not replaced.is_cb:
            del self._buffers[alloc.address]
            self._sharded.pop(alloc.address, None)
            self._sign(replaced)
        self.allocations[alloc.address] = alloc
        if not alloc.is_cb:
            self._buffers[alloc.address] = alloc
            if alloc.shard is not None:
                self._sharded[alloc.address] = alloc
            self._sign(alloc)
        return alloc

    def _sign(self, alloc: Allocation) -> None:
        """A buffer was added or removed: toggle it in the signature (XOR of two independent 64-bit hashes)."""
        first, second = self.signature
        mine = alloc.signature
        self.signature = (first ^ mine[0], second ^ mine[1])
        self._stale = True
        self.version += 1

    @staticmethod
    def _what(alloc: Allocation) -> str:
        return f"{alloc.label} at {alloc.address:#x} ({alloc.size} bytes per bank)"

    def _misplaced(self, alloc: Allocation) -> None:
        """Raise the fault of an allocation that is misaligned, below the floor or past the end of a bank."""
        what = self._what(alloc)
        if alloc.address % self.alignment:
            raise Fault(f"{what} is not aligned to {self.alignment} bytes in {self.name}")
        if alloc.address < self.floor:
            raise Fault(f"{what} is below the first free {self.name} byte {self.floor:#x} (firmware reserved)")
        if alloc.end > self.bank_size:
            raise Fault(f"{what} overflows {self.name}: it ends at {alloc.end:#x}, beyond the "
                        f"{self.bank_size:#x} bytes of a bank")

    def poison(self, alloc: Allocation) -> None:
        """Fill a new buffer with POISON bytes, so a kernel that reads a page nobody wrote gets NaNs (bf16
        0xFFFF) and fails the golden check instead of silently reading a previous run's values or zeros.

        The whole blocks inside the buffer are only marked (most of a buffer is written by a program before
        anything reads it, and a whole-block write then needs no fill); the partial blocks at its ends are
        filled now."""
        self.touch(alloc.address, alloc.end)
        start, end = alloc.address, alloc.end
        first, last = -(-start // POISON_BLOCK), end // POISON_BLOCK  # the whole blocks [first, last)
        if first >= last:
            self._data[:, start:end] = POISON
            return
        self._data[:, start:first * POISON_BLOCK] = POISON
        self._data[:, last * POISON_BLOCK:end] = POISON
        self._marks[:, first:last] = 1
        self._marked = True

    def free(self, address: int) -> None:
        alloc = self.allocations.pop(address, None)
        if alloc is None:
            raise Fault(f"free of {address:#x}: no {self.name} allocation starts there")
        del self._starts[bisect.bisect_left(self._starts, address)]
        if not alloc.is_cb:
            del self._buffers[address]
            if self._sharded:
                self._sharded.pop(address, None)
            first, second = self.signature  # `_sign` inline (every run frees its buffers)
            mine = alloc.signature
            self.signature = (first ^ mine[0], second ^ mine[1])
            self._stale = True
            self.version += 1

    def free_buffers(self, allocs: Sequence[Allocation]) -> None:
        """`free` each of these registered buffers (distinct ones); when they are all the memory holds (the
        buffers a run leaves live), in one pass instead of one by one."""
        allocations = self.allocations
        if len(allocs) != len(allocations) or len(allocations) != len(self._buffers) \
                or any(allocations.get(alloc.address) is not alloc for alloc in allocs):
            for alloc in allocs:
                self.free(alloc.address)
            return
        self.signature = (0, 0)  # the XOR of every buffer's signature, toggled off: none is left
        allocations.clear()
        self._starts.clear()
        self._buffers.clear()
        self._sharded.clear()
        self._stale = True
        self.version += len(allocs)

    def regions_fit(self, regions: Sequence[tuple[int, int]]) -> bool:
        """Whether per-core regions (address, size) that `reserve` would accept (aligned, inside a bank, not
        overlapping each other) overlap no allocation now: the check `reserve` makes, without registering them."""
        for address, size in regions:
            end = address + size
            below = bisect.bisect_left(self._starts, end)
            if below and self.allocations[self._starts[below - 1]].end > address:
                return False
        return True

    def _buffer_table(self) -> tuple[np.ndarray, ...]:
        """Sorted arrays of the buffers (not CBs), for vectorised lookups; rebuilt on first use after a
        buffer was added or freed."""
        if self._stale:
            table = self._tables.get(self.signature)
            if table is None:
                rows = sorted((a.address, a.end, a.page_size, a.num_pages) for a in self._buffers.values())
                columns = np.array(rows, dtype=np.int64).reshape(len(rows), 4).T
                table = tuple(np.ascontiguousarray(column) for column in columns)
                if len(self._tables) >= _TABLE_CACHE:
                    self._tables.clear()
                self._tables[self.signature] = table
            self._table = table
            self._stale = False
        return self._table

    @property
    def only_buffers(self) -> bool:
        """No CB region is registered: `signature` then describes every allocation."""
        return len(self.allocations) == len(self._buffers)

    def _ensure_capacity(self, end: int) -> None:
        if end <= self._data.shape[1]:
            return
        capacity = min(max(end, 2 * self._data.shape[1]), self.bank_size)
        capacity = min(-(-capacity // _DRAM_GROWTH) * _DRAM_GROWTH, self.bank_size)
        grown = zeroed_banks(self.banks, capacity)
        grown[:, : self._data.shape[1]] = self._data
        self._data = grown
        marks = np.zeros((self.banks, capacity // POISON_BLOCK), dtype=np.uint8)
        marks[:, : self._marks.shape[1]] = self._marks
        self._marks = marks

    # -- page addressing ----------------------------------------------------------------------

    def locate(self, base: int | np.ndarray, pages: np.ndarray, page_size: int,
               access: str = "access") -> tuple[np.ndarray, np.ndarray]:
        """(bank, byte offset) of interleaved pages [cores, n] of the buffer at `base` (int or [cores]).

        Raises Fault (with the offending cores) when a page is not inside a buffer's real pages.
        """
        pages = np.asarray(pages, dtype=np.int64)
        sharded = self._sharded
        if sharded and np.size(base) and int(np.asarray(base).flat[0]) in sharded:
            return self._locate_sharded(sharded[int(np.asarray(base).flat[0])], base, pages, access)
        if isinstance(base, int) and pages.size:  # the common case: the start of a buffer, whole pages
            alloc = self._buffers.get(base)
            if alloc is not None and alloc.page_size == page_size and pages.min() >= 0 \
                    and pages.max() < alloc.num_pages:
                return pages % self.banks, base + (pages // self.banks) * page_size
        base_col = np.asarray(base, dtype=np.int64).reshape(-1, *([1] * (pages.ndim - 1)))
        base_col = np.broadcast_to(base_col, pages.shape)
        bank = pages % self.banks
        offset = base_col + (pages // self.banks) * page_size
        starts, ends, sizes, counts = self._buffer_table()
        slot = np.searchsorted(starts, base_col, side="right") - 1
        found = slot >= 0
        slot = np.maximum(slot, 0)
        if len(starts):
            found &= base_col < ends[slot]
            pages_in_bank = (counts[slot] - bank + self.banks - 1) // self.banks
            limit = starts[slot] + pages_in_bank * sizes[slot]
        else:
            limit = offset
        bad = ~found | (pages < 0) | (offset + page_size > limit)
        if bad.any():
            raise self._access_fault(access, base_col, pages, page_size, bad, found)
        return bank, offset

    def _locate_sharded(self, alloc: Allocation, base: int | np.ndarray, pages: np.ndarray,
                        access: str) -> tuple[np.ndarray, np.ndarray]:
        """(bank, offset) of tile pages of a sharded buffer: the shard's core and the page's place in it."""
        spec = alloc.shard
        assert spec is not None
        if np.any(np.asarray(base) != alloc.address):
            raise Fault(f"{self.name} {access}: cores disagree on the base of sharded {alloc.label}")
        rows, cols = np.divmod(pages, spec.cols)
        shard = (rows // spec.shard_rows) * spec.shards_per_row + cols // spec.shard_cols
        bad = (pages < 0) | (pages >= alloc.num_pages) | (shard >= len(spec.banks))
        if bad.any():
            page = int(pages[tuple(int(i[0]) for i in np.nonzero(bad))])
            cores = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
            raise Fault(f"out-of-bounds {self.name} {access}: page {page} of sharded {alloc.label} at "
                        f"{alloc.address:#x}, which has {alloc.num_pages} pages in {len(spec.banks)} shards",
                        cores=cores)
        bank = np.asarray(spec.banks, dtype=np.int64)[shard]
        offset = alloc.address + ((rows % spec.shard_rows) * spec.shard_cols + cols % spec.shard_cols) * alloc.page_size
        return bank, offset

    def _access_fault(self, access: str, base: np.ndarray, pages: np.ndarray, page_size: int,
                      bad: np.ndarray, found: np.ndarray) -> Fault:
        first = tuple(int(i[0]) for i in np.nonzero(bad))
        address, page = int(base[first]), int(pages[first])
        head = f"out-of-bounds {self.name} {access}: page {page} of {page_size} bytes at base {address:#x}"
        if not found[first]:
            reason = f"{address:#x} is not inside any allocated {self.name} buffer"
        else:
            alloc = next(a for a in self.allocations.values() if a.address <= address < a.end and not a.is_cb)
            reason = f"{alloc.label} at {alloc.address:#x} has {alloc.num_pages} pages of {alloc.page_size} bytes"
        cores = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
        return Fault(f"{head}: {reason}", cores=cores)

    def buffer_pages(self, alloc: Allocation) -> tuple[np.ndarray, np.ndarray]:
        """(bank, offset) of every page of a buffer, for host reads and writes."""
        return self.locate(alloc.address, np.arange(alloc.num_pages)[None], alloc.page_size)

    def write_buffer(self, alloc: Allocation, pages: np.ndarray) -> None:
        """Host write of all pages [num_pages, page_size] of a buffer."""
        if self._marked and alloc.shard is None:  # the whole rows of pages are written in every bank:
            whole_end = alloc.address + alloc.num_pages // self.banks * alloc.page_size  # no fill needed there
            first, last = -(-alloc.address // POISON_BLOCK), whole_end // POISON_BLOCK
            if first < last:
                self._marks[:, first:last] = 0
        region = self._interleaved_region(alloc)
        if region is None:
            bank, offset = self.buffer_pages(alloc)
            self.write(bank, offset, pages[None])
            return
        self.touch(alloc.address, alloc.address + region.shape[1] * alloc.page_size)
        whole = alloc.num_pages // self.banks  # page i is row i // banks of bank i % banks
        region[:, :whole] = pages[: whole * self.banks].reshape(whole, self.banks, alloc.page_size).swapaxes(0, 1)
        rest = pages[whole * self.banks:]
        if len(rest):
            region[: len(rest), whole] = rest

    def read_buffer(self, alloc: Allocation) -> np.ndarray:
        """Host read of all pages of a buffer: uint8 [num_pages, page_size]."""
        region = self._interleaved_region(alloc)
        if region is None:
            bank, offset = self.buffer_pages(alloc)
            return self.read(bank, offset, alloc.page_size)[0]
        return region.swapaxes(0, 1).reshape(-1, alloc.page_size)[: alloc.num_pages].copy()

    def _interleaved_region(self, alloc: Allocation) -> np.ndarray | None:
        """A live interleaved buffer's pages as a view [banks, rows, page_size] (None: sharded or not live,
        for `locate` to place or reject page by page)."""
        if alloc.shard is not None or alloc.is_cb or self.allocations.get(alloc.address) is not alloc:
            return None
        rows = -(-alloc.num_pages // self.banks)
        self._materialize(alloc.address, alloc.address + rows * alloc.page_size)
        region = self._data[:, alloc.address: alloc.address + rows * alloc.page_size]
        return region.reshape(self.banks, rows, alloc.page_size)

    # -- bytes ----------------------------------------------------------------------------------

    def read(self, bank: np.ndarray, offset: np.ndarray, size: int) -> np.ndarray:
        """Bytes [..., size] at (bank, offset) pairs of any shape (already located)."""
        rows, index = self._rows(bank, offset, size)
        return rows[index].reshape(*np.shape(offset), size)

    def write(self, bank: np.ndarray, offset: np.ndarray, data: np.ndarray, touch: bool = True) -> None:
        """Write data [..., size] at (bank, offset) pairs (already located); `touch`: mark the watched ranges
        between the lowest and highest written byte dirty (False: the caller marks them)."""
        size = data.shape[-1]
        if touch and self._watch and np.size(offset):
            self.touch(int(np.min(offset)), int(np.max(offset)) + size)
        rows, index = self._rows(bank, offset, size)
        rows[index] = data.reshape(*np.shape(offset), -1, rows.shape[-1])

    def _rows(self, bank: np.ndarray, offset: np.ndarray, size: int) -> tuple[np.ndarray, tuple]:
        """The memory as [banks, capacity / g, g] rows and the row index of every page's chunks.

        g is the page size when it divides every offset, else the largest power of two dividing the page
        size and every offset, so a bf16 tile at an aligned address is a few rows rather than 2048 bytes.
        """
        capacity = self.data.shape[1]
        offset = np.asarray(offset, dtype=np.int64)
        bits = int(np.bitwise_or.reduce(offset, axis=None)) if offset.size else 0
        if capacity % size == 0 and (bits % size == 0 if size & (size - 1) == 0 else not (offset % size).any()):
            granule = size
        else:
            common = size | capacity | bits  # a power of two divides all offsets iff it divides their or
            granule = common & -common
        rows = self.data.reshape(self.banks, capacity // granule, granule)
        chunk = offset[..., None] // granule + np.arange(size // granule)
        return rows, (np.asarray(bank)[..., None], chunk)

    # -- contents other code relies on (constants written once) ---------------------------------

    def watch(self, key: str, start: int, end: int) -> None:
        """Remember that [start, end) holds `key`; any later write into it marks `key` dirty."""
        self.dirty.discard(key)
        if self._watch.get(key) == (start, end):  # the same constant at the same place (every run)
            return
        self._watch[key] = (start, end)
        self._watch_keys = list(self._watch)
        self._watch_ranges = np.array(list(self._watch.values()), dtype=np.int64).reshape(-1, 2)
        self._watch_low = int(self._watch_ranges[:, 0].min())
        self._watch_high = int(self._watch_ranges[:, 1].max())
        # Disjoint ranges (constants at distinct places, the usual case) sorted by start are sorted by end too:
        # `touch` then finds the ranges it meets by bisection instead of comparing with all of them.
        ordered = sorted((range_start, range_end, name) for name, (range_start, range_end) in self._watch.items())
        disjoint = all(a[1] <= b[0] for a, b in itertools.pairwise(ordered))
        self._watch_sorted = ([r[0] for r in ordered], [r[1] for r in ordered], [r[2] for r in ordered]) \
            if disjoint else None

    def touch(self, start: int, end: int) -> None:
        """Bytes [start, end) of some bank may change: every watched range they meet is dirty."""
        if not self._watch or end <= self._watch_low or start >= self._watch_high:
            return
        if self._watch_sorted is not None:
            starts, ends, names = self._watch_sorted
            first, last = bisect.bisect_right(ends, start), bisect.bisect_left(starts, end)
            if first < last:  # the ranges ending after `start` and starting before `end`
                self.dirty.update(names[first:last])
            return
        hit = (start < self._watch_ranges[:, 1]) & (self._watch_ranges[:, 0] < end)
        if hit.any():
            self.dirty.update(itertools.compress(self._watch_keys, hit.tolist()))

    def is_clean(self, key: str, start: int, end: int) -> bool:
        return self._watch.get(key) == (start, end) and key not in self.dirty


class Device:
    """One Grayskull card: DRAM channels and the compute cores' L1, as the descriptor says."""

    def __init__(self, desc: DeviceAttr) -> None:
        self.desc = desc
        self.grid_x, self.grid_y = desc.compute_grid
        self.dram = Memory("DRAM", desc.dram_channels, desc.dram_channel_size, desc.dram_alignment, grow=True)
        self.l1 = Memory("L1", desc.compute_cores, desc.l1_size, desc.l1_alignment, floor=desc.l1_reserved)
        self._dst = np.zeros((0, 0, 32, 32), dtype=np.float32)
        self.states: dict[str, Allocation] = {}  # device states by name (their bytes persist across runs)

    def dst_registers(self, cores: int, tiles: int) -> np.ndarray:
        """The Dst registers [cores, tiles, 32, 32] of a program's cores. They keep what the last program
        left: a program must treat them as undefined until its tile_regs_acquire NaN-fills them."""
        if self._dst.shape[0] < cores or self._dst.shape[1] != tiles:
            self._dst = np.full((max(cores, self._dst.shape[0]), tiles, 32, 32), np.nan, dtype=np.float32)
        return self._dst[:cores]

    def memory(self, space: str) -> Memory:
        if space == "dram":
            return self.dram
        if space == "l1":
            return self.l1
        raise Fault(f"memory space '{space}' is not on the device (dram or l1)")

    def core_ids(self, grid_x: int, grid_y: int) -> np.ndarray:
        """L1 bank (device core) of each core of a program grid placed at (0, 0), row-major."""
        if grid_x > self.grid_x or grid_y > self.grid_y:
            raise Fault(f"program grid {grid_x}x{grid_y} exceeds the device compute grid "
                        f"{self.grid_x}x{self.grid_y}")
        y, x = np.divmod(np.arange(grid_x * grid_y), grid_x)
        return y * self.grid_x + x
