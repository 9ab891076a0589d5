"""Threads, determinism, Ctrl-C and the up-front memory check."""
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import astro


def make_layer(out, in_, tokens, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, in_), dtype=np.float32)
    x = rng.standard_normal((tokens, in_), dtype=np.float32)
    x[:, 1::3] += 0.5 * x[:, 0::3][:, : x[:, 1::3].shape[1]]
    return w, astro.Hessian(in_).update(x)


def quantize(layer, **options):
    w, hessian = layer
    arguments = {"bits": 3, "group_size": 32, "method": "gptq", "act_order": True}
    arguments.update(options)
    return astro.quantize_layer(w, hessian, **arguments)


def assert_same_result(a, b):
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scales, b.scales)
    np.testing.assert_array_equal(a.zeros, b.zeros)
    np.testing.assert_array_equal(a.g_idx, b.g_idx)
    assert a.stats.get("loss") == b.stats.get("loss")
    assert a.stats["output_error"] == b.stats["output_error"]


@pytest.fixture
def restore_threads():
    saved = astro.get_num_threads()
    yield
    astro.set_num_threads(saved)


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_threads_match_serial(method, restore_threads):
    """Six layers quantized from four Python threads at once equal serial runs."""
    astro.set_num_threads(2)
    layers = [make_layer(48, 192, 400, seed) for seed in range(6)]
    serial = [quantize(layer, method=method) for layer in layers]

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(2):
            concurrent = list(pool.map(lambda layer: quantize(layer, method=method), layers))
            for expected, got in zip(serial, concurrent):
                assert_same_result(expected, got)


def test_same_layer_from_many_threads(restore_threads):
    """Threads sharing one W and one Hessian read them only."""
    astro.set_num_threads(2)
    layer = make_layer(64, 256, 512, seed=7)
    w_before = layer[0].copy()
    h_before = layer[1].matrix.copy()
    serial = quantize(layer)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: quantize(layer), range(8)))
    for result in results:
        assert_same_result(serial, result)
    np.testing.assert_array_equal(layer[0], w_before)
    np.testing.assert_array_equal(layer[1].matrix, h_before)


@pytest.mark.parametrize("threads", [1, 2])
def test_reruns_bit_identical(threads, restore_threads):
    astro.set_num_threads(threads)
    layer = make_layer(96, 384, 800, seed=11)
    first = quantize(layer, block_size=64)
    second = quantize(layer, block_size=64)
    assert_same_result(first, second)
    np.testing.assert_array_equal(first.dequantize(), second.dequantize())


def test_gil_released_during_gptq(restore_threads):
    """Python threads keep running while the core quantizes."""
    astro.set_num_threads(1)
    layer = make_layer(256, 1024, 2048, seed=13)
    ticks = 0
    done = threading.Event()

    def count_ticks():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count_ticks)
    counter.start()
    started = time.perf_counter()
    try:
        quantize(layer, act_order=False)
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        counter.join()
    # With the GIL held for the whole call the counter would stall; allow
    # a generous margin for a loaded machine (sleep(0.001) often takes 2 ms+).
    assert ticks >= 0.1 * elapsed / 0.001, f"{ticks} ticks in {elapsed:.2f} s"


def test_ctrl_c_stops_long_gptq_within_a_second(restore_threads):
    """SIGINT during a multi-second C call raises KeyboardInterrupt promptly."""
    astro.set_num_threads(2)
    in_ = 4096
    rng = np.random.default_rng(17)
    w = rng.standard_normal((in_, in_), dtype=np.float32)
    h = np.eye(in_, dtype=np.float32)
    h[0, 1:] = h[1:, 0] = 1e-3
    hessian = astro.Hessian.from_matrix(h, num_samples=in_)

    sent = {}

    def interrupt():
        sent["time"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.5, interrupt)
    started = time.perf_counter()
    timer.start()
    try:
        astro.quantize_layer(w, hessian, bits=4, group_size=128, method="gptq",
                             compute_error=False)
    except KeyboardInterrupt:
        stopped = time.perf_counter()
    else:
        finished = time.perf_counter() - started
        try:
            time.sleep(2.0)  # the pending SIGINT lands here
        except KeyboardInterrupt:
            pass
        pytest.fail(f"the call finished in {finished:.2f} s, before SIGINT; use a larger layer")
    finally:
        timer.cancel()
    assert "time" in sent, "the timer never sent SIGINT"
    assert sent["time"] - started < 1.0
    latency = stopped - sent["time"]
    assert latency < 1.0, f"KeyboardInterrupt came {latency:.2f} s after SIGINT"

    # The interrupted call left the core usable.
    small = make_layer(8, 64, 128, seed=19)
    check = quantize(small)
    assert np.isfinite(check.dequantize()).all()


def gib(nbytes):
    return f"{nbytes / 2**30:.2f} GiB"


def test_hessian_too_large_rejected_up_front(monkeypatch):
    monkeypatch.delenv("ASTRO_SKIP_MEMORY_CHECK", raising=False)
    in_ = 400_000
    needed = 4 * in_ * in_
    started = time.perf_counter()
    with pytest.raises(MemoryError, match=f"needs about {gib(needed)}"):
        astro.Hessian(in_)
    assert time.perf_counter() - started < 1.0


def test_layer_too_large_rejected_up_front(monkeypatch):
    """A layer whose H cannot fit is rejected before X is read."""
    monkeypatch.delenv("ASTRO_SKIP_MEMORY_CHECK", raising=False)
    in_ = 400_000
    w = np.zeros((1, in_), np.float32)
    x = np.zeros((1, in_), np.float32)
    with pytest.raises(MemoryError, match=r"quantizing a 1x400000 layer needs about [0-9.]+ GiB"):
        astro.quantize_layer(w, x, bits=4, group_size=128, method="gptq")
