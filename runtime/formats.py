"""Grayskull tile data formats: layouts, byte packing and quantisation (pure numpy).

A tile is 32x32 values stored as four 16x16 faces (face0 top-left, face1 top-right, face2 bottom-left,
face3 bottom-right), each row-major, so element (i, j) sits at
``(i//16*2 + j//16)*256 + (i%16)*16 + (j%16)``.  Every packed format stores its values in this order.

Formats (bytes per tile): Float32 4096, Float16_b 2048, Float16 2048, Bfp8_b 1088, Bfp4_b 576, Int32 4096.

Float16 (IEEE half, tt-metal's Float16 "a" format: 5 exponent bits, 10 mantissa bits) trades bf16's range
for three more mantissa bits; host conversion rounds to nearest even, values past 65504 become inf.

Float16_b (bfloat16) is the upper half of a float32.  Host conversion here rounds to nearest, ties to
even (ml_dtypes' float32 -> bfloat16 cast).  Some tt-metal helpers truncate instead; ttc chooses RNE
everywhere so that host conversion and the device numerics model agree.

Bfp8_b / Bfp4_b (tests/data/bfp_tiles.README.md, tt-metal blockfloat_common.hpp).  Each row of each face
(16 values) shares one 8-bit exponent, the largest float32 biased exponent in the row.  A tile is 64
exponent bytes (face0 rows 0..15, face1, face2, face3) followed by one sign-magnitude code per value in
face order, packed least-significant-first into little-endian 32-bit words (so Bfp8 codes are simply
consecutive bytes and Bfp4 puts the earlier value in the low nibble).  With N code bits:

    mag  = (1 << 23 | mantissa) >> (shared - exp)       # hidden 1 explicit, shift truncates
    q    = min((mag + 2**(23-N+1)) >> (24-N+1), 2**(N-1) - 1)   # round half up, saturate
    sign = 0 if q == 0 else the float's sign
    value = (-1)**sign * q / 2**(N-2) * 2**(shared - 127)    # q's top bit is the hidden 1

Facts checked against tests/data/bfp_tiles.npz (all 8 tiles match bit for bit):
- rounding is half-up on the magnitude: round-half-to-even differs on tiles 4 and 7, plain truncation
  on most tiles.  Because half-up only looks at the bits at and above the half position, truncating
  during the shift and rounding the exact value give the same codes, and so does starting from the
  float32 or from the (truncated) bfloat16 mantissa: the vectors cannot, and need not, tell these apart.
- a carry past the top bit does not bump the exponent: it saturates (1.9999 in a row of exponent 127
  packs as 127 = 0x7F, not as 2.0); letting it wrap differs on tiles 3, 6, 7.
- a magnitude that rounds to zero (including -0.0 and small values flushed by a large neighbour) is
  stored with sign 0; keeping the sign differs on tiles 0, 1, 2, 4, 5.
- decoding divides by 2**(N-2) = 2**(magnitude bits - 1), e.g. 64 for Bfp8_b: the READMEs' "m / 2^(bits-1)"
  holds with bits = the 7 (Bfp8) or 3 (Bfp4) magnitude bits, not the 8 / 4 code bits.
- an all-zero face row has shared exponent 0; shifts of 24 or more flush to zero (tiny normals around
  1e-30, tile 5, pack normally with shared exponents 27..29).
Not covered by the vectors, chosen here: float32 subnormals (exponent 0) have no hidden 1 and are
packed as zero (the device flushes denormals); NaN/Inf are not meaningful in block float.
"""

from __future__ import annotations

from enum import StrEnum

import ml_dtypes
import numpy as np

TILE = 32
FACE = 16
TILE_ELEMS = TILE * TILE
BFP_EXP_BYTES = 64  # one shared exponent per face row: 4 faces x 16 rows

bfloat16 = ml_dtypes.bfloat16


class DataFormat(StrEnum):
    """Tile data formats ttc knows; the value is the name used on the command line and in the IR."""

    FLOAT32 = "f32"
    BFLOAT16 = "bf16"
    FLOAT16 = "f16"
    BFP8_B = "bfp8_b"
    BFP4_B = "bfp4_b"
    INT32 = "i32"

    @classmethod
    def parse(cls, name: str | DataFormat) -> DataFormat:
        """Accept the enum, its value, or tt-metal's spelling (Float32, Float16_b, Bfp8_b, ...)."""
        if isinstance(name, DataFormat):
            return name
        key = name.strip().lower()
        return cls(_ALIASES.get(key, key))

    @property
    def tile_bytes(self) -> int:
        """Bytes one 32x32 tile occupies in this format (the CB / DRAM page size)."""
        return _TILE_BYTES[self]

    @property
    def is_block_float(self) -> bool:
        return self in (DataFormat.BFP8_B, DataFormat.BFP4_B)

    @property
    def code_bits(self) -> int:
        """Bits per value code of a block-float format (sign + magnitude)."""
        if not self.is_block_float:
            raise ValueError(f"{self} is not a block-float format")
        return 8 if self is DataFormat.BFP8_B else 4


_ALIASES = {
    "float32": "f32",
    "fp32": "f32",
    "bfloat16": "bf16",
    "float16_b": "bf16",
    "float16": "f16",
    "fp16": "f16",
    "int32": "i32",
}

_TILE_BYTES = {
    DataFormat.FLOAT32: 4096,
    DataFormat.BFLOAT16: 2048,
    DataFormat.FLOAT16: 2048,
    DataFormat.BFP8_B: 1088,
    DataFormat.BFP4_B: 576,
    DataFormat.INT32: 4096,
}


# --------------------------------------------------------------------------- bfloat16


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> ml_dtypes.bfloat16 array, round to nearest even (the ttc host rule)."""
    return np.asarray(x, dtype=np.float32).astype(bfloat16)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """The float32 values nearest to x (RNE) that bfloat16 can represent."""
    return to_bfloat16(x).astype(np.float32)


def f16_round(x: np.ndarray) -> np.ndarray:
    """The float32 values nearest to x (RNE) that Float16 can represent (inf past 65504, subnormals kept)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


# --------------------------------------------------------------------------- layouts


def tiles_to_faces(x: np.ndarray) -> np.ndarray:
    """[..., 32, 32] tiles -> [..., 1024] values in face order (face0..3, each row-major)."""
    x = np.asarray(x)
    lead = x.shape[:-2]
    f = x.reshape(*lead, 2, FACE, 2, FACE).swapaxes(-3, -2)  # [..., fi, fj, r, c]
    return f.reshape(*lead, TILE_ELEMS)


def faces_to_tiles(x: np.ndarray) -> np.ndarray:
    """[..., 1024] values in face order -> [..., 32, 32] tiles (inverse of tiles_to_faces)."""
    x = np.asarray(x)
    lead = x.shape[:-1]
    f = x.reshape(*lead, 2, 2, FACE, FACE).swapaxes(-3, -2)  # [..., fi, r, fj, c]
    return f.reshape(*lead, TILE, TILE)


def tilize(x: np.ndarray, pad_value: float | None = None) -> np.ndarray:
    """[..., R, C] matrix -> [..., R/32, C/32, 32, 32] tiles in row-major tile order.

    R and C must be multiples of 32 unless pad_value is given, in which case the matrix is padded
    at the bottom/right with it first.
    """
    x = np.asarray(x)
    r, c = x.shape[-2:]
    pr, pc = -r % TILE, -c % TILE
    if pr or pc:
        if pad_value is None:
            raise ValueError(f"matrix {r}x{c} is not a multiple of {TILE}; pass pad_value to pad")
        padded = np.full((*x.shape[:-2], r + pr, c + pc), pad_value, dtype=x.dtype)  # cheaper than np.pad
        padded[..., :r, :c] = x
        x = padded
    lead = x.shape[:-2]
    rt, ct = x.shape[-2] // TILE, x.shape[-1] // TILE
    return x.reshape(*lead, rt, TILE, ct, TILE).swapaxes(-3, -2)


def untilize(tiles: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """[..., Rt, Ct, 32, 32] tiles -> [..., Rt*32, Ct*32] matrix, cropped to shape=(R, C) if given."""
    tiles = np.asarray(tiles)
    lead = tiles.shape[:-4]
    rt, ct = tiles.shape[-4:-2]
    x = tiles.swapaxes(-3, -2).reshape(*lead, rt * TILE, ct * TILE)
    if shape is not None:
        x = x[..., : shape[0], : shape[1]]
    return x


# --------------------------------------------------------------------------- block float


def _bfp_encode(tiles: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Tiles [..., 32, 32] -> (shared exponents uint32 [..., 64], codes uint32 [..., 64, 16])."""
    faces = tiles_to_faces(np.asarray(tiles, dtype=np.float32))
    u = np.ascontiguousarray(faces).view(np.uint32).reshape(*faces.shape[:-1], 64, FACE)
    sign = u >> 31
    exp = (u >> 23) & 0xFF
    mag = np.where(exp > 0, (u & 0x7FFFFF) | 0x800000, 0).astype(np.uint32)  # subnormals -> 0
    shared = exp.max(axis=-1, keepdims=True)
    shift = np.minimum(shared - exp, 31)  # mag < 2**24, so any shift >= 24 gives 0
    drop = 24 - (bits - 1)  # keep bits-1 magnitude bits (hidden 1 included)
    q = np.minimum(((mag >> shift) + (1 << (drop - 1))) >> drop, (1 << (bits - 1)) - 1)
    sign = np.where(q == 0, 0, sign)
    return shared[..., 0], (sign << (bits - 1)) | q


def _bfp_decode(shared: np.ndarray, codes: np.ndarray, bits: int) -> np.ndarray:
    """(shared [..., 64], codes [..., 64, 16]) -> float32 tiles [..., 32, 32]."""
    mbits = bits - 1
    q = (codes & ((1 << mbits) - 1)).astype(np.float32)
    q = np.where(codes >> mbits, -q, q)
    scale = shared.astype(np.int32)[..., None] - 127 - (mbits - 1)  # hidden 1 is bit mbits-1
    vals = np.ldexp(q, scale).astype(np.float32)  # exact: q has <= 7 bits, >= float32 subnormal
    return faces_to_tiles(vals.reshape(*vals.shape[:-2], TILE_ELEMS))


def _pack_bfp(tiles: np.ndarray, bits: int) -> np.ndarray:
    shared, codes = _bfp_encode(tiles, bits)
    codes = codes.astype(np.uint8).reshape(*codes.shape[:-2], TILE_ELEMS)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.concatenate([shared.astype(np.uint8), codes], axis=-1)


def _unpack_bfp(data: np.ndarray, bits: int) -> np.ndarray:
    shared = data[..., :BFP_EXP_BYTES]
    body = data[..., BFP_EXP_BYTES:]
    if bits == 4:
        body = np.stack([body & 0xF, body >> 4], axis=-1).reshape(*body.shape[:-1], TILE_ELEMS)
    codes = body.reshape(*body.shape[:-1], 64, FACE)
    return _bfp_decode(shared, codes, bits)


# --------------------------------------------------------------------------- public pack / unpack


def pack_tiles(tiles: np.ndarray, fmt: DataFormat | str) -> np.ndarray:
    """Tiles [..., 32, 32] -> uint8 [..., fmt.tile_bytes], bytes exactly as the device stores them.

    Float formats take float32 values (bf16 and f16 round RNE); Int32 takes integers (floats truncate).
    """
    fmt = DataFormat.parse(fmt)
    tiles = np.asarray(tiles)
    if tiles.shape[-2:] != (TILE, TILE):
        raise ValueError(f"expected [..., 32, 32] tiles, got {tiles.shape}")
    lead = tiles.shape[:-2]
    if fmt.is_block_float:
        return _pack_bfp(tiles, fmt.code_bits)
    dtype = {DataFormat.FLOAT32: "<f4", DataFormat.BFLOAT16: "<u2", DataFormat.FLOAT16: "<f2",
             DataFormat.INT32: "<i4"}[fmt]
    if fmt is DataFormat.BFLOAT16:
        vals = to_bfloat16(tiles).view(np.uint16)
    elif fmt is DataFormat.FLOAT16:
        with np.errstate(over="ignore"):
            vals = np.asarray(tiles, dtype=np.float32).astype(np.float16)
    elif fmt is DataFormat.FLOAT32:
        vals = tiles.astype(np.float32)
    else:
        vals = tiles.astype(np.int32)
    faces = np.ascontiguousarray(tiles_to_faces(vals), dtype=dtype)  # one copy (the face order), no second
    return faces.view(np.uint8).reshape(*lead, fmt.tile_bytes)


def _unpack_bf16(data: np.ndarray) -> np.ndarray:
    """bf16 tiles -> float32 tiles: each value's 16 bits become the top half of a float32; the faces are
    put in tile order by the same copy (the emulator unpacks every CB operand through here)."""
    lead = data.shape[:-1]
    halves = np.ascontiguousarray(data).view("<u2").reshape(*lead, 2, 2, FACE, FACE)  # [..., fi, fj, r, c]
    bits = np.empty((*lead, TILE, TILE), dtype=np.uint32)
    bits.reshape(*lead, 2, FACE, 2, FACE)[...] = halves.swapaxes(-3, -2)
    bits <<= np.uint32(16)
    return bits.view(np.float32)


_F16_VALUES = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)  # by bit pattern


def _unpack_f16(data: np.ndarray) -> np.ndarray:
    """Float16 tiles -> float32 tiles through a table of all 65536 values (a gather is faster than numpy's
    float16 cast), the faces put in tile order by the same copy."""
    lead = data.shape[:-1]
    halves = np.ascontiguousarray(data).view("<u2").reshape(*lead, 2, 2, FACE, FACE)  # [..., fi, fj, r, c]
    bits = np.empty((*lead, TILE, TILE), dtype=np.uint16)
    bits.reshape(*lead, 2, FACE, 2, FACE)[...] = halves.swapaxes(-3, -2)
    return _F16_VALUES[bits]


def unpack_tiles(data: np.ndarray, fmt: DataFormat | str) -> np.ndarray:
    """uint8 [..., fmt.tile_bytes] -> tiles [..., 32, 32]: float32 values (int32 for Int32)."""
    fmt = DataFormat.parse(fmt)
    data = np.asarray(data, dtype=np.uint8)
    if data.shape[-1] != fmt.tile_bytes:
        raise ValueError(f"{fmt} tiles are {fmt.tile_bytes} bytes, got last dim {data.shape[-1]}")
    if fmt.is_block_float:
        return _unpack_bfp(data, fmt.code_bits)
    if fmt is DataFormat.BFLOAT16:
        return _unpack_bf16(data)
    if fmt is DataFormat.FLOAT16:
        return _unpack_f16(data)
    lead = data.shape[:-1]
    dtype = {DataFormat.FLOAT32: "<f4", DataFormat.FLOAT16: "<f2", DataFormat.INT32: "<i4"}[fmt]
    vals = np.ascontiguousarray(data).view(dtype).reshape(*lead, TILE_ELEMS)
    return faces_to_tiles(vals.astype(np.int32 if fmt is DataFormat.INT32 else np.float32))


def quantize(x: np.ndarray, fmt: DataFormat | str) -> np.ndarray:
    """The values x becomes after a round trip through fmt (float32; int32 for Int32).

    f32 / bf16 / i32 accept any shape.  Block-float formats need tiles [..., 32, 32] because the
    shared exponents follow face rows; use quantize_matrix for an untiled matrix.
    """
    fmt = DataFormat.parse(fmt)
    if fmt is DataFormat.FLOAT32:
        return np.asarray(x, dtype=np.float32)
    if fmt is DataFormat.BFLOAT16:
        return bf16_round(x)
    if fmt is DataFormat.FLOAT16:
        return f16_round(x)
    if fmt is DataFormat.INT32:
        return np.asarray(x).astype(np.int32)
    x = np.asarray(x)
    if x.shape[-2:] != (TILE, TILE):
        raise ValueError(f"block-float quantize needs [..., 32, 32] tiles, got {x.shape}")
    return _bfp_decode(*_bfp_encode(x, fmt.code_bits), fmt.code_bits)


def quantize_matrix(x: np.ndarray, fmt: DataFormat | str) -> np.ndarray:
    """quantize for a [..., R, C] matrix laid out in tiles (zero padding does not move exponents)."""
    fmt = DataFormat.parse(fmt)
    if not fmt.is_block_float:
        return quantize(x, fmt)
    x = np.asarray(x, dtype=np.float32)
    return untilize(quantize(tilize(x, pad_value=0.0), fmt), shape=x.shape[-2:])
