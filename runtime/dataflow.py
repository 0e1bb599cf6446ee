"""Circular buffers and the NoC: CB state and the CB protocol, address generators, NoC reads and writes.

Conventions fixed here where the dialect is silent
- CB counts and pointers depend only on op attributes, so they are the same on every core and are kept
  once (`CircularBuffer`); the pages are per core, in each core's L1.
- A NoC transfer copies `addrgen.page_size` bytes per page to/from a CB page; the addrgen's format
  must equal the CB's, and its page must fit in a CB page. Data lands when the op is issued, but a
  CB with un-barriered reads into it cannot be pushed, and a CB with un-barriered writes out of it
  cannot be popped (the NoC may still be reading those pages); a kernel may not end with either.
- `noc_read_tiles_indexed` takes its int32 indices from the first waited page of `index_cb`.
- Sharded buffers: an addrgen with `memory_layout` height_sharded / block_sharded maps page i to its
  shard's core and offset (`Memory.locate`); it must match the buffer's layout. A page of a shard held
  by the accessing core itself is a local L1 access: it counts as `local_bytes`, not as NoC traffic.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ttc.ir.attributes import TypeAttr
from ttc.ir.core import Operation
from ttc.ir.dialects.tt import DeviceAttr, GridAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.runtime.device import Device, Fault, Memory
from ttc.runtime.formats import DataFormat
from ttc.runtime.handlers import Blocked, handler
from ttc.runtime.layout import data_format

if TYPE_CHECKING:  # types only: the scheduler imports this module, not the other way round
    from ttc.runtime.interpreter import Kernel, Program

# ----------------------------------------------------------------------------------------------
# State


@dataclass
class CircularBuffer:
    """One CB: a ring of `pages` slots of `page_size` bytes at `address` in every core's L1.

    `slots` is a view [device cores, pages, page_size] into L1. The counts and pointers are the same
    on every core (lockstep): `filled` pages were pushed and not popped; the producer has `reserved`
    pages at the back (from slot `back`), the consumer `waited` pages at the front (from `front`).
    """

    index: int
    address: int
    page_size: int
    pages: int
    format: DataFormat | None
    slots: np.ndarray
    grid: np.ndarray | None = None  # [grid y, grid x, pages, page_size] view of the program's cores' slots
    filled: int = 0
    reserved: int = 0
    waited: int = 0
    front: int = 0
    back: int = 0


@dataclass(frozen=True)
class AddrGen:
    """An address generator: page i of the buffer at `base` in `memory` (interleaved, or through the
    buffer's shard map when `memory_layout` is sharded)."""

    base: int | np.ndarray
    page_size: int
    memory: Memory
    format: DataFormat | None
    memory_layout: str = "interleaved"


@dataclass(frozen=True)
class Offsets:
    """Page offsets [n] into a CB window (or relative buffer pages), with their bounds: ops address the
    same blocks over and over, so each distinct block is built once (`page_range`, `tile_block`)."""

    values: np.ndarray  # int64 [n], read-only
    lo: int  # min and max of values (0 and -1 when empty)
    hi: int
    contiguous: bool  # values == lo, lo + 1, ..., hi

    @staticmethod
    def of(values: np.ndarray) -> Offsets:
        values = np.asarray(values, dtype=np.int64)
        values.flags.writeable = False
        if not len(values):
            return Offsets(values, 0, -1, False)
        lo, hi = int(values.min()), int(values.max())
        contiguous = bool(values[0] == lo and hi - lo == len(values) - 1 and (np.diff(values) == 1).all())
        return Offsets(values, lo, hi, contiguous)

    def __len__(self) -> int:
        return len(self.values)


# ----------------------------------------------------------------------------------------------
# Pages, windows and formats


@functools.lru_cache(maxsize=256)
def _format_of(attr: TypeAttr | None) -> DataFormat | None:
    """A CB's or addrgen's format attribute as a DataFormat (None: no format); an unsupported type is a fault."""
    if attr is None:
        return None
    try:
        return data_format(attr.type)
    except ValueError as exc:
        raise Fault(str(exc)) from None


def _check_window(cb: CircularBuffer, offsets: Offsets, window: int, what: str) -> None:
    if offsets.lo >= 0 and offsets.hi < window:
        return
    bad = (offsets.values < 0) | (offsets.values >= window)
    raise Fault(f"page offset {int(offsets.values[np.argmax(bad)])} of CB {cb.index} is outside the {window} "
                f"page(s) {what}", cb=cb.index)


def _ring_slots(position: int, offsets: Offsets, pages: int) -> slice | np.ndarray:
    """Slots (position + offsets) % pages of a ring: a slice (a view, no copy) when they run consecutively."""
    if offsets.contiguous:
        first = (position + offsets.lo) % pages
        last = first + offsets.hi - offsets.lo
        if last < pages:
            return slice(first, last + 1)
    return (position + offsets.values) % pages


def _slot_array(slots: slice | np.ndarray) -> np.ndarray:
    return np.arange(slots.start, slots.stop) if isinstance(slots, slice) else slots


@functools.lru_cache(maxsize=4096)
def page_range(first: int, count: int) -> Offsets:
    """Offsets first, first + 1, ..., first + count - 1."""
    return Offsets.of(np.arange(first, first + count))


@functools.lru_cache(maxsize=4096)
def tile_block(offset: int, rows: int, cols: int, row_stride: int, col_stride: int) -> Offsets:
    """tile(r, c) = offset + r * row_stride + c * col_stride, row-major over the block."""
    return Offsets.of((offset + np.arange(rows)[:, None] * row_stride
                       + np.arange(cols)[None, :] * col_stride).ravel())


def _start_pages(start: int | np.ndarray, relative: Offsets) -> np.ndarray:
    """Pages [cores, n]: each core's start plus relative page numbers; [1, n] when start is an int (the
    same on every core: what is read is broadcast to the cores)."""
    if isinstance(start, int):
        return (start + relative.values)[None]
    return np.asarray(start, dtype=np.int64).reshape(-1, 1) + relative.values[None, :]


def _per_core(program: Program, start: int | np.ndarray, relative: Offsets) -> np.ndarray:
    """Pages [cores, n]: each core's start (int or per-core) plus relative page numbers."""
    return np.broadcast_to(_start_pages(start, relative), (program.cores, len(relative)))


# ----------------------------------------------------------------------------------------------
# The program's CBs


class CircularBuffers:
    """The CBs of a running program (a mixin of `interpreter.Program`): configured in every core's L1 at
    launch, addressed by the ops through their reserved (back) and waited (front) windows."""

    device: Device
    desc: DeviceAttr
    grid: GridAttr
    cores: int
    core_index: slice | np.ndarray  # program cores in L1: a slice, or a column
    core_rows: int  # when core_index is a column: the device's cores per row (the grid is a rectangle)
    cbs: dict[int, CircularBuffer]

    def _configure_cbs(self, configs: Sequence[CBConfigAttr]) -> None:
        l1 = self.device.l1
        for config in configs:
            index = config.index
            if not 0 <= index < self.desc.num_cbs:
                raise Fault(f"CB index {index} is outside 0..{self.desc.num_cbs - 1}", cb=index)
            if index in self.cbs:
                raise Fault(f"CB {index} is configured twice", cb=index)
            if config.address is None:
                raise Fault(f"L1 overflow: CB {index} has no address (the program was not allocated)", cb=index)
            if config.page_size <= 0 or config.pages <= 0:
                raise Fault(f"CB {index} has {config.pages} pages of {config.page_size} bytes", cb=index)
            fmt = _format_of(config.format)
            try:
                l1.reserve(config.address, config.size, f"CB {index}")
            except Fault as fault:
                raise Fault(f"L1 overflow: {fault.what}", cb=index) from None
            view = l1.data[:, config.address: config.address + config.size]
            slots = view.reshape(l1.banks, config.pages, config.page_size)
            grid = None
            if self.core_rows:  # the grid's rows of cores are strided views: no gather of each core's pages
                rows = slots[: self.grid.y * self.core_rows].reshape(self.grid.y, self.core_rows, *slots.shape[1:])
                grid = rows[:, : self.grid.x]
            self.cbs[index] = CircularBuffer(index, config.address, config.page_size, config.pages, fmt, slots, grid)

    def _release_cbs(self) -> None:
        for cb in self.cbs.values():
            self.device.l1.free(cb.address)
        self.cbs = {}

    def cb(self, index: int) -> CircularBuffer:
        cb = self.cbs.get(index)
        if cb is None:
            raise Fault(f"CB {index} is not configured by the program", cb=index)
        return cb

    def front_slots(self, cb: CircularBuffer, offsets: Offsets) -> slice | np.ndarray:
        """Ring slots of pages `offsets` in the consumer's waited window."""
        _check_window(cb, offsets, cb.waited, "waited at the front")
        return _ring_slots(cb.front, offsets, cb.pages)

    def back_slots(self, cb: CircularBuffer, offsets: Offsets) -> slice | np.ndarray:
        """Ring slots of pages `offsets` in the producer's reserved window."""
        _check_window(cb, offsets, cb.reserved, "reserved at the back")
        return _ring_slots(cb.back, offsets, cb.pages)

    def get_pages(self, cb: CircularBuffer, slots: slice | np.ndarray) -> np.ndarray:
        """Bytes [cores, n, page_size] of CB slots on every core of the program."""
        if cb.grid is not None:
            pages = cb.grid[:, :, slots]
            return pages.reshape(self.cores, *pages.shape[2:])
        if isinstance(self.core_index, slice):
            return cb.slots[self.core_index, slots]  # a view
        return cb.slots[self.core_index, _slot_array(slots)]  # cores [C, 1] broadcast against slots [n]

    def put_pages(self, cb: CircularBuffer, slots: slice | np.ndarray, data: np.ndarray) -> None:
        """Write data [cores (or 1: the same on every core), n, m <= page_size] into the first m bytes of
        CB slots."""
        width = slice(0, data.shape[-1])
        if cb.grid is not None:
            lead = (self.grid.y, self.grid.x) if len(data) != 1 else (1, 1)
            cb.grid[:, :, slots, width] = data.reshape(*lead, *data.shape[1:])
        elif isinstance(self.core_index, slice):
            cb.slots[self.core_index, slots, width] = data
        else:
            cb.slots[self.core_index, _slot_array(slots), width] = data


# ----------------------------------------------------------------------------------------------
# The CB protocol


@handler("cb_reserve_back")
def cb_reserve_back(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> Blocked | None:
    """Producer: wait for `pages` free pages at the back; they become the reserved window."""
    cb, n = p.cb(a["cb"]), a["pages"]
    if n > cb.pages:
        raise Fault(f"cb_reserve_back of {n} pages: CB {cb.index} has only {cb.pages} pages", cb=cb.index)
    if cb.pages - cb.filled < n:
        return Blocked(op, cb.index, n, "free")
    cb.reserved = max(cb.reserved, n)
    return None


@handler("cb_push_back")
def cb_push_back(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Producer: hand `pages` pages from the reserved window to the consumer."""
    cb, n = p.cb(a["cb"]), a["pages"]
    if n > cb.reserved:
        raise Fault(f"cb_push_back of {n} pages but only {cb.reserved} are reserved", cb=cb.index)
    if cb.index in k.pending_reads:
        raise Fault(f"cb_push_back of CB {cb.index} while NoC reads into it have not completed "
                    "(missing noc_read_barrier)", cb=cb.index)
    unlanded = p.__dict__.get("_unlanded")  # multicast pages not yet seen landing (runtime/multicast.py)
    if unlanded is not None and unlanded[:, cb.index].any():
        raise Fault(f"cb_push_back of CB {cb.index} before waiting for the multicast into it to land (missing "
                    "semaphore_wait for the multicast's valid semaphore)", cores=unlanded[:, cb.index].copy(),
                    cb=cb.index)
    cb.filled += n
    cb.reserved -= n
    cb.back = (cb.back + n) % cb.pages


@handler("cb_wait_front")
def cb_wait_front(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> Blocked | None:
    """Consumer: wait for `pages` filled pages at the front; they become the waited window."""
    cb, n = p.cb(a["cb"]), a["pages"]
    if n > cb.pages:
        raise Fault(f"cb_wait_front for {n} pages: CB {cb.index} has only {cb.pages} pages", cb=cb.index)
    if cb.filled < n:
        return Blocked(op, cb.index, n, "filled")
    cb.waited = max(cb.waited, n)
    return None


@handler("cb_pop_front")
def cb_pop_front(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Consumer: free `pages` pages from the front of the waited window."""
    cb, n = p.cb(a["cb"]), a["pages"]
    if n > cb.waited:
        raise Fault(f"cb_pop_front of {n} pages but only {cb.waited} were waited for", cb=cb.index)
    if cb.index in k.pending_writes:
        raise Fault(f"cb_pop_front of CB {cb.index} while NoC writes from it have not completed "
                    "(missing noc_write_barrier)", cb=cb.index)
    cb.filled -= n
    cb.waited -= n
    cb.front = (cb.front + n) % cb.pages


# ----------------------------------------------------------------------------------------------
# Address generation and NoC transfers


@handler("addrgen")
def addrgen(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    memory = p.device.memory(a["memory"])
    k.env[op.results[0]] = AddrGen(k.env[op.operands[0]], a["page_size"], memory, _format_of(a["format"]),
                                   a["memory_layout"])


def _check_format(gen: AddrGen, cb: CircularBuffer) -> None:
    if gen.format is not None and cb.format is not None and gen.format != cb.format:
        raise Fault(f"the buffer's format {gen.format} differs from CB {cb.index}'s format {cb.format}",
                    cb=cb.index)


def _check_noc(gen: AddrGen, cb: CircularBuffer) -> None:
    _check_format(gen, cb)
    if gen.page_size > cb.page_size:
        raise Fault(f"buffer pages of {gen.page_size} bytes do not fit CB {cb.index}'s "
                    f"{cb.page_size}-byte pages", cb=cb.index)


def _locate(gen: AddrGen, pages: np.ndarray, access: str, cb: CircularBuffer) -> tuple[np.ndarray, np.ndarray]:
    """(bank, offset) of buffer pages [cores, n]; an out-of-bounds page is a fault naming the CB."""
    actual = gen.memory.layout_at(gen.base)
    if actual != gen.memory_layout:
        article = "an" if gen.memory_layout == "interleaved" else "a"
        raise Fault(f"{article} {gen.memory_layout} address generator over a {actual} buffer at "
                    f"{int(np.asarray(gen.base).flat[0]):#x}", cb=cb.index)
    try:
        return gen.memory.locate(gen.base, pages, gen.page_size, access)
    except Fault as fault:
        fault.cb = cb.index
        raise


def _read_into_cb(p: Program, k: Kernel, gen: AddrGen, pages: np.ndarray, cb: CircularBuffer,
                  cb_offset: int) -> None:
    """NoC read of buffer pages [cores, n] into the reserved back of cb from page cb_offset."""
    slots = p.back_slots(cb, page_range(cb_offset, pages.shape[1]))
    _check_noc(gen, cb)
    bank, offset = _locate(gen, pages, "read", cb)
    p.put_pages(cb, slots, gen.memory.read(bank, offset, gen.page_size))
    k.pending_reads.add(cb.index)
    p.charge_noc(gen, pages.shape[1], bank)


@handler("noc_read_tiles")
def noc_read_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Tiles tile(r, c) (from `start`) of the buffer -> reserved back pages of cb, row-major; with a
    valid_cols operand, tiles of columns c >= valid_cols are zero-filled instead of read."""
    gen, start = k.env[op.operands[0]], k.env[op.operands[1]]
    tiles = tile_block(0, a["rows"], a["cols"], a["row_stride"], a["col_stride"])
    pages = _start_pages(start, tiles)
    wanted = _valid_columns(p, k, op, a)
    if wanted is None:
        _read_into_cb(p, k, gen, pages, p.cb(a["cb"]), a["cb_offset"])
        return
    cb = p.cb(a["cb"])
    slots = p.back_slots(cb, page_range(a["cb_offset"], len(tiles)))
    _check_noc(gen, cb)
    bank, offset = _locate(gen, np.where(wanted, pages, 0), "read", cb)  # past the edge: nothing read
    data = gen.memory.read(bank, offset, gen.page_size)
    data[~wanted] = 0
    p.put_pages(cb, slots, data)
    k.pending_reads.add(cb.index)
    moved = int(wanted.sum())
    p.charge_noc(gen, moved // p.cores, bank, wanted, total=moved)


def _valid_columns(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> np.ndarray | None:
    """[cores, rows * cols] mask of the block's tiles in columns c < valid_cols (None: no operand)."""
    if len(op.operands) < 3:
        return None
    valid = np.asarray(k.env[op.operands[2]], dtype=np.int64).reshape(-1, 1, 1)
    columns = np.broadcast_to(np.arange(a["cols"])[None, None, :], (1, a["rows"], a["cols"]))
    return np.broadcast_to(columns < valid, (p.cores, a["rows"], a["cols"])).reshape(p.cores, -1)


def _segment(p: Program, k: Kernel, op: Operation, first: int, gen: AddrGen, cb: CircularBuffer
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per core (offset, size) of the row segment in operands first, first + 1 (bytes of a buffer page); a
    segment outside the buffer's pages, then one longer than a CB page, is a fault of the cores doing it."""
    offset, size = (np.broadcast_to(np.asarray(k.env[op.operands[i]], dtype=np.int64).reshape(-1), (p.cores,))
                    for i in (first, first + 1))
    outside = (offset < 0) | (size < 0) | (offset + size > gen.page_size)
    if outside.any():
        core = int(np.argmax(outside))
        raise Fault(f"a row segment of {int(size[core])} bytes at byte {int(offset[core])} is outside the "
                    f"{gen.page_size}-byte pages of the buffer", cores=outside, cb=cb.index)
    longer = size > cb.page_size
    if longer.any():
        core = int(np.argmax(longer))
        raise Fault(f"a row segment of {int(size[core])} bytes does not fit CB {cb.index}'s {cb.page_size}-byte "
                    "pages", cores=longer, cb=cb.index)
    return offset, size


def _segment_groups(offset: np.ndarray, size: np.ndarray, cores: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(offset, size, cores) per distinct segment among `cores` (a mask), in order of offset then size."""
    pairs = np.unique(np.stack([offset[cores], size[cores]], axis=1), axis=0)
    return [(int(o), int(n), cores & (offset == o) & (size == n)) for o, n in pairs]


def _charge_bytes(p: Program, gen: AddrGen, total: int, write: bool) -> None:
    """A transfer whose bytes differ by core (row segments): every core counted the floor of the average."""
    p.counting.transfer(total // p.cores, gen.memory is p.device.dram, write, total)


@handler("noc_read_pages")
def noc_read_pages(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Whole pages start..start+count-1 (e.g. rows of an index table) -> reserved back pages of cb; with a
    segment (offset, size), bytes offset..offset+size of each page -> the start of a CB page, zero after."""
    gen, start = k.env[op.operands[0]], k.env[op.operands[1]]
    pages = _start_pages(start, page_range(0, a["count"]))
    cb = p.cb(a["cb"])
    if len(op.operands) < 4:
        _read_into_cb(p, k, gen, pages, cb, a["cb_offset"])
        return
    slots = p.back_slots(cb, page_range(a["cb_offset"], a["count"]))
    _check_format(gen, cb)
    offset, size = _segment(p, k, op, 2, gen, cb)
    bank, address = (np.broadcast_to(v, (p.cores, a["count"])) for v in _locate(gen, pages, "read", cb))
    data = np.zeros((p.cores, a["count"], cb.page_size), dtype=np.uint8)
    for first, length, cores in _segment_groups(offset, size, np.ones(p.cores, dtype=bool)):
        if length:
            data[cores, :, :length] = gen.memory.read(bank[cores], address[cores] + first, length)
    p.put_pages(cb, slots, data)
    k.pending_reads.add(cb.index)
    _charge_bytes(p, gen, a["count"] * int(size.sum()), write=False)


@handler("noc_read_tiles_indexed")
def noc_read_tiles_indexed(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Gather tiles whose indices are int32 values in the first waited page of index_cb (-1 - i: tile i)."""
    gen = k.env[op.operands[0]]
    index_cb, first, count = p.cb(a["index_cb"]), a["index_offset"], a["count"]
    page = p.get_pages(index_cb, p.front_slots(index_cb, page_range(0, 1)))[:, 0]
    if first < 0 or (first + count) * 4 > index_cb.page_size:
        raise Fault(f"indices {first}..{first + count - 1} are outside the {index_cb.page_size // 4} int32 "
                    f"values of a page of CB {index_cb.index}", cb=index_cb.index)
    indices = np.ascontiguousarray(page[:, first * 4: (first + count) * 4]).view("<i4").astype(np.int64)
    entries = np.where(indices < 0, -1 - indices, indices)
    sources = a["sources"]
    if sources == 1:
        _read_into_cb(p, k, gen, entries, p.cb(a["cb"]), a["cb_offset"])
        return
    cb = p.cb(a["cb"])
    mine = entries % sources == a["source"]
    slots = p.back_slots(cb, page_range(a["cb_offset"], count))
    _check_noc(gen, cb)
    bank, offset = _locate(gen, np.where(mine, entries // sources, 0), "read", cb)  # others: nothing read
    tiles = gen.memory.read(bank, offset, gen.page_size)
    current = p.get_pages(cb, slots)[..., : gen.page_size]
    p.put_pages(cb, slots, np.where(mine[..., None], tiles, current))
    k.pending_reads.add(cb.index)
    moved = int(mine.sum())
    p.charge_noc(gen, moved // p.cores, total=moved)


@handler("noc_read_rows_indexed")
def noc_read_rows_indexed(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Pages j < valid of the buffer by the int32 indices at index_offset + j of index_cb's waited front
    page -> reserved back pages of cb; pages j >= valid zero-filled (per core: offset and valid may differ).
    With a segment (offset, size), bytes offset..offset+size of each page -> the start of a CB page, zero after."""
    gen = k.env[op.operands[0]]
    offset = np.asarray(k.env[op.operands[1]], dtype=np.int64).reshape(-1, 1)
    valid = np.asarray(k.env[op.operands[2]], dtype=np.int64).reshape(-1, 1)
    index_cb, cb, count = p.cb(a["index_cb"]), p.cb(a["cb"]), a["count"]
    relative = page_range(0, count).values
    positions, wanted = offset + relative, relative < valid  # [cores or 1, count]
    entries = index_cb.page_size // 4
    outside = wanted & ((positions < 0) | (positions >= entries))
    if outside.any():
        raise Fault(f"index position {int(positions[outside][0])} is outside the {entries} int32 values of a "
                    f"page of CB {index_cb.index}", cores=outside.any(axis=1), cb=index_cb.index)
    page = p.get_pages(index_cb, p.front_slots(index_cb, page_range(0, 1)))[:, 0]
    values = np.ascontiguousarray(page[:, : entries * 4]).view("<i4").astype(np.int64)
    indices = np.take_along_axis(values, np.broadcast_to(np.where(wanted, positions, 0), (p.cores, count)), axis=1)
    wanted = np.broadcast_to(wanted, indices.shape)
    if a["pad_negative"]:
        wanted = wanted & (indices >= 0)  # convolution padding: a zero page
    elif a["wrap"] > 0:
        indices = np.where(indices < 0, indices + a["wrap"], indices)
    slots = p.back_slots(cb, page_range(a["cb_offset"], count))
    if len(op.operands) > 3:
        _check_format(gen, cb)
        first, size = _segment(p, k, op, 3, gen, cb)
        bank, address = _locate(gen, np.where(wanted, indices, 0), "read", cb)  # padding rows: nothing read
        data = np.zeros((p.cores, count, cb.page_size), dtype=np.uint8)
        for at, length, cores in _segment_groups(first, size, np.ones(p.cores, dtype=bool)):
            if length:
                data[cores, :, :length] = gen.memory.read(bank[cores], address[cores] + at, length)
        data[~wanted] = 0
        p.put_pages(cb, slots, data)
        k.pending_reads.add(cb.index)
        _charge_bytes(p, gen, int((wanted.sum(axis=1) * size).sum()), write=False)
        return
    _check_noc(gen, cb)
    bank, address = _locate(gen, np.where(wanted, indices, 0), "read", cb)  # padding rows: nothing read
    rows = gen.memory.read(bank, address, gen.page_size)
    rows[~wanted] = 0
    p.put_pages(cb, slots, rows)
    k.pending_reads.add(cb.index)
    moved = int(wanted.sum())
    p.charge_noc(gen, moved // p.cores, total=moved)


@handler("noc_write_tiles")
def noc_write_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Waited front pages of cb (from cb_offset, row-major) -> tiles tile(r, c) of the buffer."""
    gen, start = k.env[op.operands[0]], k.env[op.operands[1]]
    cb = p.cb(a["cb"])
    tiles = tile_block(0, a["rows"], a["cols"], a["row_stride"], a["col_stride"])
    slots = p.front_slots(cb, page_range(a["cb_offset"], len(tiles)))
    _check_noc(gen, cb)
    pages = _per_core(p, start, tiles)
    data = p.get_pages(cb, slots)[..., : gen.page_size]
    wanted = _valid_columns(p, k, op, a)
    if wanted is not None:  # only the tiles before the ragged edge
        pages, data = pages[wanted][None], data[wanted][None]
    bank, offset = _locate(gen, pages, "write", cb)
    gen.memory.write(bank, offset, data)
    k.pending_writes.add(cb.index)
    if wanted is None:
        p.charge_noc(gen, len(tiles), bank, write=True)
    else:  # the written pages were compacted to one row: locality is not tracked past a ragged edge
        moved = int(wanted.sum())
        p.charge_noc(gen, moved // p.cores, write=True, total=moved)


@handler("noc_write_rows")
def noc_write_rows(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """The first `valid` of `count` waited front pages of cb -> pages start.. of a row-major buffer; with a
    segment (offset, size), the first size bytes of each CB page -> bytes offset.. of its buffer page."""
    gen, start = k.env[op.operands[0]], k.env[op.operands[1]]
    valid = np.asarray(k.env[op.operands[2]], dtype=np.int64).reshape(-1)
    cb, count = p.cb(a["cb"]), a["count"]
    slots = p.front_slots(cb, page_range(0, count))
    if len(op.operands) > 3:
        _write_row_segments(p, k, op, gen, start, valid, cb, slots)
        return
    _check_noc(gen, cb)
    data = p.get_pages(cb, slots)[..., : gen.page_size]
    valid = np.broadcast_to(valid, (p.cores,))
    for rows in np.unique(valid):  # cores writing the same number of rows together
        cores = valid == rows
        if rows <= 0:
            continue
        pages = _per_core(p, start, page_range(0, int(rows)))[cores]
        bank, offset = _locate(gen, pages, "write", cb)
        gen.memory.write(bank, offset, data[cores, : int(rows)])
    k.pending_writes.add(cb.index)
    moved = int(valid.sum())
    p.charge_noc(gen, moved // p.cores, write=True, total=moved)


def _write_row_segments(p: Program, k: Kernel, op: Operation, gen: AddrGen, start: int | np.ndarray,
                        valid: np.ndarray, cb: CircularBuffer, slots: slice | np.ndarray) -> None:
    """noc_write_rows of one column segment per row: cores writing the same number of rows together (as
    whole rows), each watched range between their lowest and highest written byte marked once."""
    _check_format(gen, cb)
    offset, size = _segment(p, k, op, 3, gen, cb)
    data = p.get_pages(cb, slots)
    valid = np.broadcast_to(valid, (p.cores,))
    for rows in np.unique(valid):
        group = valid == rows
        if rows <= 0:
            continue
        bank, address = _locate(gen, _per_core(p, start, page_range(0, int(rows)))[group], "write", cb)
        low = high = None
        for first, length, cores in _segment_groups(offset, size, group):
            if not length:
                continue
            where = cores[group]
            at = address[where] + first
            gen.memory.write(bank[where], at, data[cores, : int(rows), :length], touch=False)
            low = int(at.min()) if low is None else min(low, int(at.min()))
            high = int(at.max()) + length if high is None else max(high, int(at.max()) + length)
        if low is not None:
            gen.memory.touch(low, high)
    k.pending_writes.add(cb.index)
    _charge_bytes(p, gen, int((valid * size).sum()), write=True)


@handler("noc_read_barrier")
def noc_read_barrier(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.pending_reads.clear()


@handler("noc_write_barrier")
def noc_write_barrier(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.pending_writes.clear()
