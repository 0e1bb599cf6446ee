"""Host <-> device tensor conversion: a logical tensor to the pages of a device buffer and back.

The compiler packs weights with `tensor_to_pages`; the executor uses both directions at the
host<->device edge (`ttmetal.write_buffer` / `read_buffer`).

Tile layout: the last two dims are zero-padded to multiples of 32 (rank 1 `[N]` is `[1, N]`, rank 0
is `[1, 1]`); leading dims are batch. Pages are tiles in row-major order over (batch..., row tiles,
col tiles), each packed in face order by `formats.pack_tiles` (bf16, bfp8_b, bfp4_b, f32, i32).

Row-major layout (int32 index tables): one page per row of the last dim, the row's values packed
little-endian back to back (page size = row length x element bytes, unpadded); rank 0 and rank 1
tensors are a single page.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np

from ttc.ir.types import ScalarType
from ttc.runtime.formats import TILE, DataFormat, pack_tiles, tilize, to_bfloat16, unpack_tiles, untilize

TENSOR_LAYOUTS = ("tile", "row_major")
_ROW_MAJOR_DTYPES = {DataFormat.FLOAT32: "<f4", DataFormat.BFLOAT16: "<u2", DataFormat.INT32: "<i4"}


def data_format(element_type: ScalarType | str) -> DataFormat:
    """The device data format of an element type (f32, bf16, f16, bfp8_b, bfp4_b, i32)."""
    name = element_type.name if isinstance(element_type, ScalarType) else str(element_type)
    fmt = _FORMATS.get(name)
    if fmt is not None:
        return fmt
    try:
        fmt = DataFormat.parse(name)
    except ValueError:
        raise ValueError(f"'{name}' is not a device data format "
                         f"(one of {', '.join(f.value for f in DataFormat)})") from None
    _FORMATS[name] = fmt
    return fmt


_FORMATS: dict[str, DataFormat] = {}  # data_format's answers by element type name


def _matrix_shape(shape: tuple[int, ...]) -> tuple[tuple[int, ...], int, int]:
    """(batch dims, rows, cols) of a tensor in tile layout."""
    shape = tuple(shape)
    if len(shape) == 0:
        return (), 1, 1
    if len(shape) == 1:
        return (), 1, shape[0]
    return shape[:-2], shape[-2], shape[-1]


def _check_layout(tensor_layout: str) -> None:
    if tensor_layout not in TENSOR_LAYOUTS:
        raise ValueError(f"unknown tensor layout '{tensor_layout}' (one of {', '.join(TENSOR_LAYOUTS)})")


def num_pages(shape: tuple[int, ...], tensor_layout: str = "tile") -> int:
    """Pages of a buffer holding a tensor of logical `shape`: tiles, or rows for row-major."""
    _check_layout(tensor_layout)
    if tensor_layout == "row_major":
        return prod(shape[:-1]) if len(shape) > 1 else 1
    batch, rows, cols = _matrix_shape(shape)
    return prod(batch) * -(-rows // TILE) * -(-cols // TILE)


def tile_grid(shape: tuple[int, ...]) -> tuple[int, int]:
    """(tile rows with the batches stacked, tile columns) of a tensor in tile layout: the page order."""
    batch, rows, cols = _matrix_shape(shape)
    return prod(batch) * -(-rows // TILE), -(-cols // TILE)


def page_size(shape: tuple[int, ...], element_type: ScalarType | str, tensor_layout: str = "tile") -> int:
    """Bytes per page: one tile in the data format, or one row for row-major."""
    _check_layout(tensor_layout)
    fmt = data_format(element_type)
    if tensor_layout == "tile":
        return fmt.tile_bytes
    if fmt not in _ROW_MAJOR_DTYPES:
        raise ValueError(f"{fmt} has no row-major layout (block floats exist only as tiles)")
    row = shape[-1] if shape else 1
    return row * np.dtype(_ROW_MAJOR_DTYPES[fmt]).itemsize


def _host_values(array: np.ndarray, fmt: DataFormat) -> np.ndarray:
    """Cast to what the format stores: int32 for i32, float32 otherwise."""
    return np.asarray(array, dtype=np.int32 if fmt is DataFormat.INT32 else np.float32)  # no copy when it is one


TileCodec = Callable[[np.ndarray, DataFormat], np.ndarray]  # pack_tiles or unpack_tiles, or a faster equal
# tilize then pack_tiles of float32 matrices [batch, rows, cols] in one step (a faster equal of the definition)
MatrixPacker = Callable[[np.ndarray, DataFormat], np.ndarray]
# unpack_tiles then untilize: (pages, format, batch, rows, cols) -> float32 [batch, rows, cols]
MatrixUnpacker = Callable[[np.ndarray, DataFormat, int, int, int], np.ndarray]


def tensor_to_pages(array: np.ndarray, element_type: ScalarType | str,
                    tensor_layout: str = "tile", pack: TileCodec = pack_tiles,
                    pack_matrix: MatrixPacker | None = None) -> np.ndarray:
    """A host tensor -> uint8 [num_pages, page_size], the bytes of its device buffer (tiles packed by `pack`,
    the definition in formats.py unless a bit-identical one is given; or tilized and packed by `pack_matrix`)."""
    _check_layout(tensor_layout)
    fmt = data_format(element_type)
    shape = np.shape(array)
    batch, rows, cols = _matrix_shape(shape)
    if tensor_layout == "tile" and rows * cols * 4 > PACK_CHUNK_BYTES:
        return _tensor_to_pages_chunked(array, shape, fmt, pack)
    values = _host_values(array, fmt)
    size = page_size(shape, element_type, tensor_layout)
    if tensor_layout == "row_major":
        raw = to_bfloat16(values).view(np.uint16) if fmt is DataFormat.BFLOAT16 else values
        raw = np.ascontiguousarray(raw.astype(_ROW_MAJOR_DTYPES[fmt]))
        return raw.view(np.uint8).reshape(num_pages(shape, tensor_layout), size)
    batch, rows, cols = _matrix_shape(shape)
    if pack_matrix is not None and values.size:
        return pack_matrix(values.reshape(-1, rows, cols), fmt).reshape(-1, size)
    tiles = tilize(values.reshape(*batch, rows, cols), pad_value=0)
    return pack(tiles.reshape(-1, TILE, TILE), fmt).reshape(-1, size)


PACK_CHUNK_BYTES = 64 << 20  # a matrix larger than this (as float32) is packed a band of tile rows at a time


def _tensor_to_pages_chunked(array: np.ndarray, shape: tuple[int, ...], fmt: DataFormat,
                             pack: TileCodec) -> np.ndarray:
    """tensor_to_pages of large matrices, a band of whole tile rows at a time: the same pages (tiles are packed
    independently), but the float32 copy, the padded tiles and the packed bytes of only one band exist at a
    time beside the result (a mapped weight is read band by band)."""
    _, rows, cols = _matrix_shape(shape)
    matrices = np.reshape(array, (-1, rows, cols))
    size = fmt.tile_bytes
    tile_cols = -(-cols // TILE)
    band = max(1, PACK_CHUNK_BYTES // (TILE * cols * 4)) * TILE  # rows per band, whole tiles
    out = np.empty((num_pages(shape, "tile"), size), np.uint8)
    page = 0
    for matrix in matrices:
        for start in range(0, rows, band):
            part = _host_values(matrix[start:start + band], fmt)
            packed = pack(tilize(part, pad_value=0).reshape(-1, TILE, TILE), fmt).reshape(-1, size)
            out[page:page + len(packed)] = packed
            page += len(packed)
    assert page == len(out) and page % tile_cols == 0
    return out


def pages_to_tensor(pages: np.ndarray, shape: tuple[int, ...], element_type: ScalarType | str,
                    tensor_layout: str = "tile", unpack: TileCodec = unpack_tiles,
                    unpack_matrix: MatrixUnpacker | None = None) -> np.ndarray:
    """uint8 pages of a device buffer -> the logical tensor (float32, or int32 for i32; tiles unpacked by
    `unpack`, as `pack` in tensor_to_pages)."""
    _check_layout(tensor_layout)
    fmt = data_format(element_type)
    shape = tuple(shape)
    expected = (num_pages(shape, tensor_layout), page_size(shape, element_type, tensor_layout))
    pages = np.asarray(pages, dtype=np.uint8)
    if pages.shape != expected:
        raise ValueError(f"pages of shape {pages.shape} do not hold a {fmt} tensor {list(shape)} "
                         f"in {tensor_layout} layout ({expected[0]} pages of {expected[1]} bytes)")
    if tensor_layout == "row_major":
        raw = np.ascontiguousarray(pages).view(_ROW_MAJOR_DTYPES[fmt])
        if fmt is DataFormat.BFLOAT16:
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out = raw.astype(np.int32 if fmt is DataFormat.INT32 else np.float32)
        return out.reshape(shape)
    batch, rows, cols = _matrix_shape(shape)
    if unpack_matrix is not None and pages.size:
        return unpack_matrix(pages, fmt, prod(batch), rows, cols).reshape(shape)
    tiles = unpack(pages, fmt).reshape(*batch, -(-rows // TILE), -(-cols // TILE), TILE, TILE)
    return untilize(tiles, shape=(rows, cols)).reshape(shape)
