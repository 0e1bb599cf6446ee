"""Compute: the Dst registers and their protocol, and the math and pack ops (unpack, datacopy, FPU, SFPU, pack).

Conventions fixed here where the dialect is silent
- The Dst protocol state depends only on op attributes, so it is the same on every core and is kept
  once; the Dst contents are per core.
- Dst contents are undefined after tile_regs_acquire: the emulator fills the acquired half with NaN
  (re-filling only the slots math wrote since their last fill; the others still hold NaN), so a kernel
  that accumulates (matmul, reduce) without fill_tiles first gets NaN, not luck.
  Acquires alternate between the two halves of Dst (half-sync); one acquire addresses slots 0..7.
- Dst holds the 16-bit type of the program's result format (`dst_format_of`): f16 for an f16 result,
  else bf16. In a Float16 Dst a finite value that rounds past 65504 (to inf) is a device fault at its op
  (`F16_OVERFLOW`, on all cores), never a silent inf. A datacopy of a CB tile into Dst converts to it
  (RNE): bf16 and block floats are exact in a bf16 Dst, f32 rounds, i32 goes int -> float -> Dst format.
  Math ops take 16-bit and block-float tiles as they are and round their operands as numerics.py says
  (matmul and reduce-sum: bf16 into the multiplier; eltwise and reduce-max: the Dst format). Packing to
  an i32 CB truncates.
- Each math op charges its compute cycles (`Accounting.charge`, accounting.py says what each op costs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ttc.ir.core import Operation
from ttc.runtime import numerics
from ttc.runtime.dataflow import CircularBuffer, Offsets, page_range, tile_block
from ttc.runtime.device import Device, Fault
from ttc.runtime.formats import TILE, DataFormat, pack_tiles, unpack_tiles
from ttc.runtime.handlers import handler

if TYPE_CHECKING:  # types only: the scheduler imports this module, not the other way round
    from ttc.runtime.interpreter import Kernel, Program

HALF_DST = 8  # Dst tiles one acquire may use (half-sync double buffering)

# The fault of a program holding Float16 in Dst whose numerics round a finite value to +-inf
# (numerics.Float16Overflow), named at the op on every core of the program.
F16_OVERFLOW = ("Float16 overflow: a value rounded to Float16 exceeds 65504, the largest Float16 value (this "
                "program holds Float16 in Dst: --softmax-precision f16, or a range layout's bounded-f16 proved)")


# ----------------------------------------------------------------------------------------------
# Dst state


def dst_format_of(op: Operation) -> str:
    """What Dst holds while `op` (an enqueue_program) runs: Float16 when its result buffer (the last operand)
    is f16, else Float16_b (bf16)."""
    result = op.operands[-1].type if op.operands else None
    element = getattr(result, "element_type", None)
    return "f16" if element is not None and element.name == "f16" else "bf16"


class DstRegisters:
    """The Dst registers of a running program (a mixin of `interpreter.Program`): both halves on every core,
    the protocol state and the format they hold."""

    cores: int

    def _init_dst(self, device: Device, op: Operation) -> None:
        self.dst = device.dst_registers(self.cores, 2 * HALF_DST)  # undefined until acquired (NaN-filled)
        self.dst_format = dst_format_of(op)
        self.dst_state = "released"
        self.dst_half = 1
        self.dst_written = set(range(2 * HALF_DST))  # slots that may hold other than NaN (all, at first)

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


# ----------------------------------------------------------------------------------------------
# Unpacking CB tiles


def _tile_format(cb: CircularBuffer) -> DataFormat:
    """The CB's format, checked to hold whole tiles (compute ops work on tiles)."""
    if cb.format is None:
        raise Fault(f"CB {cb.index} has no data format", cb=cb.index)
    if cb.page_size != cb.format.tile_bytes:
        raise Fault(f"CB {cb.index} pages are {cb.page_size} bytes, not {cb.format} tiles "
                    f"({cb.format.tile_bytes} bytes)", cb=cb.index)
    return cb.format


def unpack_front(p: Program, cb: CircularBuffer, offsets: Offsets) -> np.ndarray:
    """Tiles [cores, n, 32, 32] at waited-window offsets as the FPU's source registers get them: 16-bit
    and block-float values exactly, f32 and i32 rounded to the Dst format. Each math op rounds its
    operands further as its numerics say (matmul: bf16; eltwise: the Dst format)."""
    fmt = _tile_format(cb)
    tiles = unpack_tiles(p.get_pages(cb, p.front_slots(cb, offsets)), fmt)
    if fmt in (DataFormat.FLOAT32, DataFormat.INT32):
        return numerics.dst_round(tiles, p.dst_format)
    return tiles


def to_dst(p: Program, tiles: np.ndarray, cb: CircularBuffer) -> np.ndarray:
    """Unpacked tiles of cb (`unpack_front`) as a datacopy leaves them in Dst: in the Dst format."""
    if p.dst_format == "f16":
        return tiles if cb.format is DataFormat.FLOAT16 else numerics.as_f16(tiles)
    return numerics.bf16_round(tiles) if cb.format is DataFormat.FLOAT16 else tiles


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
    return unpack_front(p, p.cb(a[cb_key]), tiles)


@handler("copy_tiles")
def copy_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot(r, c) = tile(r, c) of cb (unpack + datacopy)."""
    slots = p.math_slots(a["dst"], a["rows"] * a["cols"])
    p.dst[:, slots] = to_dst(p, _operand_tiles(p, a, "cb", ""), p.cb(a["cb"]))
    p.charge(op, a)


@handler("transpose_tiles")
def transpose_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot(r, c) = tile(r, c) of cb transposed within the tile."""
    slots = p.math_slots(a["dst"], a["rows"] * a["cols"])
    p.dst[:, slots] = to_dst(p, _operand_tiles(p, a, "cb", ""), p.cb(a["cb"])).swapaxes(-1, -2)
    p.charge(op, a)


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
    p.charge(op, a)


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
    p.charge(op, a)


@handler("matmul_tiles")
def matmul_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot(r, c) += sum over k of A(r, k) @ B(k, c), accumulating in the 16-bit Dst (onto zeros, not the
    slots' contents, with accumulate = false)."""
    rows, cols, inner = a["rows"], a["cols"], a["inner"]
    slots = p.math_slots(a["dst"], rows * cols)
    lhs = unpack_front(p, p.cb(a["cb_a"]), tile_block(a["a_offset"], rows, inner, a["a_row_stride"], 1))
    rhs = unpack_front(p, p.cb(a["cb_b"]), tile_block(a["b_offset"], inner, cols, a["b_row_stride"], 1))
    acc = p.dst[:, slots].reshape(p.cores, rows, cols, TILE, TILE)
    if not a["accumulate"]:
        acc = np.zeros_like(acc)
    out = numerics.matmul_block_accumulate(acc, lhs.reshape(p.cores, rows, inner, TILE, TILE),
                                           rhs.reshape(p.cores, inner, cols, TILE, TILE), a["fidelity"],
                                           # bf16 and block-float tiles unpack to bf16 values already
                                           bf16_operands=DataFormat.FLOAT16 not in (p.cb(a["cb_a"]).format,
                                                                                    p.cb(a["cb_b"]).format),
                                           dst_format=p.dst_format)
    p.dst[:, slots] = out.reshape(p.cores, rows * cols, TILE, TILE)
    p.charge(op, a)


@handler("reduce_tiles")
def reduce_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slot dst accumulates the reduction (sum via the matmul unit, or max) of the block's tiles."""
    slot = p.math_slots(a["dst"], 1)
    tiles = _operand_tiles(p, a, "cb", "")
    p.dst[:, slot] = numerics.reduce_block(p.dst[:, slot][:, 0], tiles, a["dim"], a["kind"], a["scaler"],
                                           a["fidelity"], p.dst_format)[:, None]
    p.charge(op, a)


@handler("sfpu_tiles")
def sfpu_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slots dst.. = fn(slot) in place (float32 math, rounded to the Dst format)."""
    slots = p.math_slots(a["dst"], a["count"])
    p.dst[:, slots] = numerics.sfpu_unary(p.dst[:, slots], a["fn"], a["param"], p.dst_format)
    p.charge(op, a)


@handler("sfpu_binary_tiles")
def sfpu_binary_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slots dst.. = fn(slot, slot dst_b..) (float32 math, rounded to the Dst format)."""
    slots = p.math_slots(a["dst"], a["count"])
    operands = p.dst_slots(a["dst_b"], a["count"])
    p.dst[:, slots] = numerics.sfpu_binary(p.dst[:, slots], p.dst[:, operands], a["fn"], p.dst_format)
    p.charge(op, a)


@handler("fill_tiles")
def fill_tiles(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Dst slots dst.. = value (rounded to the Dst format)."""
    slots = p.math_slots(a["dst"], a["count"])
    p.dst[:, slots] = numerics.dst_round(np.float32(a["value"]), p.dst_format)
    p.charge(op, a)


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
    p.charge(op, a)


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
