"""Memory stays flat over many calls, on success and on every error path.

Each workload first runs warm-up calls, so that allocator pools, OpenBLAS
buffers and lazy imports settle. Over the measured calls that follow, the
bytes malloc has handed out may grow by at most a quarter of what one leaked
copy of the layer per call would add. glibc's mallinfo2() counts them
exactly; the resident set size, the fallback elsewhere, misses a leak that
reuses pages freed by earlier tests.
"""
import ctypes
import ctypes.util
import gc

import numpy as np
import pytest

import astro
from astro import _core

OUT, IN = 64, 256
LAYER_BYTES = OUT * IN * 4  # one float32 copy of W: 64 KiB
ROUNDS = 100


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
        "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    function = getattr(libc, "mallinfo2", None)
    if function is None:
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _mallinfo2()


def resident_bytes():
    """Bytes in use from malloc (glibc), else the RSS from /proc/self/statm."""
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        return info.uordblks + info.hblkhd
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    import resource

    return pages * resource.getpagesize()


def growth_over_rounds(workload, rounds=ROUNDS, warmup=20):
    for _ in range(warmup):
        workload()
    gc.collect()
    before = resident_bytes()
    for _ in range(rounds):
        workload()
    gc.collect()
    return resident_bytes() - before


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((OUT, IN), dtype=np.float32)
    x = rng.standard_normal((512, IN), dtype=np.float32)
    return w, x, astro.Hessian(IN).update(x)


def expect_error(call, error):
    try:
        call()
    except error:
        return
    raise AssertionError(f"{call} did not raise {error.__name__}")


def workloads(layer):
    w, x, hessian = layer
    w_nan = w.copy()
    w_nan[3, 5] = np.nan
    indefinite = astro.Hessian.from_matrix(-np.eye(IN, dtype=np.float32), num_samples=1)
    q = astro.quantize_layer(w, hessian, bits=4, group_size=64, method="gptq")
    packed = q.pack()
    return {
        "gptq": lambda: astro.quantize_layer(w, hessian, bits=4, group_size=64, method="gptq"),
        "gptq_act_order_static": lambda: astro.quantize_layer(
            w, hessian, bits=3, group_size=32, method="gptq", act_order=True,
            static_groups=True, mse=True),
        "rtn_from_x": lambda: astro.quantize_layer(w, x, bits=4, group_size=64, method="rtn"),
        "hessian_update": lambda: astro.Hessian(IN).update(x.reshape(8, 64, IN)),
        "pack_unpack": lambda: astro.unpack_gptq(q.pack(), 4, IN),
        "dequantize": lambda: q.dequantize(),
        "unpack_dequantize": lambda: _core.dequantize(*astro.unpack_gptq(packed, 4, IN)),
        "error_nan_weight": lambda: expect_error(
            lambda: astro.quantize_layer(w_nan, hessian, method="gptq"), ValueError),
        "error_not_positive_definite": lambda: expect_error(
            lambda: astro.quantize_layer(w, indefinite, method="gptq", damp_max=0.1),
            astro.NumericalError),
        "error_core_bad_g_idx": lambda: expect_error(
            lambda: _core.dequantize(q.codes, q.scales, q.zeros,
                                     np.full(IN, 99, np.int32)), ValueError),
    }


WORKLOAD_NAMES = [
    "gptq", "gptq_act_order_static", "rtn_from_x", "hessian_update", "pack_unpack",
    "dequantize", "unpack_dequantize", "error_nan_weight", "error_not_positive_definite",
    "error_core_bad_g_idx",
]


@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_memory_stays_flat(name, layer):
    workload = workloads(layer)[name]
    growth = growth_over_rounds(workload)
    # A leak of one W-sized buffer per call would add ROUNDS * 64 KiB = 6.25 MiB;
    # allow a quarter of one such buffer per call for allocator noise.
    limit = ROUNDS * LAYER_BYTES // 4
    assert growth < limit, f"{name}: RSS grew by {growth / 2**20:.2f} MiB over {ROUNDS} calls"


def test_detector_catches_a_leak():
    """The RSS measurement detects one leaked W-sized buffer per call."""
    kept = []
    growth = growth_over_rounds(lambda: kept.append(np.ones(OUT * IN, np.float32)))
    assert growth >= ROUNDS * LAYER_BYTES // 2


def test_refcounts_of_inputs_unchanged(layer):
    """The binding drops every reference it takes to its arguments."""
    import sys

    w, _, hessian = layer
    h = hessian.matrix
    before = (sys.getrefcount(w), sys.getrefcount(h))
    for _ in range(50):
        _core.gptq(w, h, 4, 64, False, False, False, False, 0.01, 10.0, 128, True)
        _core.rtn(w, 4, 64, False, False)
        _core.output_error(w, w, h)
    assert (sys.getrefcount(w), sys.getrefcount(h)) == before
