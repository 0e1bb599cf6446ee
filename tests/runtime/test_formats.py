"""Tests for ttc.runtime.formats: face order, tilize, bit-exact pack/unpack against the shared vectors."""

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ttc.runtime import formats as F
from ttc.runtime.formats import DataFormat

VECTORS = np.load(Path(__file__).resolve().parents[1] / "data" / "bfp_tiles.npz")
BFP = [DataFormat.BFP8_B, DataFormat.BFP4_B]


def bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32)


# --- DataFormat ----------------------------------------------------------------------------------


def test_tile_bytes_and_parse():
    sizes = {f.value: f.tile_bytes for f in DataFormat}
    assert sizes == {"f32": 4096, "bf16": 2048, "f16": 2048, "bfp8_b": 1088, "bfp4_b": 576, "i32": 4096}
    assert DataFormat.parse("Float16_b") is DataFormat.BFLOAT16
    assert DataFormat.parse("Float16") is DataFormat.FLOAT16
    assert DataFormat.parse("Bfp8_b") is DataFormat.BFP8_B
    assert DataFormat.parse("float32") is DataFormat.FLOAT32
    assert DataFormat.BFP4_B.code_bits == 4
    with pytest.raises(ValueError):
        DataFormat.parse("fp8")


# --- layouts -------------------------------------------------------------------------------------


def test_face_order_offsets():
    t = np.arange(1024, dtype=np.float32).reshape(32, 32)
    f = F.tiles_to_faces(t)
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    offset = (i // 16 * 2 + j // 16) * 256 + (i % 16) * 16 + (j % 16)
    assert np.array_equal(f[offset], t)


def test_face_round_trip_batched():
    x = np.random.default_rng(1).standard_normal((3, 2, 32, 32)).astype(np.float32)
    f = F.tiles_to_faces(x)
    assert f.shape == (3, 2, 1024)
    assert np.array_equal(F.faces_to_tiles(f), x)


def test_tilize_order_and_round_trip():
    x = np.arange(2 * 64 * 96, dtype=np.float32).reshape(2, 64, 96)
    t = F.tilize(x)
    assert t.shape == (2, 2, 3, 32, 32)
    assert np.array_equal(t[1, 1, 2], x[1, 32:64, 64:96])
    assert np.array_equal(F.untilize(t), x)


def test_tilize_padding():
    x = np.ones((40, 33), dtype=np.float32)
    with pytest.raises(ValueError):
        F.tilize(x)
    t = F.tilize(x, pad_value=0.0)
    assert t.shape == (2, 2, 32, 32)
    assert t.sum() == x.sum()
    assert np.array_equal(F.untilize(t, shape=(40, 33)), x)


# --- block float against the vectors -----------------------------------------------------------


@pytest.mark.parametrize("fmt", BFP)
def test_bfp_pack_bit_exact(fmt):
    packed = F.pack_tiles(VECTORS["input"], fmt)
    assert packed.dtype == np.uint8
    assert packed.shape == (8, fmt.tile_bytes)
    assert np.array_equal(packed, VECTORS[fmt.value])


@pytest.mark.parametrize("fmt", BFP)
def test_bfp_unpack_matches_decoded(fmt):
    out = F.unpack_tiles(VECTORS[fmt.value], fmt)
    assert out.dtype == np.float32
    assert np.array_equal(bits(out), bits(VECTORS[f"{fmt.value}_decoded"]))


@pytest.mark.parametrize("fmt", BFP)
def test_bfp_round_trip_and_quantize_match_decoded(fmt):
    x = VECTORS["input"]
    decoded = bits(VECTORS[f"{fmt.value}_decoded"])
    assert np.array_equal(bits(F.unpack_tiles(F.pack_tiles(x, fmt), fmt)), decoded)
    assert np.array_equal(bits(F.quantize(x, fmt)), decoded)


@pytest.mark.parametrize("fmt", BFP)
def test_bfp_batched_leading_dims(fmt):
    x = VECTORS["input"].reshape(2, 4, 32, 32)
    packed = F.pack_tiles(x, fmt)
    assert packed.shape == (2, 4, fmt.tile_bytes)
    assert np.array_equal(packed.reshape(8, -1), VECTORS[fmt.value])
    assert F.unpack_tiles(packed, fmt).shape == (2, 4, 32, 32)


def test_bfp_saturates_instead_of_carrying():
    t = np.ones((1, 32, 32), dtype=np.float32)
    t[0, 0, 1] = 1.9999
    q = F.quantize(t, DataFormat.BFP8_B)
    assert q[0, 0, 1] == np.float32(127 / 64)
    assert F.pack_tiles(t, DataFormat.BFP8_B)[0, 64 + 1] == 127


def test_bfp_zero_magnitude_has_sign_zero():
    t = np.zeros((1, 32, 32), dtype=np.float32)
    t[0, 0, 0] = 1024.0
    t[0, 0, 1] = -1e-6  # flushed by its row's large neighbour
    t[0, 1, :] = -0.0
    packed = F.pack_tiles(t, DataFormat.BFP8_B)
    assert packed[0, 64 + 1] == 0
    assert not packed[0, 64 + 16 : 64 + 32].any()


bfp_tiles = arrays(
    np.float32,
    (2, 32, 32),
    elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False),
)


@settings(max_examples=50, deadline=None)
@given(bfp_tiles, st.sampled_from(BFP))
def test_bfp_quantize_idempotent_and_bounded(x, fmt):
    q = F.quantize(x, fmt)
    assert np.array_equal(bits(F.quantize(q, fmt)), bits(q))
    # error at most one code step of the row's shared exponent (half a step unless saturated)
    faces = F.tiles_to_faces(x).reshape(2, 64, 16)
    shared = ((bits(faces) >> 23) & 0xFF).max(axis=-1, keepdims=True).astype(np.int32)
    step = np.ldexp(1.0, shared - 127 - (fmt.code_bits - 2))
    err = np.abs(F.tiles_to_faces(q).reshape(2, 64, 16).astype(np.float64) - faces)
    assert (err <= step).all()


def test_quantize_matrix_pads_without_moving_exponents():
    x = np.random.default_rng(2).standard_normal((40, 70)).astype(np.float32)
    q = F.quantize_matrix(x, DataFormat.BFP8_B)
    assert q.shape == x.shape
    ref = F.untilize(F.quantize(F.tilize(x, pad_value=0.0), DataFormat.BFP8_B), shape=x.shape)
    assert np.array_equal(q, ref)


def test_bfp8_pack_of_many_tiles_is_per_tile_packing():
    """Packing is vectorised over tiles (speed is benchmarked, not tested): 1000 tiles at once give the
    bytes of packing a sample one by one, and unpack back to those tiles' values."""
    x = np.random.default_rng(3).standard_normal((1000, 32, 32)).astype(np.float32)
    packed = F.pack_tiles(x, DataFormat.BFP8_B)
    for i in (0, 1, 517, 999):
        assert np.array_equal(packed[i], F.pack_tiles(x[i], DataFormat.BFP8_B))
    unpacked = F.unpack_tiles(packed, DataFormat.BFP8_B)
    assert np.array_equal(unpacked[517], F.unpack_tiles(packed[517], DataFormat.BFP8_B))


# --- float and int formats ---------------------------------------------------------------------


def test_bf16_pack_is_rne_upper_half_little_endian():
    t = np.zeros((32, 32), dtype=np.float32)
    t[0, 0] = 1.0 + 2**-8  # tie -> even (1.0)
    t[0, 1] = 1.0 + 3 * 2**-8  # tie -> even (1 + 2**-6)
    t[0, 16] = -2.0  # face1 element 0
    packed = F.pack_tiles(t, DataFormat.BFLOAT16)
    words = packed.view("<u2")
    assert words[0] == 0x3F80
    assert words[1] == 0x3F82
    assert words[256] == 0xC000
    assert packed[0] == 0x80 and packed[1] == 0x3F


@settings(max_examples=100, deadline=None)
@given(arrays(np.uint16, (32, 32)))
def test_bf16_pack_unpack_exact_for_bf16_values(raw):
    x = raw.view(ml_dtypes.bfloat16).astype(np.float32)
    x[np.isnan(x)] = 0.0  # every other bit pattern, incl. +-inf, subnormals and -0.0
    packed = F.pack_tiles(x, "bf16")
    assert packed.shape == (2048,)
    assert np.array_equal(bits(F.unpack_tiles(packed, "bf16")), bits(x))
    assert np.array_equal(bits(F.quantize(x, "bf16")), bits(x))


def test_bf16_unpack_is_the_upper_half_in_face_order():
    """Every one of the 65536 bf16 bit patterns (NaN payloads too), 64 tiles with leading dims: value (i, j)
    of a tile is the word at its face offset, moved to the top half of a float32."""
    words = np.arange(1 << 16, dtype="<u2").reshape(4, 16, 1024)
    tiles = F.unpack_tiles(words.view(np.uint8), "bf16")
    assert tiles.shape == (4, 16, 32, 32) and tiles.dtype == np.float32
    expected = F.faces_to_tiles(words.astype(np.uint32) << 16)
    assert np.array_equal(bits(tiles), expected)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, (2, 32, 32), elements=st.floats(width=32, allow_nan=False)))
def test_f32_pack_unpack_exact(x):
    packed = F.pack_tiles(x, DataFormat.FLOAT32)
    assert np.array_equal(packed.reshape(2, 1024, 4).view("<f4")[..., 0], F.tiles_to_faces(x))
    assert np.array_equal(bits(F.unpack_tiles(packed, DataFormat.FLOAT32)), bits(x))


def test_i32_round_trip():
    x = np.arange(-512, 512, dtype=np.int32).reshape(32, 32) * 1000003
    out = F.unpack_tiles(F.pack_tiles(x, DataFormat.INT32), DataFormat.INT32)
    assert out.dtype == np.int32
    assert np.array_equal(out, x)


def test_unpack_rejects_wrong_size():
    with pytest.raises(ValueError):
        F.unpack_tiles(np.zeros((1, 1024), np.uint8), DataFormat.BFP8_B)
