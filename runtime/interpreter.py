"""Executes one `ttmetal.enqueue_program`: reader, compute and writer kernels on every core of its grid.

How it runs
- Lockstep cores. All cores of the grid run the same kernels with static trip counts, so they run
  together: an `index` value is a Python int (the same on every core) or an int64 array with one
  entry per core (from `ttkernel.get_arg`); every tile op gathers/scatters the blocks of all cores in
  one numpy operation. CB counts and pointers and the Dst protocol state depend only on op attributes,
  so they are the same on every core and are kept once; the data (L1, Dst) is per core.
- Kernels are cooperative coroutines (generators). An op that cannot proceed (cb_reserve_back with
  too few free pages, cb_wait_front with too few filled pages) returns a `Blocked` and the kernel
  yields; the scheduler resumes kernels round-robin until all finish. A round in which no kernel
  executes an op is a deadlock; a step budget on executed kernel ops catches runaway programs.
- One handler per ttkernel op in `HANDLERS`; reading a handler tells what the op means.

Conventions fixed here where the dialect is silent
- Dst contents are undefined after tile_regs_acquire: the emulator fills the acquired half with NaN
  (re-filling only the slots math wrote since their last fill; the others still hold NaN), so a kernel
  that accumulates (matmul, reduce) without fill_tiles first gets NaN, not luck.
  Acquires alternate between the two halves of Dst (half-sync); one acquire addresses slots 0..7.
- Dst holds the 16-bit type of the program's result format (`dst_format_of`): f16 for an f16 result,
  else bf16. In a Float16 Dst a finite value that rounds past 65504 (to inf) is a device fault at its op
  (`F16_OVERFLOW`, on all cores), never a silent inf. A datacopy of a CB tile into Dst converts to it (RNE): bf16 and block floats are exact in
  a bf16 Dst, f32 rounds, i32 goes int -> float -> Dst format. Math ops take 16-bit and block-float
  tiles as they are and round their operands as numerics.py says (matmul and reduce-sum: bf16 into the
  multiplier; eltwise and reduce-max: the Dst format). Packing to an i32 CB truncates.
- A NoC transfer copies `addrgen.page_size` bytes per page to/from a CB page; the addrgen's format
  must equal the CB's, and its page must fit in a CB page. Data lands when the op is issued, but a
  CB with un-barriered reads into it cannot be pushed, and a CB with un-barriered writes out of it
  cannot be popped (the NoC may still be reading those pages); a kernel may not end with either.
- `noc_read_tiles_indexed` takes its int32 indices from the first waited page of `index_cb`.
- Cycles (per core, the same on every core): each compute op costs the descriptor's per-tile cycles
  (binary add/sub/mul; copy, transpose, fill and mask "datacopy"; reduce-max "add"; SFPU functions
  by name, see SFPU_COST_KEYS); matmul and reduce-sum cost matmul_cycles_per_phase x fidelity
  phases per tile-MAC; pack is part of the op costs. NoC bytes per core over noc_bytes_per_cycle;
  DRAM bytes of all cores over the chip's DRAM bandwidth. A program takes the max of the three.
- Sharded buffers: an addrgen with `memory_layout` height_sharded / block_sharded maps page i to its
  shard's core and offset (`Memory.locate`); it must match the buffer's layout. A page of a shard held
  by the accessing core itself is a local L1 access: it counts as `local_bytes`, not as NoC traffic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ttc.ir.attributes import TypeAttr
from ttc.ir.core import Block, Operation
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.runtime import numerics
from ttc.runtime.device import Device, Fault, Memory
from ttc.runtime.formats import TILE, DataFormat, pack_tiles, unpack_tiles
from ttc.runtime.layout import data_format

DEFAULT_STEP_BUDGET = 5_000_000
KERNELS = ("reader", "compute", "writer")
HALF_DST = 8  # Dst tiles one acquire may use (half-sync double buffering)
_FOR = "ttkernel.for"

# SFPU functions without their own entry in the descriptor's tile_op_cycles cost like these.
SFPU_COST_KEYS = {"rsqrt": "recip", "tanh": "sigmoid", "gelu_tanh": "gelu", "erf": "gelu",
                  "pow_scalar": "exp", "rpow_scalar": "exp", "softplus": "log", "mish": "log", "pow": "log"}
_DEFAULT_SFPU_COST_KEY = "mul"  # one simple SFPU pass (relu, neg, abs, square, *_scalar)

# The fault of a program holding Float16 in Dst whose numerics round a finite value to +-inf
# (numerics.Float16Overflow), named at the op on every core of the program.
F16_OVERFLOW = ("Float16 overflow: a value rounded to Float16 exceeds 65504, the largest Float16 value (this "
                "program holds Float16 in Dst: --softmax-precision f16)")


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
class Blocked:
    """Why a kernel cannot proceed: it waits in `op` for `want` pages of CB `cb`."""

    op: Operation
    cb: int
    want: int
    what: str  # "free" or "filled"


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


@dataclass
class Kernel:
    """One kernel of the program, run on every core: its values, NoC transfers in flight, and state."""

    name: str
    args: Sequence[Sequence[int]]  # per core, row-major over the grid
    env: dict[Any, Any] = field(default_factory=dict)
    op: Operation | None = None  # the op being executed, for fault messages
    blocked: Blocked | None = None
    pending_reads: set[int] = field(default_factory=set)  # CBs with un-barriered NoC reads into them
    pending_writes: set[int] = field(default_factory=set)  # CBs un-barriered NoC writes read from


@dataclass(frozen=True)
class ProgramProfile:
    """The cost model's record of one program (cycles are per core; DRAM bytes are for all cores)."""

    kind: str
    nodes: tuple[str, ...]
    cores: int
    compute_cycles: int
    dram_bytes: int
    noc_bytes: int  # per core
    dram_cycles: float
    noc_cycles: float
    cycles: float
    bound: str  # "compute", "dram" or "noc"
    time_us: float
    local_bytes: int = 0  # per core: sharded pages the core read or wrote in its own L1 (no NoC)


Handler = Callable[["Program", Kernel, Operation, dict[str, Any]], Blocked | None]
HANDLERS: dict[str, Handler] = {}


@dataclass(frozen=True)
class Step:
    """One op of a kernel block as the scheduler runs it: its handler (None: not a kernel op) and its
    attributes with defaults filled in; a `ttkernel.for` has its body and trip range instead."""

    op: Operation
    run: Handler | None
    attrs: dict[str, Any]
    body: Block | None = None
    trips: range = range(0)


class ProgramPlan:
    """What a program's kernels need that depends only on the IR: the steps of every block, built once.

    The executor keeps one plan per enqueue_program op for as long as it runs the module, so a program
    run many times (every run of the model, every trip of a loop) looks its ops up once.
    """

    def __init__(self, op: Operation) -> None:
        self.blocks: dict[Block, list[Step]] = {}
        self.runtime_args: dict[tuple[str, int], int | np.ndarray] = {}  # (kernel, index) -> value(s)
        for region in op.regions:
            self._add(region.blocks[0])

    def _add(self, block: Block) -> None:
        steps = []
        for op in block.ops:
            attrs = _full_attrs(op)
            if op.name == _FOR:
                body = op.regions[0].blocks[0]
                self._add(body)
                steps.append(Step(op, None, attrs, body, range(attrs["lower"], attrs["upper"], attrs["step"])))
            else:
                steps.append(Step(op, HANDLERS.get(op.name), attrs))
        self.blocks[block] = steps


def handler(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[f"ttkernel.{name}"] = fn
        return fn

    return register


# ----------------------------------------------------------------------------------------------
# The program


class Program:
    """One enqueue_program on a device: set up CBs, run the kernels, account cycles."""

    def __init__(self, device: Device, op: Operation, buffer_addresses: Sequence[int],
                 step_budget: int = DEFAULT_STEP_BUDGET, plan: ProgramPlan | None = None) -> None:
        self.device = device
        self.desc = device.desc
        self.op = op
        self.buffer_addresses = list(buffer_addresses)
        self.step_budget = step_budget
        self.grid = op.attr("grid")
        self.cores = self.grid.num_cores
        self.steps = 0
        self.compute_cycles = 0
        self.noc_bytes = 0
        self.dram_bytes = 0
        self.local_bytes = 0  # sharded pages a core moved within its own L1, summed over the cores
        self.core_banks = np.zeros(0, dtype=np.int64)  # L1 bank (device core) of each program core
        self.cbs: dict[int, CircularBuffer] = {}
        self.dst = device.dst_registers(self.cores, 2 * HALF_DST)  # undefined until acquired (NaN-filled)
        self.dst_format = dst_format_of(op)
        self.dst_state = "released"
        self.dst_half = 1
        self.dst_written = set(range(2 * HALF_DST))  # slots that may hold other than NaN (all, at first)
        self.plan = plan if plan is not None else ProgramPlan(op)
        self.core_index: slice | np.ndarray = slice(0, 0)  # program cores in L1: a slice, or a column
        self.core_rows = 0  # when core_index is a column: the device's cores per row (the grid is a rectangle)

    # -- running --------------------------------------------------------------------------------

    def run(self) -> ProgramProfile:
        """Execute the program; raises DeviceFault naming core, kernel, CB, op and ONNX node."""
        try:
            self._launch()
            self._schedule()
        except Fault as fault:  # a launch fault: kernel faults are already DeviceFaults
            raise self._device_fault(fault) from None
        finally:
            self._release_cbs()
        return self.profile()

    def _launch(self) -> None:
        """Place the grid on the device and reserve the CBs in every core's L1 (L1 overflow checks)."""
        runtime_args = self.op.attr("runtime_args")
        if len(self.op.regions) != len(KERNELS) or len(runtime_args) != len(KERNELS) \
                or any(len(per_kernel) != self.cores for per_kernel in runtime_args):
            raise Fault("a program needs 3 kernels (reader, compute, writer) and runtime_args with one tuple "
                        "per core of its grid for each of them")
        ids = self.device.core_ids(self.grid.x, self.grid.y)
        self.core_banks = np.asarray(ids, dtype=np.int64)
        lo = int(ids[0])
        contiguous = np.array_equal(ids, np.arange(lo, lo + len(ids)))
        self.core_index = slice(lo, lo + len(ids)) if contiguous else ids[:, None]
        row = self.device.grid_x
        rectangle = (np.arange(self.grid.y)[:, None] * row + np.arange(self.grid.x)).ravel()
        self.core_rows = row if not contiguous and np.array_equal(ids, rectangle) else 0
        self._configure_cbs(self.op.attr("cbs"))

    def _schedule(self) -> None:
        """Round-robin over the kernels until all finish; a round without progress is a deadlock."""
        runtime_args = self.op.attr("runtime_args")
        kernels = [Kernel(name, runtime_args[i]) for i, name in enumerate(KERNELS)]
        running = {k.name: self._run_block(k, self.op.regions[i].blocks[0]) for i, k in enumerate(kernels)}
        live = list(kernels)
        while live:
            steps, progressed = self.steps, False
            for kernel in list(live):
                try:
                    kernel.blocked = next(running[kernel.name], None)
                    if kernel.blocked is None:  # the kernel ran to its end
                        live.remove(kernel)
                        progressed = True
                        self._finish(kernel)
                except Fault as fault:
                    raise self._device_fault(fault, kernel, kernel.op) from None
                except numerics.Float16Overflow:  # on any core: the op's numerics run on all of them at once
                    raise self._device_fault(Fault(F16_OVERFLOW), kernel, kernel.op) from None
            if live and not progressed and self.steps == steps:
                raise self._deadlock(live)
        self._check_drained()

    def _check_drained(self) -> None:
        """At program end every CB is empty: a page pushed and never popped (or reserved and never pushed)
        is a protocol error, as the next program on these cores would start from a CB in a stale state."""
        for index in sorted(self.cbs):
            cb = self.cbs[index]
            if cb.filled or cb.reserved:
                left = f"{cb.filled} page(s) pushed and never popped" if cb.filled \
                    else f"{cb.reserved} page(s) reserved and never pushed"
                raise Fault(f"CB protocol: the program ended with {left} in CB {index} "
                            "(a missing cb_pop_front / cb_push_back)", cb=index)

    def _run_block(self, kernel: Kernel, block: Block) -> Iterator[Blocked]:
        """Run a block's ops; yields while an op is blocked (the op is retried on resume)."""
        for step in self.plan.blocks[block]:
            op = kernel.op = step.op
            self.steps += 1
            if self.steps > self.step_budget:
                raise Fault(f"runaway program: more than {self.step_budget} kernel ops executed "
                            f"(the step budget)")
            if step.body is not None:
                iv_value = step.body.args[0]
                for iv in step.trips:
                    kernel.env[iv_value] = iv
                    yield from self._run_block(kernel, step.body)
                continue
            run = step.run
            if run is None:
                raise Fault(f"'{op.name}' is not a kernel op the device can execute")
            while (blocked := run(self, kernel, op, step.attrs)) is not None:
                yield blocked
                kernel.op = op

    def _finish(self, kernel: Kernel) -> None:
        """A kernel ended: its NoC writes must have completed and Dst must be released."""
        kernel.op = None
        if kernel.pending_writes:
            cb = min(kernel.pending_writes)
            raise Fault(f"the kernel ended with NoC writes from CB {cb} not completed "
                        "(missing noc_write_barrier)", cb=cb)
        if kernel.name == "compute" and self.dst_state != "released":
            raise Fault(f"the kernel ended with Dst {self.dst_state} (missing tile_regs_release)")

    # -- circular buffers ---------------------------------------------------------------------

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

    def unpack_front(self, cb: CircularBuffer, offsets: Offsets) -> np.ndarray:
        """Tiles [cores, n, 32, 32] at waited-window offsets as the FPU's source registers get them: 16-bit
        and block-float values exactly, f32 and i32 rounded to the Dst format. Each math op rounds its
        operands further as its numerics say (matmul: bf16; eltwise: the Dst format)."""
        fmt = _tile_format(cb)
        tiles = unpack_tiles(self.get_pages(cb, self.front_slots(cb, offsets)), fmt)
        if fmt in (DataFormat.FLOAT32, DataFormat.INT32):
            return numerics.dst_round(tiles, self.dst_format)
        return tiles

    def to_dst(self, tiles: np.ndarray, cb: CircularBuffer) -> np.ndarray:
        """Unpacked tiles of cb (`unpack_front`) as a datacopy leaves them in Dst: in the Dst format."""
        if self.dst_format == "f16":
            return tiles if cb.format is DataFormat.FLOAT16 else numerics.as_f16(tiles)
        return numerics.bf16_round(tiles) if cb.format is DataFormat.FLOAT16 else tiles

    # -- Dst ------------------------------------------------------------------------------------

    def math_slots(self, first: int, count: int) -> slice:
        """Dst tiles first..first+count-1 of the current acquire, for a math op."""
        if self.dst_state != "acquired":
            raise Fault(f"a math op writes Dst while Dst is {self.dst_state} "
                        "(math runs between tile_regs_acquire and tile_regs_commit)")
        slots = self.dst_slots(first, count)
        self.dst_written.update(range(slots.start, slots.stop))
        return slots

    def dst_slots(self, first: int, count: int) -> slice:
        if first < 0 or first + count > HALF_DST:
            raise Fault(f"Dst slots {first}..{first + count - 1} are outside the {HALF_DST} tiles one "
                        f"acquire owns (0..{HALF_DST - 1})")
        base = self.dst_half * HALF_DST
        return slice(base + first, base + first + count)

    def dst_transition(self, expected: str, new: str, op: str) -> None:
        if self.dst_state != expected:
            raise Fault(f"Dst protocol violation: {op} while Dst is {self.dst_state} (expected {expected})")
        self.dst_state = new

    # -- runtime arguments and accounting -----------------------------------------------------

    def runtime_arg(self, kernel: Kernel, index: int) -> int | np.ndarray:
        key = (kernel.name, index)
        cache = self.plan.runtime_args
        if key not in cache:
            short = np.array([len(args) <= index for args in kernel.args])
            if short.any():
                raise Fault(f"runtime argument {index} is missing", cores=short)
            values = np.array([args[index] for args in kernel.args], dtype=np.int64)
            values.flags.writeable = False
            cache[key] = int(values[0]) if (values == values[0]).all() else values
        return cache[key]

    def count_compute(self, key: str, tiles: int) -> None:
        self.compute_cycles += self.desc.tile_op_cycles[key] * tiles

    def count_matmul(self, tile_macs: int, fidelity: str) -> None:
        phases = numerics.MathFidelity.parse(fidelity).phases
        self.compute_cycles += self.desc.matmul_cycles_per_phase * phases * tile_macs

    def count_noc(self, gen: AddrGen, pages: int, bank: np.ndarray | None = None,
                  wanted: np.ndarray | None = None) -> None:
        """NoC (and DRAM) bytes of `pages` pages per core; with a sharded addrgen, the pages located in the
        core's own bank (`bank` [cores, n], `wanted` masking the pages really moved) are local instead."""
        if gen.memory_layout != "interleaved" and bank is not None:
            own = bank.reshape(bank.shape[0], -1) == self.core_banks[:, None]  # bank: [cores or 1, n]
            if wanted is not None:
                own &= wanted.reshape(self.cores, -1)
            self.local_bytes += int(own.sum()) * gen.page_size  # all cores; per core in profile()
        nbytes = pages * gen.page_size
        self.noc_bytes += nbytes
        if gen.memory is self.device.dram:
            self.dram_bytes += nbytes * self.cores

    def profile(self) -> ProgramProfile:
        local = self.local_bytes // self.cores
        noc_bytes = self.noc_bytes - local
        dram = self.dram_bytes / self.desc.dram_bytes_per_cycle
        noc = noc_bytes / self.desc.noc_bytes_per_cycle
        costs = {"compute": float(self.compute_cycles), "dram": dram, "noc": noc}
        bound = max(costs, key=lambda k: costs[k])
        return ProgramProfile(self.op.attr("kind"), self.op.loc.names(), self.cores, self.compute_cycles,
                              self.dram_bytes, noc_bytes, dram, noc, costs[bound], bound,
                              costs[bound] / self.desc.clock_mhz, local)

    # -- faults ---------------------------------------------------------------------------------

    def _device_fault(self, fault: Fault, kernel: Kernel | None = None, op: Operation | None = None) -> DeviceFault:
        where = [f"core {self._cores_text(fault.cores)}"]
        if kernel is not None:
            where.append(f"{kernel.name} kernel")
        if fault.cb is not None:
            where.append(f"CB {fault.cb}")
        if op is not None:
            where.append(f"op {op.name}")
        return DeviceFault(f"device fault: {fault.what}\n  at {', '.join(where)}\n  in {self._program_text()}")

    def _deadlock(self, live: list[Kernel]) -> DeviceFault:
        lines = []
        for kernel in live:
            blocked = kernel.blocked
            assert blocked is not None
            cb = self.cbs[blocked.cb]
            lines.append(f"  {kernel.name} kernel on core {self._cores_text(None)}: {blocked.op.name} waits for "
                         f"{blocked.want} {blocked.what} page(s) of CB {blocked.cb} ({cb.filled} of "
                         f"{cb.pages} filled)")
        return DeviceFault("device fault: deadlock: no kernel on any core can make progress\n"
                           + "\n".join(lines) + f"\n  in {self._program_text()}")

    def _cores_text(self, cores: np.ndarray | None) -> str:
        mask = np.ones(self.cores, dtype=bool) if cores is None \
            else np.broadcast_to(np.asarray(cores, dtype=bool), (self.cores,))  # one entry: every core
        first = int(np.argmax(mask))
        more = int(mask.sum()) - 1
        text = f"({first % self.grid.x},{first // self.grid.x})"
        return text + (f" and {more} more cores" if more > 1 else " and 1 more core" if more == 1 else "")

    def _program_text(self) -> str:
        names = self.op.loc.names()
        kind = self.op.attr("kind")
        nodes = ", ".join(f'"{n}"' for n in names) if names else "unknown"
        return f"program {kind + ' ' if kind else ''}on a {self.grid.x}x{self.grid.y} grid, ONNX node(s) {nodes}"


# ----------------------------------------------------------------------------------------------
# Helpers


def dst_format_of(op: Operation) -> str:
    """What Dst holds while `op` (an enqueue_program) runs: Float16 when its result buffer (the last operand)
    is f16, else Float16_b (bf16)."""
    result = op.operands[-1].type if op.operands else None
    element = getattr(result, "element_type", None)
    return "f16" if element is not None and element.name == "f16" else "bf16"


def _full_attrs(op: Operation) -> dict[str, Any]:
    """The op's attributes with the declared defaults filled in (looked up once per op)."""
    opdef = op.opdef
    attrs = {d.name: d.default for d in opdef.attributes if not d.required} if opdef else {}
    attrs.update(op.attributes)
    return attrs


@functools.lru_cache(maxsize=256)
def _format_of(attr: TypeAttr | None) -> DataFormat | None:
    if attr is None:
        return None
    try:
        return data_format(attr.type)
    except ValueError as exc:
        raise Fault(str(exc)) from None


def _tile_format(cb: CircularBuffer) -> DataFormat:
    """The CB's format, checked to hold whole tiles (compute ops work on tiles)."""
    if cb.format is None:
        raise Fault(f"CB {cb.index} has no data format", cb=cb.index)
    if cb.page_size != cb.format.tile_bytes:
        raise Fault(f"CB {cb.index} pages are {cb.page_size} bytes, not {cb.format} tiles "
                    f"({cb.format.tile_bytes} bytes)", cb=cb.index)
    return cb.format


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
# Scalars


@handler("get_arg")
def get_arg(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """This core's runtime argument #index: runtime_args[kernel][core][index]."""
    k.env[op.results[0]] = p.runtime_arg(k, a["index"])


@handler("constant")
def constant(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.env[op.results[0]] = a["value"]


@handler("buffer_address")
def buffer_address(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """The allocated address of the program's buffer operand #operand."""
    index = a["operand"]
    if not 0 <= index < len(p.buffer_addresses):
        raise Fault(f"buffer operand #{index} does not exist (the program has {len(p.buffer_addresses)})")
    k.env[op.results[0]] = p.buffer_addresses[index]


@handler("addi")
def addi(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.env[op.results[0]] = k.env[op.operands[0]] + k.env[op.operands[1]]


@handler("muli")
def muli(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.env[op.results[0]] = k.env[op.operands[0]] * k.env[op.operands[1]]


@handler("mini")
def mini(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.env[op.results[0]] = np.minimum(k.env[op.operands[0]], k.env[op.operands[1]])


# ----------------------------------------------------------------------------------------------
# Circular buffers


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
# Data movement


@handler("addrgen")
def addrgen(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    memory = p.device.memory(a["memory"])
    k.env[op.results[0]] = AddrGen(k.env[op.operands[0]], a["page_size"], memory, _format_of(a["format"]),
                                   a["memory_layout"])


def _check_noc(gen: AddrGen, cb: CircularBuffer) -> None:
    if gen.format is not None and cb.format is not None and gen.format != cb.format:
        raise Fault(f"the buffer's format {gen.format} differs from CB {cb.index}'s format {cb.format}",
                    cb=cb.index)
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
    p.count_noc(gen, pages.shape[1], bank)


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
    p.count_noc(gen, int(wanted.sum()) // p.cores, bank, wanted)


def _valid_columns(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> np.ndarray | None:
    """[cores, rows * cols] mask of the block's tiles in columns c < valid_cols (None: no operand)."""
    if len(op.operands) < 3:
        return None
    valid = np.asarray(k.env[op.operands[2]], dtype=np.int64).reshape(-1, 1, 1)
    columns = np.broadcast_to(np.arange(a["cols"])[None, None, :], (1, a["rows"], a["cols"]))
    return np.broadcast_to(columns < valid, (p.cores, a["rows"], a["cols"])).reshape(p.cores, -1)


@handler("noc_read_pages")
def noc_read_pages(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Whole pages start..start+count-1 (e.g. rows of an index table) -> reserved back pages of cb."""
    gen, start = k.env[op.operands[0]], k.env[op.operands[1]]
    _read_into_cb(p, k, gen, _start_pages(start, page_range(0, a["count"])), p.cb(a["cb"]), a["cb_offset"])


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
    p.count_noc(gen, int(mine.sum()) // p.cores)


@handler("noc_read_rows_indexed")
def noc_read_rows_indexed(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Pages j < valid of the buffer by the int32 indices at index_offset + j of index_cb's waited front
    page -> reserved back pages of cb; pages j >= valid zero-filled (per core: offset and valid may differ)."""
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
    _check_noc(gen, cb)
    bank, address = _locate(gen, np.where(wanted, indices, 0), "read", cb)  # padding rows: nothing read
    rows = gen.memory.read(bank, address, gen.page_size)
    rows[~wanted] = 0
    p.put_pages(cb, slots, rows)
    k.pending_reads.add(cb.index)
    p.count_noc(gen, int(wanted.sum()) // p.cores)


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
        p.count_noc(gen, len(tiles), bank)
    else:  # the written pages were compacted to one row: locality is not tracked past a ragged edge
        p.count_noc(gen, int(wanted.sum()) // p.cores)


@handler("noc_write_rows")
def noc_write_rows(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """The first `valid` of `count` waited front pages of cb -> pages start.. of a row-major buffer."""
    gen, start = k.env[op.operands[0]], k.env[op.operands[1]]
    valid = np.asarray(k.env[op.operands[2]], dtype=np.int64).reshape(-1)
    cb, count = p.cb(a["cb"]), a["count"]
    slots = p.front_slots(cb, page_range(0, count))
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
    p.count_noc(gen, int(valid.sum()) // p.cores)


@handler("noc_read_barrier")
def noc_read_barrier(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.pending_reads.clear()


@handler("noc_write_barrier")
def noc_write_barrier(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.pending_writes.clear()


# ----------------------------------------------------------------------------------------------
# Dst ownership


@handler("tile_regs_acquire")
def tile_regs_acquire(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Math takes the other half of Dst; its contents are undefined (NaN here: the slots math wrote since
    they were last filled are filled again, the others still hold that NaN)."""
    p.dst_transition("released", "acquired", "tile_regs_acquire")
    p.dst_half ^= 1
    half = range(p.dst_half * HALF_DST, (p.dst_half + 1) * HALF_DST)
    written = [slot for slot in half if slot in p.dst_written]
    if written:  # every other slot of the half is NaN already: filled, and no math op wrote it since
        p.dst[:, written[0]: written[-1] + 1] = np.nan
        p.dst_written.difference_update(written)


@handler("tile_regs_commit")
def tile_regs_commit(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    p.dst_transition("acquired", "committed", "tile_regs_commit")


@handler("tile_regs_wait")
def tile_regs_wait(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    p.dst_transition("committed", "waited", "tile_regs_wait")


@handler("tile_regs_release")
def tile_regs_release(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    p.dst_transition("waited", "released", "tile_regs_release")


# ----------------------------------------------------------------------------------------------
# Compute


def _operand_tiles(p: Program, a: dict[str, Any], cb_key: str, prefix: str) -> np.ndarray:
    """The block of tiles [cores, rows*cols, 32, 32] an op reads from a CB's waited window."""
    tiles = tile_block(a[f"{prefix}offset"], a["rows"], a["cols"], a[f"{prefix}row_stride"],
                       a[f"{prefix}col_stride"])
    return p.unpack_front(p.cb(a[cb_key]), tiles)


@handler("copy_tiles")
def copy_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot(r, c) = tile(r, c) of cb (unpack + datacopy)."""
    slots = p.math_slots(a["dst"], a["rows"] * a["cols"])
    p.dst[:, slots] = p.to_dst(_operand_tiles(p, a, "cb", ""), p.cb(a["cb"]))
    p.count_compute("datacopy", a["rows"] * a["cols"])


@handler("transpose_tiles")
def transpose_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot(r, c) = tile(r, c) of cb transposed within the tile."""
    slots = p.math_slots(a["dst"], a["rows"] * a["cols"])
    p.dst[:, slots] = p.to_dst(_operand_tiles(p, a, "cb", ""), p.cb(a["cb"])).swapaxes(-1, -2)
    p.count_compute("datacopy", a["rows"] * a["cols"])


@handler("tilize_tiles")
def tilize_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot c = the tile at tile column col_offset + c of the 32 waited row pages of cb (zero past a row)."""
    cb, cols = p.cb(a["cb"]), a["cols"]
    slots = p.math_slots(a["dst"], cols)
    rows = unpack_rows(p.get_pages(cb, p.front_slots(cb, page_range(0, TILE))), cb)  # [cores, 32, width]
    first = a["col_offset"] * TILE
    block = np.zeros((p.cores, TILE, cols * TILE), dtype=np.float32)
    part = rows[:, :, first: first + cols * TILE]
    block[:, :, : part.shape[2]] = part
    p.dst[:, slots] = block.reshape(p.cores, TILE, cols, TILE).swapaxes(1, 2)
    p.count_compute("datacopy", cols)


@handler("pack_rows")
def pack_rows(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slots dst.. (a row of tiles) -> element columns 32*col_offset.. of the 32 reserved row pages of cb."""
    if p.dst_state != "waited":
        raise Fault(f"pack_rows while Dst is {p.dst_state} (pack runs between tile_regs_wait and "
                    "tile_regs_release)")
    cb, cols = p.cb(a["cb"]), a["cols"]
    tiles = p.dst[:, p.dst_slots(a["dst"], cols)]  # [cores, cols, 32, 32]
    rows = tiles.swapaxes(1, 2).reshape(p.cores, TILE, cols * TILE)
    slots = p.back_slots(cb, page_range(0, TILE))
    element = 2 if cb.format is DataFormat.BFLOAT16 else 4
    width = cb.page_size // element
    first = a["col_offset"] * TILE
    if first >= width:
        raise Fault(f"pack_rows at column {first} is past the {width}-element rows of CB {cb.index}", cb=cb.index)
    part = rows[:, :, : width - first]
    pages = p.get_pages(cb, slots).copy()
    pages[:, :, first * element: (first + part.shape[2]) * element] = pack_row_values(part, cb)
    p.put_pages(cb, slots, pages)


def pack_row_values(values: np.ndarray, cb: CircularBuffer) -> np.ndarray:
    """float32 values [..., n] -> the bytes [..., n * element] of a row-major CB (bf16 RNE or float32)."""
    if cb.format is DataFormat.BFLOAT16:
        raw = numerics.bf16_round(values).view(np.uint32) >> 16
        return np.ascontiguousarray(raw.astype("<u2")).view(np.uint8)
    if cb.format is DataFormat.FLOAT32:
        return np.ascontiguousarray(values.astype("<f4")).view(np.uint8)
    raise Fault(f"CB {cb.index} holds {cb.format} rows, which untilize cannot pack (bf16 or float32 rows)",
                cb=cb.index)


def unpack_rows(pages: np.ndarray, cb: CircularBuffer) -> np.ndarray:
    """Row-major pages [cores, n, page_size] of a CB -> values [cores, n, page_size / element bytes] (bf16 or
    float32, as float32)."""
    if cb.format is DataFormat.BFLOAT16:
        raw = np.ascontiguousarray(pages).view("<u2").astype(np.uint32) << 16
        return raw.view(np.float32)
    if cb.format is DataFormat.FLOAT32:
        return numerics.bf16_round(np.ascontiguousarray(pages).view("<f4"))
    raise Fault(f"CB {cb.index} holds {cb.format} rows, which tilize cannot unpack (bf16 or float32 rows)",
                cb=cb.index)


_BROADCAST = {"none": np.s_[...], "row": np.s_[..., 0:1, :], "col": np.s_[..., :, 0:1],
              "scalar": np.s_[..., 0:1, 0:1]}


@handler("binary_tiles")
def binary_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot(r, c) = A(r, c) op B(r, c) on the FPU (in the Dst format), B broadcast inside its tile per
    bcast."""
    slots = p.math_slots(a["dst"], a["rows"] * a["cols"])
    lhs = _operand_tiles(p, a, "cb_a", "a_")
    rhs = _operand_tiles(p, a, "cb_b", "b_")[_BROADCAST[a["bcast"]]]
    p.dst[:, slots] = numerics.eltwise_binary(lhs, rhs, a["op"], p.dst_format)
    p.count_compute(a["op"], a["rows"] * a["cols"])


@handler("matmul_tiles")
def matmul_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot(r, c) += sum over k of A(r, k) @ B(k, c), accumulating in the 16-bit Dst."""
    rows, cols, inner = a["rows"], a["cols"], a["inner"]
    slots = p.math_slots(a["dst"], rows * cols)
    lhs = p.unpack_front(p.cb(a["cb_a"]), tile_block(a["a_offset"], rows, inner, a["a_row_stride"], 1))
    rhs = p.unpack_front(p.cb(a["cb_b"]), tile_block(a["b_offset"], inner, cols, a["b_row_stride"], 1))
    acc = p.dst[:, slots].reshape(p.cores, rows, cols, TILE, TILE)
    out = numerics.matmul_block_accumulate(acc, lhs.reshape(p.cores, rows, inner, TILE, TILE),
                                           rhs.reshape(p.cores, inner, cols, TILE, TILE), a["fidelity"],
                                           # bf16 and block-float tiles unpack to bf16 values already
                                           bf16_operands=DataFormat.FLOAT16 not in (p.cb(a["cb_a"]).format,
                                                                                    p.cb(a["cb_b"]).format),
                                           dst_format=p.dst_format)
    p.dst[:, slots] = out.reshape(p.cores, rows * cols, TILE, TILE)
    p.count_matmul(rows * cols * inner, a["fidelity"])


@handler("reduce_tiles")
def reduce_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot dst accumulates the reduction (sum via the matmul unit, or max) of the block's tiles."""
    slot = p.math_slots(a["dst"], 1)
    tiles = _operand_tiles(p, a, "cb", "")
    p.dst[:, slot] = numerics.reduce_block(p.dst[:, slot][:, 0], tiles, a["dim"], a["kind"], a["scaler"],
                                           a["fidelity"], p.dst_format)[:, None]
    if a["kind"] == "sum":
        p.count_matmul(tiles.shape[1], a["fidelity"])
    else:
        p.count_compute("add", tiles.shape[1])


@handler("sfpu_tiles")
def sfpu_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slots dst.. = fn(slot) in place (float32 math, rounded to the Dst format)."""
    slots = p.math_slots(a["dst"], a["count"])
    p.dst[:, slots] = numerics.sfpu_unary(p.dst[:, slots], a["fn"], a["param"], p.dst_format)
    cost = a["fn"] if a["fn"] in p.desc.tile_op_cycles else SFPU_COST_KEYS.get(a["fn"], _DEFAULT_SFPU_COST_KEY)
    p.count_compute(cost, a["count"])


@handler("sfpu_binary_tiles")
def sfpu_binary_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slots dst.. = fn(slot, slot dst_b..) (float32 math, rounded to the Dst format)."""
    slots = p.math_slots(a["dst"], a["count"])
    operands = p.dst_slots(a["dst_b"], a["count"])
    p.dst[:, slots] = numerics.sfpu_binary(p.dst[:, slots], p.dst[:, operands], a["fn"], p.dst_format)
    p.count_compute(SFPU_COST_KEYS.get(a["fn"], _DEFAULT_SFPU_COST_KEY), a["count"])


@handler("fill_tiles")
def fill_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slots dst.. = value (rounded to the Dst format)."""
    slots = p.math_slots(a["dst"], a["count"])
    p.dst[:, slots] = numerics.dst_round(np.float32(a["value"]), p.dst_format)
    p.count_compute("datacopy", a["count"])


@handler("mask_tiles")
def mask_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Padding elements (tensor row >= valid_rows or column >= valid_cols) of Dst slot(r, c) = fill.

    A select, not a multiply: padding becomes `fill` even where the data is NaN or inf.
    """
    rows, cols = a["rows"], a["cols"]
    slots = p.math_slots(a["dst"], rows * cols)
    row_tile = np.asarray(k.env[op.operands[0]], dtype=np.int64).reshape(-1, 1, 1, 1, 1)
    col_tile = np.asarray(k.env[op.operands[1]], dtype=np.int64).reshape(-1, 1, 1, 1, 1)
    row = (row_tile + np.arange(rows).reshape(1, rows, 1, 1, 1)) * TILE + np.arange(TILE).reshape(1, 1, 1, TILE, 1)
    col = (col_tile + np.arange(cols).reshape(1, 1, cols, 1, 1)) * TILE + np.arange(TILE).reshape(1, 1, 1, 1, TILE)
    padding = (row >= a["valid_rows"]) | (col >= a["valid_cols"])
    block = p.dst[:, slots].reshape(p.cores, rows, cols, TILE, TILE)
    fill = numerics.dst_round(np.float32(a["fill"]), p.dst_format)
    p.dst[:, slots] = np.where(padding, fill, block).reshape(p.cores, rows * cols, TILE, TILE)
    p.count_compute("datacopy", rows * cols)


@handler("pack_tiles")
def pack_tiles_(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slots dst.. -> reserved back pages of cb from cb_offset, converted to the CB's format."""
    if p.dst_state != "waited":
        raise Fault(f"pack_tiles while Dst is {p.dst_state} (pack runs between tile_regs_wait and "
                    "tile_regs_release)")
    cb, count = p.cb(a["cb"]), a["count"]
    slots = p.dst_slots(a["dst"], count)
    pages = p.back_slots(cb, page_range(a["cb_offset"], count))
    p.put_pages(cb, pages, pack_tiles(p.dst[:, slots], _tile_format(cb)))
