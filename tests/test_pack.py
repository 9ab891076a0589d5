"""GPTQ checkpoint packing against a bit-by-bit reference, and round trips."""
import itertools

import numpy as np
import pytest

import astro
from astro import _core

import reference as ref


@pytest.mark.parametrize("bits,out,in_", list(itertools.product((2, 3, 4, 8), (1, 5), (32, 64, 96, 7))))
def test_pack_rows_matches_bit_stream(bits, out, in_):
    rng = np.random.default_rng(bits * 100 + in_)
    codes = rng.integers(0, 2**bits, (out, in_), dtype=np.uint8)
    packed = _core.pack_rows(codes, bits)
    assert packed.dtype == np.int32
    assert packed.shape == (-(-in_ * bits // 32), out)
    for r in range(out):
        np.testing.assert_array_equal(packed[:, r], ref.pack_stream(codes[r], bits))
    np.testing.assert_array_equal(_core.unpack_rows(packed, in_, bits), codes)


def test_three_bit_values_cross_word_boundaries():
    # Value 10 of a 3-bit stream has its two low bits in word 0 (bits 30-31)
    # and its high bit in word 1 (bit 0).
    codes = np.zeros((1, 32), np.uint8)
    codes[0, 10] = 0b111
    packed = _core.pack_rows(codes, 3).view(np.uint32)
    assert packed[0, 0] == 0b11 << 30
    assert packed[1, 0] == 0b1
    assert packed[2, 0] == 0


@pytest.mark.parametrize("bits,fmt", list(itertools.product((2, 3, 4, 8), ("v1", "v2"))))
def test_pack_zeros_round_trip(bits, fmt):
    rng = np.random.default_rng(bits)
    zeros = rng.integers(0, 2**bits, (3, 64)).astype(np.float32)
    zeros[0, :4] = 0  # v1 stores zero - 1, which wraps for zero == 0
    offset = 1 if fmt == "v1" else 0
    packed = _core.pack_zeros(zeros, bits, offset)
    assert packed.shape == (3, -(-64 * bits // 32))
    for g in range(3):
        stored = ((zeros[g].astype(np.int64) - offset) % 2**bits).astype(np.uint64)
        np.testing.assert_array_equal(packed[g], ref.pack_stream(stored, bits))
    np.testing.assert_array_equal(_core.unpack_zeros(packed, 64, bits, offset), zeros)


@pytest.mark.parametrize("bits,fmt,act_order", list(itertools.product((2, 3, 4, 8), ("v1", "v2"), (False, True))))
def test_layer_pack_unpack_round_trip(bits, fmt, act_order):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    q = astro.quantize_layer(w, x, bits=bits, group_size=16, method="gptq", act_order=act_order)
    tensors = q.pack(checkpoint_format=fmt)
    assert tensors["qweight"].shape == (64 * bits // 32, 48)
    assert tensors["qzeros"].shape == (4, -(-48 * bits // 32))
    assert tensors["scales"].dtype == np.float16
    assert tensors["scales"].shape == (4, 48)
    codes, scales, zeros, g_idx = astro.unpack_gptq(tensors, bits, 64, checkpoint_format=fmt)
    np.testing.assert_array_equal(codes, q.codes)
    np.testing.assert_array_equal(zeros, q.zeros)
    np.testing.assert_array_equal(g_idx, q.g_idx)
    np.testing.assert_array_equal(scales, q.scales.astype(np.float16).astype(np.float32))


def test_dequantize_reference():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (4, 10), dtype=np.uint8)
    scales = rng.uniform(0.1, 1, (4, 3)).astype(np.float32)
    zeros = rng.integers(0, 16, (4, 3)).astype(np.float32)
    g_idx = rng.integers(0, 3, 10).astype(np.int32)
    expected = np.empty((4, 10), np.float32)
    for r in range(4):
        for c in range(10):
            g = g_idx[c]
            expected[r, c] = scales[r, g] * (np.float32(codes[r, c]) - zeros[r, g])
    np.testing.assert_array_equal(_core.dequantize(codes, scales, zeros, g_idx), expected)


def test_dequantize_rejects_bad_group_index():
    codes = np.zeros((2, 4), np.uint8)
    scales = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="g_idx"):
        _core.dequantize(codes, scales, scales, np.array([0, 1, 2, 0], np.int32))
