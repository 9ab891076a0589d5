"""Layer-level benchmarks: our C core against PyTorch peers and the BLAS ceiling.

Run alone, it times GPTQ on a 4096 x 4096 layer with the Hessian given, and
Hessian accumulation, and prints both as a fraction of the OpenBLAS
sgemm/ssyrk rate measured in the same run:

    python benchmarks/bench_layer.py --threads 2

``benchmarks/run_all.py`` drives the full grid through the same functions.
Each measurement runs in a fresh worker process (``--worker SPEC``), so
peak memory, thread pools and allocator state start afresh for every case.

Flop counts used for the "fraction of the ceiling" figures:

* GPTQ: ``out * in^2`` for the column sweep plus ``2/3 * in^3`` for the
  inverse factor by the cheapest exact route (one Cholesky factorization,
  ``in^3 / 3``, and one triangular inverse, ``in^3 / 3``). An implementation
  that takes a costlier route (the reference does Cholesky, inverse from the
  factor and a second Cholesky, ``4/3 * in^3``) is still charged 2/3, so the
  fraction never rewards extra work.
* Hessian accumulation: ``tokens * in^2`` (what ssyrk does on one triangle).
* One Astro iteration: ``2 * out * in^2`` (one GEMM).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_OUT_DIR = BENCH_DIR / "out"

# Tokens in the synthetic calibration set behind every cached Hessian.
HESSIAN_TOKENS = 4096
# Tokens per batch fed to the Hessian accumulators.
CHUNK_TOKENS = 2048
# Output error is evaluated on at most this many evenly spaced rows, the same
# rows for every implementation, so that the evaluation costs less than the
# quantization it checks.
ERROR_ROWS = 2048
# Astro regularization weight under the normalized Hessian.
ASTRO_BETA = 5e-5
POWER_ITERATIONS = 30

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_environment(threads: int) -> dict:
    """Return a copy of the environment with every BLAS/OpenMP pool sized."""
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    return env


def core_build() -> str:
    """Return the short SHA-256 of the built extension, so mixed builds in one run show."""
    import hashlib

    paths = sorted(glob.glob(str(REPO_ROOT / "astro" / "_core*.so")))
    if not paths:
        return "not built"
    with open(paths[0], "rb") as binary:
        return hashlib.sha256(binary.read()).hexdigest()[:12]


# --------------------------------------------------------------------------
# OpenBLAS ceiling, measured on the library our package links
# --------------------------------------------------------------------------


class OpenBLAS:
    """ctypes access to sgemm/ssyrk of the scipy-openblas32 wheel."""

    ROW_MAJOR, NO_TRANS, TRANS, UPPER = 101, 111, 112, 121

    def __init__(self) -> None:
        import scipy_openblas32

        self.wheel_version = scipy_openblas32.__version__
        pattern = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas*.so*")
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise FileNotFoundError(f"no OpenBLAS library matches {pattern}")
        self.path = paths[0]
        self.lib = ctypes.CDLL(self.path)
        self.lib.scipy_openblas_get_config.restype = ctypes.c_char_p
        self.lib.scipy_openblas_get_corename.restype = ctypes.c_char_p

    def set_num_threads(self, threads: int) -> None:
        self.lib.scipy_openblas_set_num_threads(threads)

    def config(self) -> str:
        return self.lib.scipy_openblas_get_config().decode()

    def corename(self) -> str:
        return self.lib.scipy_openblas_get_corename().decode()

    def sgemm(self, a, b, c) -> None:
        """``c = a @ b`` for C-contiguous float32 arrays."""
        m, k = a.shape
        n = b.shape[1]
        self.lib.scipy_cblas_sgemm(
            self.ROW_MAJOR, self.NO_TRANS, self.NO_TRANS, m, n, k,
            ctypes.c_float(1.0), ctypes.c_void_p(a.ctypes.data), k,
            ctypes.c_void_p(b.ctypes.data), n, ctypes.c_float(0.0),
            ctypes.c_void_p(c.ctypes.data), n)

    def ssyrk(self, x, c) -> None:
        """Upper triangle of ``c = x^T x`` for x (tokens x n)."""
        k, n = x.shape
        self.lib.scipy_cblas_ssyrk(
            self.ROW_MAJOR, self.UPPER, self.TRANS, n, k, ctypes.c_float(1.0),
            ctypes.c_void_p(x.ctypes.data), n, ctypes.c_float(0.0),
            ctypes.c_void_p(c.ctypes.data), n)


def best_seconds(function, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def measure_ceiling(threads: int, sizes=(1024, 2048, 4096),
                    syrk_tokens: int = CHUNK_TOKENS, repeats: int = 3) -> dict:
    """Measure sgemm (n x n x n) and ssyrk (n x n from syrk_tokens rows) GFLOP/s.

    Returns the best of ``repeats`` runs after one warm-up, per size.
    """
    import numpy as np

    blas = OpenBLAS()
    blas.set_num_threads(threads)
    rng = np.random.default_rng(0)
    sgemm, ssyrk = {}, {}
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), dtype=np.float32)
        blas.sgemm(a, b, c)
        seconds = best_seconds(lambda: blas.sgemm(a, b, c), repeats)
        sgemm[n] = 2.0 * n ** 3 / seconds / 1e9

        x = rng.standard_normal((syrk_tokens, n), dtype=np.float32)
        blas.ssyrk(x, c)
        seconds = best_seconds(lambda: blas.ssyrk(x, c), repeats)
        ssyrk[n] = float(syrk_tokens) * n * n / seconds / 1e9
        del a, b, c, x
    return {
        "library": blas.path,
        "wheel_version": blas.wheel_version,
        "config": blas.config(),
        "corename": blas.corename(),
        "threads": threads,
        "syrk_tokens": syrk_tokens,
        "sgemm_gflops": {str(k): v for k, v in sgemm.items()},
        "ssyrk_gflops": {str(k): v for k, v in ssyrk.items()},
    }


def ceiling_rate(table: dict, size: int) -> float:
    """Rate at the measured size nearest to ``size`` (log scale)."""
    sizes = sorted(int(k) for k in table)
    nearest = min(sizes, key=lambda s: abs(math.log(s) - math.log(size)))
    return table[str(nearest)]


def gptq_flops(out: int, inp: int) -> float:
    return float(out) * inp * inp + 2.0 / 3.0 * float(inp) ** 3


def hessian_flops(tokens: int, inp: int) -> float:
    return float(tokens) * inp * inp


def astro_iteration_flops(out: int, inp: int) -> float:
    return 2.0 * out * inp * inp


# --------------------------------------------------------------------------
# Synthetic inputs, cached on disk so that every worker loads the same arrays
# --------------------------------------------------------------------------


def activation_chunk(tokens: int, inp: int, seed: int):
    """Synthetic layer inputs (tokens x in), float32.

    Channel scales are log-normal with a few channels 20x larger (the
    activation outliers of LLMs), and an 8-dimensional shared component
    correlates the channels.
    """
    import numpy as np

    rng = np.random.default_rng([seed, inp])
    scales = np.exp(rng.normal(0.0, 0.5, inp)).astype(np.float32)
    outliers = rng.choice(inp, size=max(1, inp // 256), replace=False)
    scales[outliers] *= 20.0
    mixing = rng.standard_normal((8, inp), dtype=np.float32) * 0.5
    rng = np.random.default_rng([seed, inp, tokens])
    x = rng.standard_normal((tokens, inp), dtype=np.float32)
    x += rng.standard_normal((tokens, 8), dtype=np.float32) @ mixing
    x *= scales
    return x


def synthetic_weight(out: int, inp: int, seed: int = 1):
    """Heavy-tailed weights (Student t, 5 degrees of freedom), float32."""
    import numpy as np

    rng = np.random.default_rng([seed, out, inp])
    w = rng.standard_t(5, size=(out, inp)).astype(np.float32)
    w *= 1.0 / math.sqrt(inp)
    return w


def cached_inputs(cache_dir: Path, out: int, inp: int):
    """Load (W, H), creating them on first use. H = (2/n) X^T X, n = HESSIAN_TOKENS."""
    import numpy as np

    cache_dir.mkdir(parents=True, exist_ok=True)
    w_path = cache_dir / f"w_{out}x{inp}.npy"
    h_path = cache_dir / f"h_{inp}.npy"
    if not w_path.exists():
        np.save(w_path, synthetic_weight(out, inp))
    if not h_path.exists():
        h = np.zeros((inp, inp), dtype=np.float64)
        for start in range(0, HESSIAN_TOKENS, CHUNK_TOKENS):
            x = activation_chunk(CHUNK_TOKENS, inp, seed=start + 7).astype(np.float64)
            h += x.T @ x
        h *= 2.0 / HESSIAN_TOKENS
        np.save(h_path, h.astype(np.float32))
    return np.load(w_path), np.load(h_path)


# --------------------------------------------------------------------------
# Measurement helpers used inside a worker
# --------------------------------------------------------------------------


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _release_free_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to release
        pass


class PeakMemory:
    """Peak resident memory above the level at ``start()``, in MiB.

    Resets the kernel's high-water mark through /proc/self/clear_refs, so
    only memory touched after ``start()`` counts.
    """

    def start(self) -> None:
        # glibc keeps freed heap memory resident, and after a large block is
        # freed it serves blocks up to 32 MiB from the heap. malloc_trim hands
        # that memory back, so reusing it faults pages in and counts again.
        _release_free_heap()
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        self.base_kib = _status_kib("VmRSS")

    def extra_mib(self) -> float:
        return (_status_kib("VmHWM") - self.base_kib) / 1024.0


def relative_output_error(w, q, h) -> float:
    """``tr(D H D^T) / tr(W H W^T)`` with D = Q - W, on up to ERROR_ROWS rows."""
    import numpy as np

    rows = np.unique(np.linspace(0, w.shape[0] - 1, min(w.shape[0], ERROR_ROWS)).astype(np.int64))
    w = np.ascontiguousarray(w[rows], dtype=np.float32)
    d = np.ascontiguousarray(q[rows], dtype=np.float32) - w
    numerator = np.einsum("ij,ij->", d @ h, d, dtype=np.float64)
    denominator = np.einsum("ij,ij->", w @ h, w, dtype=np.float64)
    return float(numerator / denominator) if denominator > 0 else 0.0


def versions() -> dict:
    """Versions of Python, NumPy and the peers importable in this interpreter."""
    import numpy

    versions = {"python": sys.version.split()[0], "numpy": numpy.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    for name in ("llmcompressor", "compressed_tensors"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "unknown")
        except Exception:  # an optional peer that fails to import is reported absent
            pass
    return versions


# --------------------------------------------------------------------------
# Cases and the worker
# --------------------------------------------------------------------------


@dataclass
class Spec:
    """One measurement: a task, an implementation and a layer shape."""

    task: str                 # gptq | rtn | astro | hessian
    impl: str                 # astro | astro_core | reference | llmcompressor
    out: int
    inp: int
    tokens: int = 0           # hessian only
    bits: int = 4
    group_size: int = 128
    static_groups: bool = False
    iterations: int = 0       # astro only
    repeats: int = 1
    time_cap: float = 60.0    # hessian: stop feeding chunks past this, then extrapolate
    threads: int = 2
    cache_dir: str = str(DEFAULT_OUT_DIR / "cache")
    extra: dict = field(default_factory=dict)

    def label(self) -> str:
        parts = [self.task, self.impl, f"{self.out}x{self.inp}"]
        if self.task == "hessian":
            parts.append(f"t{self.tokens}")
        if self.static_groups:
            parts.append("static")
        return " ".join(parts)


def _set_threads(threads: int, impl: str) -> None:
    """Size the thread pools this worker uses (torch is imported only for peers)."""
    if impl.startswith("astro"):
        _import_astro()._core.set_num_threads(threads)
    else:
        import torch

        torch.set_num_threads(threads)


def _import_astro():
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import astro
    import astro._core  # noqa: F401  (the extension must be built)

    return astro


def _gptq_function(spec: Spec, w):
    """Return ``run(h)`` that quantizes ``w`` with GPTQ and ``dense(result)``.

    ``run`` is what gets timed; ``dense`` turns its result into the
    dequantized float32 weights afterwards, outside the time and memory
    measurement. ``run`` gets a fresh float32 copy of the Hessian for every
    call, because the peers consume theirs as the reference code does. Ours
    gets it wrapped in an ``astro.Hessian``, as a caller that accumulated H
    would hold it.
    """
    if spec.impl == "astro":
        astro = _import_astro()

        def run(hessian):
            return astro.quantize_layer(
                w, hessian, method="gptq", bits=spec.bits, group_size=spec.group_size,
                static_groups=spec.static_groups, compute_error=False)
        return run, lambda layer: layer.dequantize()
    if spec.impl == "astro_core":
        core = _import_astro()._core
        return (lambda h: core.gptq(w, h, spec.bits, spec.group_size, False, False, False,
                                    spec.static_groups, 0.01, 1.0, 128, True)[4],
                lambda dense: dense)

    import torch

    weight = torch.from_numpy(w)
    if spec.impl == "reference":
        import peers

        return (lambda h: peers.gptq_reference(
            weight, torch.from_numpy(h), spec.bits, spec.group_size,
            static_groups=spec.static_groups, overwrite_hessian=True).weight,
            lambda dense: dense.numpy())

    if spec.impl == "llmcompressor":
        if not spec.static_groups:
            raise ValueError("llm-compressor's GPTQ computes group scales from the "
                             "original weights: run it with static_groups=True")
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
        from llmcompressor.observers import Observer

        args = QuantizationArgs(num_bits=spec.bits, type="int", symmetric=False,
                                strategy="group", group_size=spec.group_size)

        def run(h):
            # As in GPTQModifier: the weight observer computes the group
            # scales, the weights are stacked into a new float32 tensor (which
            # quantize_weight overwrites), and the Hessian is handed over.
            observer = Observer.load_from_registry("memoryless_minmax",
                                                   base_name="weight", args=args)
            observer(weight)
            qparams = observer.get_qparams()
            stacked = torch.stack([weight])
            quantized, _, _ = quantize_weight(
                stacked, torch.from_numpy(h).unsqueeze(0),
                qparams["scale"].unsqueeze(0), qparams["zero_point"].unsqueeze(0),
                None, args, blocksize=128, percdamp=0.01)
            return quantized[0]
        return run, lambda dense: dense.numpy()
    raise ValueError(f"unknown GPTQ implementation {spec.impl!r}")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(run, make_argument, memory: PeakMemory, repeats: int):
    """Time ``run(make_argument())`` ``repeats`` times.

    Returns (best wall seconds, CPU seconds of that run, peak MiB of the first
    run, last result). The argument is built before the clock and the memory
    mark start.
    """
    best, best_cpu, peak, result = math.inf, math.inf, 0.0, None
    for attempt in range(repeats):
        argument = make_argument()
        result = None
        memory.start()
        cpu = _cpu_seconds()
        start = time.perf_counter()
        result = run(argument)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
        if attempt == 0:
            peak = memory.extra_mib()
        if seconds < best:
            best, best_cpu = seconds, cpu
        del argument
    return best, best_cpu, peak, result


def _best_rates(function, flops: float, repeats: int = 2) -> tuple[float, float]:
    """Return (wall GFLOP/s, CPU-time GFLOP/s) of the fastest of ``repeats`` calls."""
    function()
    best_wall, best_cpu = math.inf, math.inf
    for _ in range(repeats):
        cpu = _cpu_seconds()
        start = time.perf_counter()
        function()
        seconds = time.perf_counter() - start
        if seconds < best_wall:
            best_wall, best_cpu = seconds, _cpu_seconds() - cpu
    return flops / best_wall / 1e9, flops / max(best_cpu, 1e-9) / 1e9


def local_sgemm_rate(size: int, threads: int) -> tuple[float, float]:
    """Return sgemm (wall, CPU-time) GFLOP/s at ``n = min(size, 2048)``, measured now.

    Taken in the same worker right before a case, so that both see the same
    machine load. The CPU-time rate is per process, all threads together.
    """
    import numpy as np

    n = min(size, 2048)
    blas = OpenBLAS()
    blas.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    return _best_rates(lambda: blas.sgemm(a, b, c), 2.0 * n ** 3)


def local_ssyrk_rate(x, threads: int) -> tuple[float, float]:
    """Return ssyrk (wall, CPU-time) GFLOP/s on the batch ``x``, measured now."""
    import numpy as np

    blas = OpenBLAS()
    blas.set_num_threads(threads)
    c = np.empty((x.shape[1], x.shape[1]), dtype=np.float32)
    return _best_rates(lambda: blas.ssyrk(x, c), float(x.shape[0]) * x.shape[1] ** 2)


def _run_gptq(spec: Spec, memory: PeakMemory) -> dict:
    w, h = cached_inputs(Path(spec.cache_dir), spec.out, spec.inp)
    run, dense = _gptq_function(spec, w)
    if spec.impl == "astro":
        astro = _import_astro()
        make_hessian = lambda: astro.Hessian.from_matrix(h, HESSIAN_TOKENS)  # noqa: E731
    else:
        make_hessian = h.copy
    ceiling = local_sgemm_rate(spec.inp, spec.threads)
    seconds, cpu, peak, result = _measure(run, make_hessian, memory, spec.repeats)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_extra_mib": peak,
        "output_error": relative_output_error(w, dense(result), h),
        "flops": gptq_flops(spec.out, spec.inp),
        "local_sgemm_gflops": ceiling[0],
        "local_sgemm_cpu_gflops": ceiling[1],
        "inputs_mib": (w.nbytes + h.nbytes) / 2 ** 20,
    }


def _run_rtn(spec: Spec, memory: PeakMemory) -> dict:
    w, h = cached_inputs(Path(spec.cache_dir), spec.out, spec.inp)
    if spec.impl == "astro":
        astro = _import_astro()
        hessian = astro.Hessian.from_matrix(h, HESSIAN_TOKENS)
        run = lambda _: astro.quantize_layer(  # noqa: E731
            w, hessian, method="rtn", bits=spec.bits, group_size=spec.group_size,
            compute_error=False)
        dense = lambda layer: layer.dequantize()  # noqa: E731
    elif spec.impl == "astro_core":
        core = _import_astro()._core
        run = lambda _: core.rtn(w, spec.bits, spec.group_size, False, False)[3]  # noqa: E731
        dense = lambda result: result  # noqa: E731
    elif spec.impl == "reference":
        import peers
        import torch

        weight = torch.from_numpy(w)
        run = lambda _: peers.rtn_reference(weight, spec.bits, spec.group_size)  # noqa: E731
        dense = lambda result: result.numpy()  # noqa: E731
    else:
        raise ValueError(f"unknown RTN implementation {spec.impl!r}")
    best, cpu, peak, result = _measure(run, lambda: None, memory, spec.repeats)
    result = dense(result)
    return {
        "seconds": best,
        "cpu_seconds": cpu,
        "peak_extra_mib": peak,
        "output_error": relative_output_error(w, result, h),
        "inputs_mib": w.nbytes / 2 ** 20,
    }


def _run_astro(spec: Spec, memory: PeakMemory) -> dict:
    import numpy as np
    import torch

    import peers

    w, h = cached_inputs(Path(spec.cache_dir), spec.out, spec.inp)
    iterations = spec.iterations
    if spec.impl == "astro_core":
        core = _import_astro()._core
        function = lambda: core.regularize(  # noqa: E731
            w, h, ASTRO_BETA, spec.group_size, False, iterations, 0, 0.0,
            POWER_ITERATIONS, False)[0]
    elif spec.impl == "reference":
        weight, hessian = torch.from_numpy(w), torch.from_numpy(h)
        function = lambda: peers.astro_plain(  # noqa: E731
            weight, hessian, ASTRO_BETA, spec.group_size, iterations,
            power_iterations=POWER_ITERATIONS).weight.numpy()
    else:
        raise ValueError(f"unknown Astro implementation {spec.impl!r}")
    ceiling = local_sgemm_rate(spec.inp, spec.threads)
    best, cpu, peak, result = _measure(lambda _: function(), lambda: None, memory, spec.repeats)

    # Objective of the result under one common lambda_max and alpha, so both
    # implementations are judged by the same yardstick.
    hessian = torch.from_numpy(h)
    lambda_max = peers.largest_eigenvalue(hessian, POWER_ITERATIONS)
    tau = ASTRO_BETA * peers.group_alpha(hessian, spec.group_size)
    hn = hessian / lambda_max
    rows = np.unique(np.linspace(0, w.shape[0] - 1, min(w.shape[0], ERROR_ROWS)).astype(np.int64))
    objective = peers.astro_objective(torch.from_numpy(np.ascontiguousarray(result[rows])),
                                      torch.from_numpy(w[rows]), hn, tau, spec.group_size)
    initial = peers.astro_objective(torch.from_numpy(w[rows]), torch.from_numpy(w[rows]),
                                    hn, tau, spec.group_size)
    return {
        "seconds": best,
        "cpu_seconds": cpu,
        "seconds_per_iteration": best / max(1, iterations),
        "local_sgemm_gflops": ceiling[0],
        "local_sgemm_cpu_gflops": ceiling[1],
        "peak_extra_mib": peak,
        "objective": objective,
        "objective_initial": initial,
        "output_change": relative_output_error(w, result, h),
        "flops": astro_iteration_flops(spec.out, spec.inp) * iterations,
        "inputs_mib": (w.nbytes + h.nbytes) / 2 ** 20,
    }


def _hessian_accumulator(spec: Spec, x):
    """Return (start, update, finish) callables for ``spec``'s implementation."""
    import numpy as np

    inp = spec.inp
    state = {}
    if spec.impl == "astro":
        astro = _import_astro()

        def start():
            state["h"] = astro.Hessian(inp)

        def update():
            state["h"].update(x)

        def finish():
            return state["h"].matrix
    elif spec.impl == "astro_core":
        core = _import_astro()._core

        def start():
            state["h"] = np.zeros((inp, inp), dtype=np.float32)
            state["n"] = 0

        def update():
            state["n"] = core.hessian_update(state["h"], state["n"], x)

        def finish():
            core.hessian_symmetrize(state["h"])
            return state["h"]
    elif spec.impl == "reference":
        import torch

        import peers

        inputs = torch.from_numpy(x)

        def start():
            state["h"] = torch.zeros((inp, inp))
            state["n"] = 0

        def update():
            state["n"] = peers.hessian_update_reference(state["h"], state["n"], inputs)

        def finish():
            return state["h"].numpy()
    elif spec.impl == "llmcompressor":
        import torch
        from llmcompressor.modifiers.gptq.helpers import accumulate_hessian

        inputs = torch.from_numpy(x)
        module = torch.nn.Linear(inp, 1, bias=False)

        def start():
            state["h"] = torch.zeros((inp, inp))
            state["n"] = torch.zeros(())

        def update():
            state["h"], state["n"] = accumulate_hessian(inputs, module, state["h"], state["n"])

        def finish():
            # llm-compressor divides by the sample count when it stacks a batch.
            return (state["h"] / state["n"]).numpy()
    else:
        raise ValueError(f"unknown Hessian implementation {spec.impl!r}")
    return start, update, finish


def _run_hessian(spec: Spec, memory: PeakMemory) -> dict:
    """Feed ``spec.tokens`` tokens in CHUNK_TOKENS batches (the same batch each time).

    When the feed would pass ``spec.time_cap`` seconds, it stops early and the
    time is scaled linearly to the full token count, because every batch costs
    the same. ``measured_tokens`` records how many tokens were really fed.
    """
    import numpy as np

    chunk = min(CHUNK_TOKENS, spec.tokens)
    x = activation_chunk(chunk, spec.inp, seed=11)
    batches = max(1, spec.tokens // chunk)
    start, update, finish = _hessian_accumulator(spec, x)

    ceiling = local_ssyrk_rate(x, spec.threads)
    # Warm-up batch: thread pools and first-touch page faults of the output.
    start()
    update()
    finish()

    memory.start()
    cpu = _cpu_seconds()
    begin = time.perf_counter()
    start()
    fed = 0
    while fed < batches:
        update()
        fed += 1
        if time.perf_counter() - begin > spec.time_cap:
            break
    h = finish()
    seconds = time.perf_counter() - begin
    cpu = _cpu_seconds() - cpu
    peak = memory.extra_mib()

    # Every batch is the same, so the normalized H equals the one of a single
    # batch: compare a block of it against a float64 computation.
    rng = np.random.default_rng(5)
    columns = np.sort(rng.choice(spec.inp, size=min(spec.inp, 256), replace=False))
    reference = x[:, columns].astype(np.float64)
    reference = reference.T @ reference
    block = h[np.ix_(columns, columns)].astype(np.float64)
    block = block / np.trace(block) * np.trace(reference)
    deviation = float(np.abs(block - reference).max() / np.abs(reference).max())

    scale = batches / fed
    return {
        "seconds": seconds * scale,
        "cpu_seconds": cpu * scale,
        "local_ssyrk_gflops": ceiling[0],
        "local_ssyrk_cpu_gflops": ceiling[1],
        "measured_tokens": fed * chunk,
        "extrapolated": fed < batches,
        "peak_extra_mib": peak,
        "max_relative_deviation": deviation,
        "flops": hessian_flops(batches * chunk, spec.inp),
        "inputs_mib": x.nbytes / 2 ** 20,
    }


TASKS = {"gptq": _run_gptq, "rtn": _run_rtn, "astro": _run_astro, "hessian": _run_hessian}


def run_worker(spec: Spec) -> dict:
    """Run one measurement in this process and return its record."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    _set_threads(spec.threads, spec.impl)
    memory = PeakMemory()
    record = TASKS[spec.task](spec, memory)
    record.update({"spec": asdict(spec), "label": spec.label(), "core_build": core_build()})
    return record


def run_in_subprocess(spec: Spec, python: str = sys.executable,
                      timeout: float = 3600.0) -> dict:
    """Run one measurement in a fresh worker process; errors come back as records."""
    command = [python, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(spec))]
    try:
        completed = subprocess.run(command, capture_output=True, text=True,
                                   env=thread_environment(spec.threads),
                                   timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"spec": asdict(spec), "label": spec.label(),
                "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return {"spec": asdict(spec), "label": spec.label(),
                "error": f"worker exited with status {completed.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------
# Headline run: GPTQ 4096 x 4096 with H given, and H accumulation
# --------------------------------------------------------------------------


def headline(threads: int, size: int = 4096, tokens: int = 32768) -> dict:
    """Time our GPTQ (H given) and H accumulation at ``size``; rate as a fraction of BLAS.

    Each fraction uses the sgemm or ssyrk rate measured in the same worker
    right before the case.
    """
    ceiling = measure_ceiling(threads, sizes=(size,))
    records = []
    for impl in ("astro_core", "astro"):
        records.append(run_in_subprocess(Spec("gptq", impl, size, size, threads=threads)))
        records.append(run_in_subprocess(Spec("hessian", impl, 0, size, tokens=tokens,
                                              threads=threads, time_cap=600.0)))
    for record in records:
        if "error" in record:
            continue
        rate = record["flops"] / record["seconds"] / 1e9
        if record["spec"]["task"] == "gptq":
            reference = record["local_sgemm_gflops"]
        else:
            reference = record["local_ssyrk_gflops"]
        record["gflops"] = rate
        record["fraction_of_ceiling"] = rate / reference
    return {"ceiling": ceiling, "records": records}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for OpenBLAS, OpenMP, MKL, torch and astro (default 2)")
    parser.add_argument("--worker", metavar="SPEC",
                        help="internal: run one measurement described by a JSON Spec")
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(Spec(**json.loads(args.worker)))))
        return 0

    result = headline(args.threads)
    ceiling = result["ceiling"]
    print(f"OpenBLAS {ceiling['wheel_version']} ({ceiling['corename']}), {args.threads} threads")
    print(f"  sgemm {ceiling['sgemm_gflops']} GFLOP/s, ssyrk {ceiling['ssyrk_gflops']} GFLOP/s")
    for record in result["records"]:
        if "error" in record:
            print(f"{record['label']}: {record['error']}")
            continue
        print(f"{record['label']}: {record['seconds']:.2f} s, {record['gflops']:.1f} GFLOP/s, "
              f"{100 * record['fraction_of_ceiling']:.0f} % of the ceiling, "
              f"peak +{record['peak_extra_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
