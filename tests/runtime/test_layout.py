"""Tests for ttc.runtime.layout: host tensors <-> device buffer pages, tile and row-major layouts."""

import numpy as np
import pytest

from ttc.ir.types import ScalarType
from ttc.runtime import formats
from ttc.runtime.layout import num_pages, page_size, pages_to_tensor, tensor_to_pages

RNG = np.random.default_rng(0)


def bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("shape", [(), (7,), (33, 50), (2, 3, 45, 70), (1, 64, 96)])
def test_bf16_round_trip_is_bf16_rounding(shape) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    pages = tensor_to_pages(x, ScalarType("bf16"))
    assert pages.dtype == np.uint8 and pages.shape == (num_pages(shape), 2048)
    back = pages_to_tensor(pages, shape, ScalarType("bf16"))
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(bits(back), bits(formats.bf16_round(x)))


@pytest.mark.parametrize("fmt", ["bfp8_b", "bfp4_b"])
@pytest.mark.parametrize("shape", [(33, 50), (3, 40, 64)])
def test_block_float_round_trip_is_quantisation(fmt, shape) -> None:
    x = (RNG.standard_normal(shape) * np.exp(RNG.standard_normal(shape))).astype(np.float32)
    back = pages_to_tensor(tensor_to_pages(x, fmt), shape, fmt)
    np.testing.assert_array_equal(bits(back), bits(formats.quantize_matrix(x, fmt)))
    assert page_size(shape, fmt) == formats.DataFormat(fmt).tile_bytes


def test_f32_and_i32_tiles_are_exact() -> None:
    x = RNG.standard_normal((2, 35, 33)).astype(np.float32)
    np.testing.assert_array_equal(bits(pages_to_tensor(tensor_to_pages(x, "f32"), x.shape, "f32")), bits(x))
    n = RNG.integers(-(2**31), 2**31 - 1, size=(5, 40), dtype=np.int64)
    back = pages_to_tensor(tensor_to_pages(n, "i32"), n.shape, "i32")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, n)


def test_tile_pages_are_row_major_tiles_in_face_order_with_zero_padding() -> None:
    x = RNG.standard_normal((2, 40, 70)).astype(np.float32)  # per batch 2 x 3 tiles
    pages = tensor_to_pages(x, "f32")
    assert pages.shape == (12, 4096) and num_pages(x.shape) == 12
    tiles = formats.unpack_tiles(pages, "f32")
    np.testing.assert_array_equal(tiles[1], x[0, 0:32, 32:64])  # batch 0, tile (0, 1)
    np.testing.assert_array_equal(tiles[6 + 5][:8, :6], x[1, 32:40, 64:70])  # batch 1, tile (1, 2)
    assert not tiles[6 + 5][8:].any() and not tiles[6 + 5][:, 6:].any()
    face_order = pages[1].view("<f4")[:16]
    np.testing.assert_array_equal(face_order, x[0, 0, 32:48])  # face 0 row 0 comes first


def test_row_major_i32_one_page_per_row() -> None:
    idx = RNG.integers(-50, 50, size=(3, 5, 7))
    pages = tensor_to_pages(idx, "i32", "row_major")
    assert pages.shape == (15, 28) == (num_pages(idx.shape, "row_major"), page_size(idx.shape, "i32", "row_major"))
    np.testing.assert_array_equal(pages[4].view("<i4"), idx[0, 4])
    back = pages_to_tensor(pages, idx.shape, "i32", "row_major")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, idx)
    vector = np.arange(9)
    assert tensor_to_pages(vector, "i32", "row_major").shape == (1, 36)
    np.testing.assert_array_equal(pages_to_tensor(tensor_to_pages(vector, "i32", "row_major"), (9,), "i32",
                                                  "row_major"), vector)


def test_row_major_bf16_and_f32() -> None:
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    for fmt, expect in (("f32", x), ("bf16", formats.bf16_round(x))):
        back = pages_to_tensor(tensor_to_pages(x, fmt, "row_major"), x.shape, fmt, "row_major")
        np.testing.assert_array_equal(bits(back), bits(expect))


def test_errors() -> None:
    with pytest.raises(ValueError, match="row-major"):
        tensor_to_pages(np.zeros((2, 2)), "bfp8_b", "row_major")
    with pytest.raises(ValueError, match="not a device data format"):
        page_size((2, 2), "i64")
    with pytest.raises(ValueError, match="do not hold"):
        pages_to_tensor(np.zeros((2, 2048), np.uint8), (64, 64), "bf16")
    with pytest.raises(ValueError, match="unknown tensor layout"):
        num_pages((2, 2), "sharded")


@pytest.mark.parametrize("fmt", ["f32", "bf16", "f16", "bfp8_b", "bfp4_b", "i32"])
@pytest.mark.parametrize("shape", [(1, 784), (3, 40, 33), (64, 32), (2, 3, 65, 31), (5,)])
def test_native_codecs_give_the_definitions_bytes(fmt: str, shape: tuple[int, ...]) -> None:
    """The native run's host I/O packs and unpacks tiles natively: the same bytes and values as formats.py,
    special values and tile padding included."""
    from ttc.runtime import native_program

    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 2.0 ** rng.integers(-30, 30, shape)).astype(np.float32)
    if fmt == "i32":
        x = rng.integers(-2**31, 2**31 - 1, shape).astype(np.int32)
    else:
        x.flat[:5] = [np.nan, np.inf, -np.inf, -0.0, 1e-40]
        if fmt == "f16":
            x = np.clip(x, -60000, 60000)
    pages = tensor_to_pages(x, fmt)
    fast = tensor_to_pages(x, fmt, pack=native_program.pack_tiles)
    np.testing.assert_array_equal(fast, pages)
    np.testing.assert_array_equal(tensor_to_pages(x, fmt, pack_matrix=native_program.pack_matrix), pages)
    back = pages_to_tensor(pages, shape, fmt)
    fast_back = pages_to_tensor(pages, shape, fmt, unpack=native_program.unpack_tiles)
    assert fast_back.dtype == back.dtype
    np.testing.assert_array_equal(fast_back.view(np.uint32), back.view(np.uint32))
    matrix_back = pages_to_tensor(pages, shape, fmt, unpack_matrix=native_program.unpack_matrix)
    assert matrix_back.dtype == back.dtype and matrix_back.shape == back.shape
    np.testing.assert_array_equal(matrix_back.view(np.uint32), back.view(np.uint32))
