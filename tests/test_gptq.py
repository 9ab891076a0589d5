"""GPTQ and RTN in the C core against the NumPy reference in reference.py."""
import itertools

import numpy as np
import pytest

import astro
from astro import _core

import reference as ref

# The C core and the reference round the same float32 values, but their
# matrix products sum in different orders (OpenBLAS blocks, NumPy pairwise),
# so a weight that lands within a few ulps of a rounding boundary may go
# either way; GPTQ then carries that one-step difference forward. Ties are
# therefore allowed to differ by one code, and only rarely.
MAX_MISMATCH_FRACTION = 0.002


def problem(out, in_, tokens=None, seed=0, dead=()):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, in_)).astype(np.float32)
    tokens = tokens or max(2 * in_, 16)
    # Correlated inputs with uneven channel scales, like real activations.
    mix = rng.standard_normal((in_, in_)).astype(np.float32) / np.sqrt(in_)
    x = rng.standard_normal((tokens, in_)).astype(np.float32) @ (np.eye(in_, dtype=np.float32) + mix)
    x *= rng.uniform(0.2, 3.0, size=in_).astype(np.float32)
    x[:, list(dead)] = 0
    h = (2.0 / tokens) * (x.astype(np.float64).T @ x.astype(np.float64))
    return w, x, h.astype(np.float32)


def run_core(w, h, bits, gs, sym, act_order=False, static_groups=False, mse=False, block=128):
    return _core.gptq(w, h, bits, gs, sym, mse, act_order, static_groups, 0.01, 10.0, block, True)


def assert_codes_match(actual, expected, what):
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max(initial=0) <= 1, f"{what}: a code differs by {diff.max()}"
    fraction = np.count_nonzero(diff) / diff.size
    assert fraction <= MAX_MISMATCH_FRACTION, f"{what}: {fraction:.4%} of codes differ"


GRID = list(itertools.product((2, 3, 4, 8), (-1, 32, 128), (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("bits,gs,sym,act_order,static_groups", GRID)
def test_gptq_matches_reference_grid(bits, gs, sym, act_order, static_groups):
    if static_groups and gs == -1:
        pytest.skip("static groups need a group size")
    w, _, h = problem(7, 200, seed=bits * 31 + max(gs, 0))
    gs_eff = gs if gs <= 200 else -1
    codes, scales, zeros, g_idx, q, stats = run_core(w, h, bits, gs_eff, sym, act_order, static_groups)
    r_codes, r_scales, r_zeros, r_gidx, r_q, r_loss = ref.gptq(w, h, bits, gs_eff, sym, act_order, static_groups)
    assert_codes_match(codes, r_codes, "codes")
    np.testing.assert_array_equal(g_idx, r_gidx)
    np.testing.assert_allclose(scales, r_scales, rtol=1e-4, atol=1e-7)
    assert np.mean(zeros != r_zeros) <= MAX_MISMATCH_FRACTION * 10
    assert stats["loss"] == pytest.approx(r_loss, rel=2e-2)


@pytest.mark.parametrize("out,in_,gs", [(1, 1, -1), (1, 3, -1), (7, 3, 2), (7, 33, 16), (1, 33, 32), (7, 200, 64), (5, 130, 128)])
def test_gptq_odd_sizes_and_short_last_group(out, in_, gs):
    w, _, h = problem(out, in_, seed=in_)
    codes, scales, zeros, g_idx, q, _ = run_core(w, h, 3, gs, False)
    r_codes, r_scales, r_zeros, r_gidx, r_q, _ = ref.gptq(w, h, 3, gs, False)
    assert_codes_match(codes, r_codes, f"{out}x{in_} g{gs}")
    np.testing.assert_array_equal(g_idx, r_gidx)
    groups = -(-in_ // gs) if gs > 0 else 1
    assert scales.shape == (out, groups)


@pytest.mark.parametrize("block", [1, 5, 128])
def test_gptq_block_size_changes_only_rounding(block):
    w, _, h = problem(6, 40, seed=3)
    codes, *_ = run_core(w, h, 4, -1, False, block=block)
    r_codes, *_ = ref.gptq(w, h, 4, -1, False, block_size=block)
    assert_codes_match(codes, r_codes, f"block {block}")


def test_gptq_diagonal_hessian_equals_rtn_exactly():
    # With a diagonal H the inverse factor is diagonal, no error is carried
    # to other columns, and GPTQ must reduce to RTN code for code.
    rng = np.random.default_rng(1)
    w = rng.standard_normal((9, 64)).astype(np.float32)
    h = np.diag(rng.uniform(0.5, 2.0, 64)).astype(np.float32)
    for bits, gs, sym in itertools.product((2, 3, 4, 8), (-1, 16, 64), (False, True)):
        codes, scales, zeros, g_idx, q, _ = run_core(w, h, bits, gs, sym)
        r_codes, r_scales, r_zeros, r_q = ref.rtn(w, bits, gs, sym)
        np.testing.assert_array_equal(codes, r_codes)
        np.testing.assert_array_equal(scales, r_scales)
        np.testing.assert_array_equal(zeros, r_zeros)


@pytest.mark.parametrize("bits,gs,sym", list(itertools.product((2, 3, 4, 8), (-1, 8, 24), (False, True))))
def test_rtn_matches_reference_exactly(bits, gs, sym):
    rng = np.random.default_rng(bits + gs)
    w = (rng.standard_normal((11, 48)) * rng.uniform(0.01, 10, (11, 1))).astype(np.float32)
    codes, scales, zeros, q = _core.rtn(w, bits, gs, sym, False)
    r_codes, r_scales, r_zeros, r_q = ref.rtn(w, bits, gs, sym)
    np.testing.assert_array_equal(codes, r_codes)
    np.testing.assert_array_equal(scales, r_scales)
    np.testing.assert_array_equal(zeros, r_zeros)
    np.testing.assert_array_equal(q, r_q)


@pytest.mark.parametrize("bits,sym", [(3, False), (4, True)])
def test_rtn_mse_clipping_matches_reference(bits, sym):
    rng = np.random.default_rng(7)
    w = rng.standard_t(3, (6, 64)).astype(np.float32)
    codes, scales, zeros, q = _core.rtn(w, bits, 32, sym, True)
    r_codes, r_scales, r_zeros, r_q = ref.rtn(w, bits, 32, sym, mse=True)
    # powf and NumPy's power may differ in the last ulp, which can change the
    # chosen shrink only where two candidates tie within that ulp.
    np.testing.assert_allclose(scales, r_scales, rtol=2e-2)
    assert np.mean(codes != r_codes) < 0.02
    plain = _core.rtn(w, bits, 32, sym, False)[3]
    assert np.sum(np.abs(q - w) ** 2.4) <= np.sum(np.abs(plain - w) ** 2.4) * (1 + 1e-5)


def test_rounding_is_half_to_even():
    # Values exactly halfway between two codes: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
    w = np.array([[0.0, 0.5, 1.5, 2.5, 7.0]], dtype=np.float32)
    codes, scales, zeros, q = _core.rtn(w, 3, -1, False, False)
    assert scales[0, 0] == 1.0
    assert zeros[0, 0] == 0.0
    np.testing.assert_array_equal(codes[0], [0, 0, 2, 2, 7])


def test_dequantize_equals_gptq_fake_quant_exactly():
    w, x, _ = problem(13, 96, seed=5)
    for method in ("gptq", "rtn"):
        for act_order in (False, True):
            q = astro.quantize_layer(w, x, bits=3, group_size=32, method=method, act_order=act_order)
            fake = _core.gptq(w, astro.Hessian(96).update(x).matrix, 3, 32, False, False,
                              act_order, False, 0.01, 10.0, 128, True)[4] if method == "gptq" else \
                _core.rtn(w, 3, 32, False, False)[3]
            np.testing.assert_array_equal(q.dequantize(), fake)


def test_dead_columns_are_zeroed():
    w, x, h = problem(5, 40, seed=2, dead=(0, 7, 39))
    codes, scales, zeros, g_idx, q, stats = run_core(w, h, 4, 8, False)
    assert stats["dead_columns"] == 3
    assert np.all(q[:, [0, 7, 39]] == 0)
    r_codes, *_ = ref.gptq(w, h, 4, 8, False)
    assert_codes_match(codes, r_codes, "dead columns")


def test_all_dead_layer_falls_back_to_rtn():
    w, _, _ = problem(4, 16)
    h = np.zeros((16, 16), np.float32)
    codes, scales, zeros, g_idx, q, stats = run_core(w, h, 4, 8, False)
    assert stats["rtn_fallback"] is True
    np.testing.assert_array_equal(codes, ref.rtn(w, 4, 8, False)[0])


def test_damping_escalates_on_indefinite_hessian():
    w, _, h = problem(4, 12)
    h = h.copy()
    h[3, 3] = -50.0  # indefinite at damp 0.01, positive definite at larger damping
    codes, scales, zeros, g_idx, q, stats = run_core(w, h, 4, -1, False)
    assert stats["damp_used"] > 0.01
    assert np.isfinite(q).all()


def test_hopeless_hessian_raises_numerical_error():
    w, _, _ = problem(3, 6)
    h = -np.eye(6, dtype=np.float32)
    h[0, 0] = 1.0
    with pytest.raises(astro.NumericalError, match="not positive definite"):
        run_core(w, h, 4, -1, False)


def test_gptq_beats_rtn_on_correlated_inputs():
    w, x, _ = problem(64, 128, tokens=1024, seed=11)
    for bits in (3, 4):
        g = astro.quantize_layer(w, x, bits=bits, group_size=32, method="gptq")
        r = astro.quantize_layer(w, x, bits=bits, group_size=32, method="rtn")
        assert g.stats["output_error"] < r.stats["output_error"]


def test_output_error_matches_direct_formula():
    w, x, h = problem(8, 24, seed=4)
    q = astro.quantize_layer(w, x, bits=3, group_size=8, method="gptq")
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    y_hat = x.astype(np.float64) @ q.dequantize().T.astype(np.float64)
    expected = np.sum((y - y_hat) ** 2) / np.sum(y**2)
    assert q.stats["output_error"] == pytest.approx(expected, rel=1e-3)
