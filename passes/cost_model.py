"""The analytic cost model the grid pass ranks candidate grids and blockings with.

Every figure comes from the device descriptor (`#tt.device`), the same data the emulator charges
its cycles from, so the model and the emulator's profile agree on what an op costs:

- compute (per core): tile ops x the descriptor's per-tile cycles (`tile_op_cycles`, which include
  unpack and pack); a tile matmul costs `matmul_cycles_per_phase` x the fidelity's phases per
  tile-MAC, and so does a reduce-sum (it runs on the matrix unit);
- DRAM: the bytes all cores move from and to DRAM buffers over `dram_bytes_per_cycle`;
- NoC (per core): the bytes the core moves over `noc_bytes_per_cycle`, plus the latency of each
  transfer group (a barrier): the average hop distance x `noc_hop_cycles`, and the write start-up;
- modelled time = max(compute, DRAM, NoC) + a launch overhead growing with the cores used, so a
  small op does not spread over cores it cannot keep busy.
- sharded tensors (L1): a matmul's tiles that sit in the core's own shard (its output written into its own
  shard, its activation rows read from its own shard) move no NoC bytes (`shard_locality`); the rest are
  remote L1 reads over the NoC, like interleaved L1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ttc.ir.core import Operation, Value
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.passes.footprint import (
    HALF_DST,
    SFPU_BINARY,
    TILE,
    MatmulShape,
    Phase,
    ShardGeometry,
    accumulation_tiles,
    core_bank,
    eltwise_plan,
    embedding_geometry,
    gather_of,
    layout,
    matmul_masks,
    matmul_shape,
    program_operands,
    reduction_of,
    shard_geometry,
    tensor,
    tile_bytes,
    tile_shape,
)

LAUNCH_CYCLES = 2000  # program dispatch and kernel start (host + firmware), per program
LAUNCH_CYCLES_PER_CORE = 20  # runtime arguments and launch messages, per core
FIDELITY_PHASES = {"lofi": 1, "hifi2": 2, "hifi3": 3, "hifi4": 4}
# SFPU functions without their own tile_op_cycles entry cost like these (as the emulator charges).
SFPU_COST_KEYS = {"rsqrt": "recip", "tanh": "sigmoid", "gelu_tanh": "gelu", "erf": "gelu", "pow_scalar": "exp",
                  "rpow_scalar": "exp", "softplus": "log", "mish": "log", "pow": "log"}
SIMPLE_SFPU_KEY = "mul"  # relu, neg, abs, square and the *_scalar forms: one simple SFPU pass


@dataclass(frozen=True)
class Cost:
    """Modelled cycles of one program (compute and NoC per core; DRAM for the whole chip)."""

    compute: float
    dram: float
    noc: float
    launch: float

    @property
    def bound(self) -> str:
        terms = {"compute": self.compute, "dram": self.dram, "noc": self.noc}
        return max(terms, key=lambda k: terms[k])

    @property
    def cycles(self) -> float:
        return max(self.compute, self.dram, self.noc) + self.launch

    def as_attr(self) -> dict[str, object]:
        return {"cycles": round(self.cycles), "bound": self.bound}


@dataclass
class Work:
    """What one core of a program does: compute cycles, NoC bytes, DRAM bytes and transfer groups."""

    compute: float = 0.0
    noc_bytes: float = 0.0
    dram_bytes: float = 0.0  # this core's share of DRAM traffic
    transfers: int = 0  # barriers: each pays the NoC latency once

    def move(self, tiles: float, page: int, dram: bool, groups: int) -> None:
        self.noc_bytes += tiles * page
        self.dram_bytes += tiles * page if dram else 0
        self.transfers += groups


def tile_cycles(device: DeviceAttr, key: str) -> int:
    return device.tile_op_cycles[key]


def sfpu_cycles(device: DeviceAttr, fn: str) -> int:
    table = device.tile_op_cycles
    key = fn if fn in table else SFPU_COST_KEYS.get(fn, SIMPLE_SFPU_KEY)
    return table[key]


def mac_cycles(device: DeviceAttr, fidelity: str) -> int:
    return device.matmul_cycles_per_phase * FIDELITY_PHASES[fidelity]


def in_dram(value: Value) -> bool:
    return layout(tensor(value)).memory_space == "dram"


def page(value: Value) -> int:
    return tile_bytes(tensor(value).element_type)


# ----------------------------------------------------------------------------------------------
# Sharded operands: which of a core's tiles are in its own L1


@functools.lru_cache(maxsize=4096)
def shard_locality(geometry: ShardGeometry, row_starts: tuple[tuple[int, ...], ...], rows: int,
                   cols: tuple[tuple[int, int], ...], grid: tuple[int, int], device_x: int) -> float:
    """The fraction of the tiles the program's cores move that lie in their own shard, averaged over the
    cores. Core k moves tile rows row_starts[k][j] + 0..rows-1 and tile columns cols[k] = (first, count);
    its L1 is device core core_bank(k, grid); shard s lives on core_bank(s, geometry.grid)."""
    moved = local = 0
    for k, (starts, (first, count)) in enumerate(zip(row_starts, cols, strict=True)):
        tile_rows = (np.asarray(starts)[:, None] + np.arange(rows)[None, :]).reshape(-1, 1)
        owner = geometry.owner(tile_rows, first + np.arange(count)[None, :])
        banks = core_bank(owner, geometry.grid, device_x)
        local += int((banks == core_bank(k, grid, device_x)).sum())
        moved += owner.size
    return local / moved if moved else 0.0


def matmul_units(shape: MatmulShape, b: dict[str, int]) -> tuple[int, int, int]:
    return shape.batches // b["batches"], shape.mt // b["per_core_m"], -(-shape.nt // b["per_core_n"])


def matmul_locality(op: Operation, b: dict[str, int], grid: tuple[int, int], device: DeviceAttr, operand: str,
                    result_layout: LayoutAttr | None = None) -> float:
    """Local fraction of a matmul's activation reads (operand "a", all K per row) or output writes ("out")
    on a sharded tensor, under blocking b on `grid` (cores take the work units in row-major order)."""
    shape = matmul_shape(op)
    t = tensor(op.operands[0]) if operand == "a" else tensor(op.result)
    if operand == "out" and result_layout is not None:
        t = t.with_encoding(result_layout)
    units = matmul_units(shape, b)
    row_starts, cols = [], []
    for k in range(units[0] * units[1] * units[2]):
        group, m, n = (int(i) for i in np.unravel_index(k, units))
        batches = range(group * b["batches"], (group + 1) * b["batches"])
        if operand == "a":
            row_starts.append(tuple(int(shape.a_offsets[i]) // shape.kt + m * b["per_core_m"] for i in batches))
            cols.append((0, shape.kt))
        else:
            row_starts.append(tuple(i * shape.mt + m * b["per_core_m"] for i in batches))
            first = n * b["per_core_n"]
            cols.append((first, min(b["per_core_n"], shape.nt - first)))
    return shard_locality(shard_geometry(t), tuple(row_starts), b["per_core_m"], tuple(cols), tuple(grid),
                          device.compute_grid[0])


# ----------------------------------------------------------------------------------------------
# Per-kind work of one core


def matmul_work(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str,
                result_layout: LayoutAttr | None = None, grid: tuple[int, int] | None = None) -> Work:
    """With `result_layout`, the output as if it had that layout; `grid` places the cores (needed when an
    operand or the output is sharded, to tell local from remote tiles)."""
    shape = matmul_shape(op)
    a, w, out = op.operands[0], op.operands[1], op.result
    out_layout = result_layout or layout(tensor(out))
    batches, pcm, pcn, width = b["batches"], b["per_core_m"], b["per_core_n"], b["in0_block_w"]
    sh, sw = pcm // b["out_subblock_h"], pcn // b["out_subblock_w"]
    k_blocks = shape.kt // width
    work = Work()
    out_tiles = batches * pcm * pcn
    work.compute = out_tiles * shape.kt * mac_cycles(device, fidelity)
    work.compute += out_tiles * k_blocks * tile_cycles(device, "datacopy")  # Dst zeroed, then partials reloaded
    chunks = shape.kt // accumulation_tiles(shape.kt)
    work.compute += out_tiles * (chunks - 1) * tile_cycles(device, "add")  # chunk sums added to the total
    if any(matmul_masks(op)):
        work.compute += out_tiles * tile_cycles(device, "datacopy")
    a_remote = 1.0
    if layout(tensor(a)).memory_layout != "interleaved" and grid is not None:
        a_remote -= matmul_locality(op, b, grid, device, "a")
    work.move(batches * pcm * shape.kt * a_remote, page(a), in_dram(a), batches * k_blocks * sh)
    work.move(batches * shape.kt * pcn * sh, page(w), in_dram(w), batches * k_blocks * sh * sw)
    if len(op.operands) > 2:
        bias = op.operands[2]
        work.move(batches * sh * pcn, page(bias), in_dram(bias), 0)
        work.compute += out_tiles * tile_cycles(device, "add")
    activation = op.attributes.get("activation", "none")
    if activation != "none":
        work.compute += out_tiles * sfpu_cycles(device, activation)
    out_remote = 1.0
    if out_layout.memory_layout != "interleaved" and grid is not None:
        out_remote -= matmul_locality(op, b, grid, device, "out", out_layout)
    work.move(out_tiles * out_remote, page(out), out_layout.memory_space == "dram", batches * sh * sw)
    return work


def phase_cycles(device: DeviceAttr, phase: Phase, block_w: int) -> float:
    tiles = block_w if phase.full else 1
    if phase.op in SFPU_BINARY:  # both operands copied into Dst, then the binary SFPU function
        entry = 2 * tile_cycles(device, "datacopy") + sfpu_cycles(device, phase.op)
    else:
        entry = tile_cycles(device, "datacopy" if phase.op == "copy" else phase.op)
    return tiles * (entry + sum(sfpu_cycles(device, fn) for fn, _ in phase.sfpu))


def eltwise_work(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str) -> Work:
    plan = eltwise_plan(op)
    width = b["block_w"]
    blocks = b["batches"] * b["rows"] * (b["cols"] // width)
    work = Work()
    work.compute = blocks * sum(phase_cycles(device, p, width) for p in plan.phases)
    if plan.mask_rows or plan.mask_cols:
        work.compute += blocks * width * tile_cycles(device, "datacopy")
    if plan.zero_cb is not None:
        work.compute += tile_cycles(device, "datacopy")  # the zero tile, filled once
    for value, full in zip(op.operands, plan.inputs, strict=True):
        work.move(blocks * (width if full else 1), page(value), in_dram(value), 0)
    work.transfers += blocks
    work.move(blocks * width, page(op.result), in_dram(op.result), blocks)
    return work


def row_op_work(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str) -> Work:
    """Softmax and layer norm: whole rows of ct tiles, a few passes over each row."""
    ct = tile_shape(tensor(op.operands[0]).shape).ct
    rows = b["batches"] * b["rows"]
    cyc = device.tile_op_cycles
    reduce_sum = ct * mac_cycles(device, fidelity)
    if op.name == "ttir.softmax":
        per_row = ct * (cyc["add"] + cyc["sub"] + cyc["exp"] + cyc["mul"] + 2 * cyc["datacopy"]) \
            + reduce_sum + cyc["recip"] + cyc["datacopy"]
        reads = ct
    else:  # centre twice (value and square), square, scale by rstd and gamma, shift by beta, masks
        params = len(op.operands) - 1
        per_row = ct * (2 * cyc["sub"] + 3 * cyc["mul"] + (params - 1) * cyc["add"] + 3 * cyc["datacopy"]) \
            + 2 * reduce_sum + cyc["recip"] + cyc["mul"]
        reads = ct * (1 + params)
    work = Work(compute=rows * per_row)
    work.move(rows * reads, page(op.operands[0]), in_dram(op.operands[0]), rows * (ct // b["block_w"]))
    work.move(rows * ct, page(op.result), in_dram(op.result), rows * (ct // b["block_w"]))
    return work


def gather_work(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str) -> Work:
    source = program_operands(op)[0]
    steps = b["tiles"] // b["block"]
    work = Work()
    if gather_of(op).transposed:
        work.compute = b["tiles"] * tile_cycles(device, "datacopy")
    work.move(b["tiles"], page(source), in_dram(source), steps)
    work.move(steps, 32, True, 0)  # index table pages
    work.move(b["tiles"], page(op.result), in_dram(op.result), steps)
    return work


def embedding_work(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str) -> Work:
    """Per tile row: one index page, 32 table rows (one NoC read each), a tilize per tile, the tiles out."""
    out, ids_per_page, row_bytes = embedding_geometry(op)
    tile_rows = b["batches"] * b["rows"]
    table, ids = op.operands
    work = Work(compute=tile_rows * out.ct * tile_cycles(device, "datacopy"))
    work.move(tile_rows, ids_per_page * 4, in_dram(ids), tile_rows)
    work.move(tile_rows * TILE, row_bytes, in_dram(table), tile_rows)  # 32 row reads, one barrier
    work.move(tile_rows * out.ct, page(op.result), in_dram(op.result), tile_rows * (out.ct // b["block_w"]))
    return work


def reduce_work(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str) -> Work:
    """Per line: its tiles read and reduced (a sum on the matrix unit), the group sums reduced, one tile out."""
    reduction = reduction_of(op)
    lines = b["batches"] * b["lines"]
    per_tile = mac_cycles(device, fidelity) if reduction.kind == "sum" else tile_cycles(device, "add")
    work = Work(compute=lines * (reduction.length + HALF_DST) * per_tile)
    x = op.operands[0]
    work.move(lines * reduction.length, page(x), in_dram(x), lines * (reduction.streamed // b["block_w"] + 1))
    work.move(lines, page(op.result), in_dram(op.result), lines)
    return work


def untilize_work(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str) -> Work:
    """Per tile row: its tiles in, an untilize per tile, 32 row pages out (one NoC write each)."""
    source = tile_shape(tensor(op.operands[0]).shape)
    tile_rows = b["batches"] * b["rows"]
    x = op.operands[0]
    work = Work(compute=tile_rows * source.ct * tile_cycles(device, "datacopy"))
    work.move(tile_rows * source.ct, page(x), in_dram(x), tile_rows * (source.ct // b["block_w"]))
    row_bytes = source.cols * tile_bytes(tensor(op.result).element_type) // (TILE * TILE)
    work.move(tile_rows * TILE, row_bytes, in_dram(op.result), tile_rows)
    return work


_WORK = {"matmul": matmul_work, "eltwise": eltwise_work, "softmax": row_op_work, "layer_norm": row_op_work,
         "data_movement": gather_work, "embedding": embedding_work, "reduce": reduce_work,
         "untilize": untilize_work}


def average_hops(device: DeviceAttr) -> float:
    """Mean unicast distance on the NoC torus: a quarter of the grid's width plus height."""
    x, y = device.worker_grid
    return (x + y) / 4


def estimate(op: Operation, kind: str, device: DeviceAttr, cores: int, blocking: dict[str, int],
             fidelity: str, result_layout: LayoutAttr | None = None, grid: tuple[int, int] | None = None) -> Cost:
    """The modelled cost of `op` on `cores` cores with `blocking` (every core does the same work); for a
    matmul, `result_layout` replaces the result's layout and `grid` places the cores for sharded tensors."""
    if kind == "matmul":
        work = matmul_work(op, device, blocking, fidelity, result_layout, grid)
    else:
        work = _WORK[kind](op, device, blocking, fidelity)
    latency = work.transfers * (average_hops(device) * device.noc_hop_cycles + device.noc_write_startup_cycles)
    noc = work.noc_bytes / device.noc_bytes_per_cycle + latency
    dram = work.dram_bytes * cores / device.dram_bytes_per_cycle
    launch = LAUNCH_CYCLES + LAUNCH_CYCLES_PER_CORE * cores
    return Cost(work.compute, dram, noc, launch)
