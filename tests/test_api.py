"""Public API: input types, bad input messages, results and their display."""
import logging

import numpy as np
import pytest

import astro


def layer(out=16, in_=64, tokens=128, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((out, in_)).astype(np.float32),
            rng.standard_normal((tokens, in_)).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_accepts_float_dtypes_and_strides(dtype):
    w, x = layer()
    base = astro.quantize_layer(w, x, method="gptq", group_size=32)
    w_any = np.asfortranarray(w.astype(dtype).astype(np.float32))
    x_strided = np.repeat(x, 2, axis=0)[::2]
    q = astro.quantize_layer(w_any, x_strided, method="gptq", group_size=32)
    np.testing.assert_array_equal(q.codes, base.codes)
    q16 = astro.quantize_layer(w.astype(dtype), x.astype(dtype), method="gptq", group_size=32)
    assert q16.codes.shape == w.shape


def test_accepts_3d_inputs_and_hessian():
    w, x = layer()
    h = astro.Hessian(64)
    h.update(x[:50]).update(x[50:])
    a = astro.quantize_layer(w, h, method="gptq", group_size=32)
    b = astro.quantize_layer(w, x.reshape(2, 64, 64), method="gptq", group_size=32)
    assert h.num_samples == 128
    np.testing.assert_allclose(h.matrix, astro.Hessian(64).update(x).matrix, rtol=1e-5, atol=1e-6)
    assert np.mean(a.codes != b.codes) < 0.002


def test_hessian_matches_definition_and_mask():
    _, x = layer(tokens=40)
    h = astro.Hessian(64).update(x)
    expected = 2.0 / 40 * (x.astype(np.float64).T @ x)
    np.testing.assert_allclose(h.matrix, expected, rtol=1e-4, atol=1e-5)
    padded = np.concatenate([x, 100 * np.ones((10, 64), np.float32)])
    mask = np.r_[np.ones(40, bool), np.zeros(10, bool)]
    hm = astro.Hessian(64).update(padded, mask=mask)
    assert hm.num_samples == 40
    np.testing.assert_allclose(hm.matrix, h.matrix, rtol=1e-5, atol=1e-6)


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    w, x = layer()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        q = astro.quantize_layer(torch.from_numpy(w).to(dtype), torch.from_numpy(x).to(dtype),
                                 method="gptq", group_size=32)
        assert q.codes.dtype == np.uint8


BAD = [
    (dict(W=np.ones(4, np.float32)), ValueError, "W must be 2-D"),
    (dict(X=np.ones((8, 63), np.float32)), ValueError, "in_features=64"),
    (dict(X=np.ones((0, 64), np.float32)), ValueError, "no tokens"),
    (dict(bits=5.0), TypeError, "bits must be an int"),
    (dict(bits=1), ValueError, "bits=1 is not supported"),
    (dict(bits=16), ValueError, "bits=16 is not supported"),
    (dict(group_size=0), ValueError, "group_size=0 is invalid"),
    (dict(group_size=-2), ValueError, "group_size=-2 is invalid"),
    (dict(group_size=65), ValueError, "larger than in_features=64"),
    (dict(method="awq"), ValueError, "method='awq' is invalid"),
    (dict(W=np.ones((4, 64), np.int32)), TypeError, "dtype int32"),
    (dict(W=[[1.0]]), TypeError, "numpy.ndarray or a torch.Tensor"),
    (dict(damp=-1), ValueError, "damp must be"),
]


@pytest.mark.parametrize("override,error,message", BAD)
def test_bad_input_raises_clear_error(override, error, message):
    w, x = layer()
    args = dict(W=w, X=x, method="gptq", group_size=32)
    args.update(override)
    with pytest.raises(error, match=message):
        astro.quantize_layer(**args)


@pytest.mark.parametrize("where", ["W", "X"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(where, value):
    w, x = layer()
    target = w if where == "W" else x
    target[3, 5] = value
    with pytest.raises(ValueError, match=rf"{where} contains 1 NaN/Inf value\(s\), the first at index \(3, 5\)"):
        astro.quantize_layer(w, x, method="gptq", group_size=32)


def test_repr_and_html_summary():
    w, x = layer()
    q = astro.quantize_layer(w, x, bits=3, group_size=32, method="gptq")
    text = repr(q)
    assert text.startswith("QuantizedLayer(16x64, bits=3, group_size=32, asym, method=gptq, output_error=")
    page = q._repr_html_()
    assert "<table>" in page
    assert "output_error" in page


def test_logging_uses_astro_logger(caplog):
    w, _ = layer()
    h = astro.Hessian.from_matrix(np.zeros((64, 64), np.float32), num_samples=10)
    with caplog.at_level(logging.WARNING, logger="astro"):
        q = astro.quantize_layer(w, h, method="gptq", group_size=32, compute_error=False)
    assert q.stats["rtn_fallback"] is True
    assert any("fell back to RTN" in r.message for r in caplog.records)


def test_set_num_threads_round_trip():
    before = astro.get_num_threads()
    astro.set_num_threads(1)
    assert astro.get_num_threads() == 1
    astro.set_num_threads(before)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        astro.set_num_threads(0)
