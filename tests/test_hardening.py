"""Hardening matrix: odd shapes, degenerate values and bad inputs end to end.

Every case either succeeds with a result that satisfies the invariants
below or raises the documented error with its message:

- codes are uint8 in [0, 2^bits - 1], scales finite and > 0, zeros integers
  in [0, 2^bits - 1], g_idx in [0, groups);
- dequantize() equals scale * (code - zero) and, bit for bit, the
  fake-quantized weights the core's GPTQ or RTN produced;
- outputs and stats are finite;
- packing to GPTQ tensors and unpacking gives back the same codes and zeros.
"""
import itertools
import logging

import numpy as np
import pytest

import astro
from astro import _core

import reference as ref

RNG_SEED = 20240601


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def make_inputs(out, in_, tokens=None, seed=0):
    """Random W (out, in) and correlated X (tokens, in), both float32."""
    rng = np.random.default_rng(seed)
    tokens = tokens if tokens is not None else max(2 * in_, 16)
    w = rng.standard_normal((out, in_), dtype=np.float32)
    x = rng.standard_normal((tokens, in_), dtype=np.float32)
    if in_ <= 768:
        mixing = rng.standard_normal((in_, in_), dtype=np.float32) / np.sqrt(in_)
        x = x + 0.5 * (x @ mixing)
    return w, x


def random_hessian(in_, tokens, seed=0):
    """H = (2 / tokens) X^T X of a random X, as an astro.Hessian."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, in_), dtype=np.float32)
    return astro.Hessian(in_).update(x)


def num_groups(in_, group_size):
    return 1 if group_size == -1 else -(-in_ // group_size)


def fake_quant_of(w, h, q, damp=0.01, damp_max=10.0, block_size=128,
                  act_order=False, static_groups=False, mse=False):
    """Fake-quantized weights straight from the core, for comparison."""
    if q.method in ("rtn", "astro+rtn"):
        return _core.rtn(w, q.bits, q.group_size, q.sym, mse)[3]
    result = _core.gptq(w, h, q.bits, q.group_size, q.sym, mse, act_order,
                        static_groups, damp, damp_max, block_size, True)
    return result[4]


def check_layer(q, w, bits, group_size, h=None, fake_quant=True, **options):
    """Assert the invariants of a QuantizedLayer; return dequantize()."""
    out, in_ = w.shape
    maxq = (1 << bits) - 1
    groups = num_groups(in_, group_size)

    assert q.codes.dtype == np.uint8
    assert q.codes.shape == (out, in_)
    assert int(q.codes.max()) <= maxq
    assert q.scales.shape == (out, groups)
    assert q.zeros.shape == (out, groups)
    assert np.isfinite(q.scales).all()
    assert (q.scales > 0).all()
    assert (q.zeros == np.rint(q.zeros)).all()
    assert q.zeros.min() >= 0
    assert q.zeros.max() <= maxq
    assert q.g_idx.shape == (in_,)
    assert q.g_idx.min() >= 0
    assert q.g_idx.max() < groups

    dequant = q.dequantize()
    assert np.isfinite(dequant).all()
    expected = q.scales[:, q.g_idx] * (q.codes.astype(np.float32) - q.zeros[:, q.g_idx])
    np.testing.assert_array_equal(dequant, expected)
    if fake_quant:
        np.testing.assert_array_equal(dequant, fake_quant_of(w, h, q, **options))

    for key in ("output_error", "loss", "damp_used"):
        if key in q.stats:
            assert np.isfinite(q.stats[key]), f"stats[{key!r}] = {q.stats[key]}"
    if "output_error" in q.stats:
        assert q.stats["output_error"] >= 0

    tensors = q.pack(checkpoint_format="v2")
    codes, scales, zeros, g_idx = astro.unpack_gptq(tensors, bits, in_, checkpoint_format="v2")
    np.testing.assert_array_equal(codes, q.codes)
    np.testing.assert_array_equal(zeros, q.zeros)
    np.testing.assert_array_equal(g_idx, q.g_idx)
    np.testing.assert_array_equal(scales, q.scales.astype(np.float16).astype(np.float32))
    return dequant


# --------------------------------------------------------------------------
# Shapes: in_features x out_features x group size
# --------------------------------------------------------------------------

IN_FEATURES = (1, 3, 32, 96, 192, 768, 4096)
OUT_FEATURES = (1, 48, 4096)
GROUP_SIZES = (-1, 32, 64, 128, 512)


def shape_cases():
    """(out, in, group_size) triples; the large shapes are kept few."""
    for out, in_, gs in itertools.product(OUT_FEATURES, IN_FEATURES, GROUP_SIZES):
        # GPTQ on 4096 inputs takes seconds (the O(in^3) factorization), so
        # one such case, and group sizes above 4096 only as rejections.
        if in_ == 4096 and not (out == 48 and gs == 128):
            continue
        if out == 4096 and not (in_ in (1, 3, 32) or (in_ == 96 and gs == 32)):
            continue
        if in_ == 768 and out == 48 and gs not in (-1, 128, 512):
            continue
        yield out, in_, gs


SHAPE_CASES = list(shape_cases())


@pytest.mark.parametrize("out,in_,group_size", SHAPE_CASES)
def test_shape_matrix(out, in_, group_size):
    if group_size > in_:
        w, x = make_inputs(out, in_, tokens=8)
        with pytest.raises(ValueError, match=f"group_size={group_size} is larger than in_features={in_}"):
            astro.quantize_layer(w, x, bits=4, group_size=group_size, method="gptq")
        return

    # Tokens: twice in_features up to 768 inputs, fewer (rank-deficient H)
    # for the widest layer to keep the test short.
    tokens = 2 * in_ if in_ <= 768 else 1024
    w, x = make_inputs(out, in_, tokens=tokens, seed=out + in_)
    hessian = astro.Hessian(in_).update(x)
    bits = 3 if (out + in_) % 2 else 4
    q = astro.quantize_layer(w, hessian, bits=bits, group_size=group_size, method="gptq")
    check_layer(q, w, bits, group_size, h=hessian.matrix, fake_quant=out * in_ <= 2**20)
    assert q.stats["dead_columns"] == 0
    assert q.stats["rtn_fallback"] is False

    if out * in_ <= 48 * 768:
        q_rtn = astro.quantize_layer(w, hessian, bits=bits, group_size=group_size, method="rtn")
        check_layer(q_rtn, w, bits, group_size)
        np.testing.assert_array_equal(q_rtn.codes, ref.rtn(w, bits, group_size, False)[0])


# --------------------------------------------------------------------------
# Degenerate groups in W
# --------------------------------------------------------------------------

GROUP_PATTERNS = ("zero", "constant", "positive", "negative", "denormal", "outlier_column")


def patterned_weights(out=16, group=32, seed=1):
    """W whose column groups of `group` follow GROUP_PATTERNS in order."""
    rng = np.random.default_rng(seed)
    parts = []
    for pattern in GROUP_PATTERNS:
        block = rng.standard_normal((out, group)).astype(np.float32)
        if pattern == "zero":
            block[:] = 0.0
        elif pattern == "constant":
            block[:] = 0.3
        elif pattern == "positive":
            block = np.abs(block) + 0.01
        elif pattern == "negative":
            block = -np.abs(block) - 0.01
        elif pattern == "denormal":
            block[:] = np.float32(1e-40)
            block[:, ::2] = 0.0
        elif pattern == "outlier_column":
            block[:, 5] *= 1000.0
        parts.append(block)
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


@pytest.mark.parametrize("method", ["gptq", "rtn"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
@pytest.mark.parametrize("sym", [False, True])
def test_degenerate_groups(method, bits, group_size, sym):
    w = patterned_weights()
    _, x = make_inputs(1, w.shape[1], tokens=512, seed=3)
    hessian = astro.Hessian(w.shape[1]).update(x)
    q = astro.quantize_layer(w, hessian, bits=bits, group_size=group_size, method=method, sym=sym)
    dequant = check_layer(q, w, bits, group_size, h=hessian.matrix)
    if method != "rtn":
        return

    # RTN: every weight is within half a step of its value. At the top of a
    # symmetric range the error is exactly half a step, so the bound allows
    # the float32 rounding of w and of the step (a few ulps).
    step = q.scales[:, q.g_idx]
    bound = 0.5 * step * (1 + 1e-5) + 2 * np.spacing(np.abs(w))
    assert (np.abs(dequant - w) <= bound).all()
    if group_size == 32:
        # The range always contains 0, so zero weights stay exactly zero,
        # and a denormal group falls back to the [-1, 1] range.
        assert (dequant[:, 0:32] == 0).all()
        assert np.abs(dequant[:, 128:160]).max() <= 1e-39
        if not sym:
            # An asymmetric constant group is represented exactly (to rounding).
            np.testing.assert_allclose(dequant[:, 32:64], 0.3, rtol=1e-6)


def test_outlier_column_gptq_beats_rtn():
    w = patterned_weights(out=32)
    _, x = make_inputs(1, w.shape[1], tokens=512, seed=4)
    x[:, 7] *= 1000.0
    hessian = astro.Hessian(w.shape[1]).update(x)
    q_gptq = astro.quantize_layer(w, hessian, bits=3, group_size=32, method="gptq")
    q_rtn = astro.quantize_layer(w, hessian, bits=3, group_size=32, method="rtn")
    check_layer(q_gptq, w, 3, 32, h=hessian.matrix)
    assert q_gptq.stats["output_error"] < q_rtn.stats["output_error"]


@pytest.mark.parametrize("magnitude", [1e30, 3e38])
def test_huge_finite_weights_error_or_finite(magnitude):
    """Weights near the float32 limit: a clear error or a finite result."""
    w, x = make_inputs(4, 32, seed=5)
    w = w / np.abs(w).max() * np.float32(magnitude)
    w[0, 0] = np.float32(magnitude)
    w[0, 1] = -np.float32(magnitude)
    try:
        q = astro.quantize_layer(w, x, bits=4, group_size=32, method="rtn")
    except (ValueError, astro.NumericalError) as error:
        assert "inf" in str(error).lower() or "overflow" in str(error).lower() or "large" in str(error).lower()
        return
    assert np.isfinite(q.scales).all()
    assert np.isfinite(q.dequantize()).all()


# --------------------------------------------------------------------------
# Degenerate calibration data
# --------------------------------------------------------------------------

def test_dead_columns_zeroed():
    w, x = make_inputs(48, 96, seed=6)
    dead = [0, 31, 32, 95]
    x[:, dead] = 0.0
    hessian = astro.Hessian(96).update(x)
    for act_order in (False, True):
        q = astro.quantize_layer(w, hessian, bits=4, group_size=32, method="gptq", act_order=act_order)
        dequant = check_layer(q, w, 4, 32, h=hessian.matrix, act_order=act_order)
        assert q.stats["dead_columns"] == len(dead)
        assert (dequant[:, dead] == 0).all()


def test_all_dead_layer_falls_back_to_rtn(caplog):
    w, _ = make_inputs(48, 96, seed=7)
    x = np.zeros((64, 96), np.float32)
    hessian = astro.Hessian(96).update(x)
    with caplog.at_level(logging.WARNING, logger="astro"):
        q = astro.quantize_layer(w, hessian, bits=4, group_size=32, method="gptq")
    check_layer(q, w, 4, 32, h=hessian.matrix)
    assert q.stats["rtn_fallback"] is True
    assert q.stats["dead_columns"] == 96
    assert any("fell back to RTN" in record.getMessage() for record in caplog.records)
    np.testing.assert_array_equal(q.codes, ref.rtn(w, 4, 32, False)[0])


@pytest.mark.parametrize("tokens", [1, 2, 24])
@pytest.mark.parametrize("duplicated", [False, True])
def test_rank_deficient_calibration(tokens, duplicated):
    """Fewer tokens than inputs (down to one) and duplicated input columns."""
    w, x = make_inputs(48, 96, tokens=tokens, seed=8)
    if duplicated:
        x[:, 10] = x[:, 11]
        x[:, 50:60] = x[:, 40:50]
    hessian = astro.Hessian(96).update(x)
    for act_order in (False, True):
        q = astro.quantize_layer(w, hessian, bits=3, group_size=32, method="gptq", act_order=act_order)
        check_layer(q, w, 3, 32, h=hessian.matrix, act_order=act_order)
        # damp_used comes back from a float32 field of the core.
        assert q.stats["damp_used"] >= np.float32(0.01)


def indefinite_hessian(in_, eigenvalue):
    """Symmetric H with unit diagonal and one eigenvalue equal to `eigenvalue`."""
    h = np.eye(in_, dtype=np.float32)
    off = np.float32(1.0 - eigenvalue)
    h[0, 1] = h[1, 0] = off  # the block [[1, off], [off, 1]] has eigenvalue 1 - off
    return astro.Hessian.from_matrix(h, num_samples=10)


def test_hessian_not_positive_definite_raises():
    w, _ = make_inputs(8, 16, seed=9)
    hessian = indefinite_hessian(16, -2.0)
    with pytest.raises(astro.NumericalError, match="not positive definite"):
        astro.quantize_layer(w, hessian, bits=4, group_size=-1, method="gptq", damp_max=1.0)


def test_damping_escalates_when_needed(caplog):
    w, _ = make_inputs(8, 16, seed=9)
    hessian = indefinite_hessian(16, -2.0)
    with caplog.at_level(logging.INFO, logger="astro"):
        q = astro.quantize_layer(w, hessian, bits=4, group_size=-1, method="gptq")
    check_layer(q, w, 4, -1, h=hessian.matrix)
    # mean(diag H) is 1, so damping must exceed 2 to lift the -2 eigenvalue.
    assert q.stats["damp_used"] > 2.0
    assert any("damp" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------
# Non-finite values: a clear ValueError wherever they appear
# --------------------------------------------------------------------------

NON_FINITE = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_non_finite_weight_raises(value, where, dtype):
    w, x = make_inputs(6, 40, seed=10)
    w = w.astype(dtype)
    index = {"first": (0, 0), "middle": (3, 17), "last": (5, 39)}[where]
    w[index] = value
    with pytest.raises(ValueError, match=r"W contains 1 NaN/Inf value\(s\), the first at index " + str(index).replace("(", r"\(").replace(")", r"\)")):
        astro.quantize_layer(w, x, bits=4, group_size=8, method="gptq")


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_non_finite_input_raises(value, method):
    w, x = make_inputs(6, 40, seed=11)
    x[7, 3] = value
    with pytest.raises(ValueError, match="X contains 1 NaN/Inf"):
        astro.quantize_layer(w, x, bits=4, group_size=8, method=method)


@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_hessian_raises(value):
    h = np.eye(8, dtype=np.float32)
    h[2, 5] = h[5, 2] = value
    with pytest.raises(ValueError, match="H contains 2 NaN/Inf"):
        astro.Hessian.from_matrix(h)


def test_padded_non_finite_tokens_are_ignored():
    """Masked-out (padding) positions never reach H, even when they are NaN."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 5, 16)).astype(np.float32)
    mask = np.ones((3, 5), bool)
    mask[0, 3:] = False
    mask[2, 1:] = False
    padded = x.copy()
    padded[~mask] = np.nan
    hessian = astro.Hessian(16).update(padded, mask=mask)
    expected = astro.Hessian(16).update(x[mask])
    assert hessian.num_samples == int(mask.sum())
    np.testing.assert_array_equal(hessian.matrix, expected.matrix)


# --------------------------------------------------------------------------
# Bad arguments: the error names the argument and the fix
# --------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ({"bits": 1}, ValueError, "bits=1 is not supported"),
    ({"bits": 9}, ValueError, "bits=9 is not supported"),
    ({"bits": 4.0}, TypeError, "bits must be an int"),
    ({"group_size": 0}, ValueError, "group_size=0 is invalid"),
    ({"group_size": -2}, ValueError, "group_size=-2 is invalid"),
    ({"group_size": 41}, ValueError, "group_size=41 is larger than in_features=40"),
    ({"damp": -0.1}, ValueError, "damp must be a finite number"),
    ({"damp": float("nan")}, ValueError, "damp must be a finite number"),
    ({"damp": 0.5, "damp_max": 0.1}, ValueError, "damp_max=0.1 must be >= damp=0.5"),
    ({"block_size": 0}, ValueError, "block_size must be a positive int"),
    ({"method": "awq"}, ValueError, "method='awq' is invalid"),
]


@pytest.mark.parametrize("override,error,message", BAD_ARGUMENTS)
def test_bad_argument_message(override, error, message):
    w, x = make_inputs(6, 40, seed=13)
    arguments = {"bits": 4, "group_size": 8, "method": "gptq"}
    arguments.update(override)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        astro.quantize_layer(w, x, **arguments)


@pytest.mark.parametrize("w_shape,x_shape,message", [
    ((40,), (10, 40), "W must be 2-D"),
    ((6, 0), (10, 0), "W must have at least one row and column"),
    ((6, 40), (10, 39), "X has 39 features in its last axis but W has in_features=40"),
    ((6, 40), (0, 40), "X has no tokens"),
    ((6, 40), (40,), "X must be \\(tokens, in_features\\)"),
])
def test_bad_shape_message(w_shape, x_shape, message):
    w = np.ones(w_shape, np.float32)
    x = np.ones(x_shape, np.float32)
    with pytest.raises(ValueError, match=message):
        astro.quantize_layer(w, x, bits=4, group_size=-1, method="gptq")


@pytest.mark.parametrize("qweight_rows", [1, 3, 4])
def test_unpack_checks_qweight_rows(qweight_rows):
    """Too few qweight rows for in_features raise instead of reading past the end."""
    tensors = {
        "qweight": np.zeros((qweight_rows, 8), np.int32),
        "qzeros": np.zeros((1, 1), np.int32),
        "scales": np.ones((1, 8), np.float16),
        "g_idx": np.zeros(32, np.int32),
    }
    if qweight_rows == 4:  # 32 inputs x 4 bits fill exactly 4 words
        codes, *_ = astro.unpack_gptq(tensors, 4, 32)
        assert codes.shape == (8, 32)
        return
    with pytest.raises(ValueError):
        astro.unpack_gptq(tensors, 4, 32)


def test_unpack_rejects_out_of_range_group_index():
    w, x = make_inputs(8, 64, seed=14)
    q = astro.quantize_layer(w, x, bits=4, group_size=32, method="rtn")
    tensors = q.pack()
    tensors["g_idx"] = tensors["g_idx"].copy()
    tensors["g_idx"][5] = 2
    codes, scales, zeros, g_idx = astro.unpack_gptq(tensors, 4, 64)
    with pytest.raises(ValueError):
        _core.dequantize(codes, scales, zeros, g_idx)
