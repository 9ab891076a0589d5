"""Astro solver benchmark: iteration rate against sgemm, and GEMMs and time
to reach the objective of 200 plain proximal-gradient steps.

    python benchmarks/bench_astro.py --threads 2                 # 2048 x 2048
    python benchmarks/bench_astro.py --threads 2 --size 4096 4096
    python benchmarks/bench_astro.py --threads 2 --minilm         # real layers

Figures, all in one run on the same threads:

* sgemm: the OpenBLAS library the core links (scipy-openblas32), called
  through ctypes on an (out x in) by (in x in) product, best of 5.
* Astro iteration: one plain step of ``astro._core.regularize`` (one GEMM,
  the proximal map and the objective), timed as the difference between 10
  steps and 0 steps so that the setup (power iteration, one GEMM for the
  output-change denominator) drops out, best of 3. Rate = 2 out in^2 flops
  per step.
* PyTorch: the same plain iteration written with torch (one matmul, a
  sort-based L1-ball threshold per group, a clamp) on the same threads,
  best of 3.

Every figure is a best of several runs, so that a machine shared with other
work reports its unloaded rates as closely as it can.
* GEMMs to reach the plain objective: FISTA steps until its objective is at
  or below that of 200 plain steps, from the objective the C core records.

Synthetic layers draw X with a decaying spectrum and a few large input
columns, and W with standard deviation 0.05, from a fixed seed.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BETA = 1e-4
GROUP_SIZE = 128
PLAIN_STEPS = 200


def import_astro():
    sys.path.insert(0, str(REPO_ROOT))
    import astro

    return astro


def sgemm_gflops(out: int, in_: int, repeats: int = 5) -> float:
    """Time C = A B with A (out x in), B (in x in) through scipy-openblas32."""
    import scipy_openblas32

    path = os.path.join(scipy_openblas32.get_lib_dir(),
                        scipy_openblas32.get_library(fullname=True))
    lib = ctypes.CDLL(path)
    sgemm = lib.scipy_cblas_sgemm
    rng = np.random.default_rng(0)
    a = rng.normal(size=(out, in_)).astype(np.float32)
    b = rng.normal(size=(in_, in_)).astype(np.float32)
    c = np.empty((out, in_), np.float32)
    pointer = ctypes.POINTER(ctypes.c_float)
    args = (101, 111, 111, out, in_, in_, ctypes.c_float(1.0),
            a.ctypes.data_as(pointer), in_, b.ctypes.data_as(pointer), in_,
            ctypes.c_float(0.0), c.ctypes.data_as(pointer), in_)
    sgemm(*args)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        sgemm(*args)
        best = min(best, time.perf_counter() - started)
    return 2.0 * out * in_ * in_ / best / 1e9


def synthetic_layer(out: int, in_: int, tokens: int = 4096):
    rng = np.random.default_rng(1)
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(in_))
    basis, _ = np.linalg.qr(rng.normal(size=(in_, in_)))
    x = (rng.normal(size=(tokens, in_)) * spectrum) @ basis.T
    x[:, rng.choice(in_, size=max(1, in_ // 64), replace=False)] *= 8.0
    h = (2.0 / tokens) * (x.T @ x)
    w = 0.05 * rng.normal(size=(out, in_))
    return w.astype(np.float32), h.astype(np.float32)


def minilm_layers():
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from real_layers import minilm_layers as load

    astro = import_astro()
    for name, (w, x) in load().items():
        if name.startswith("encoder.layer.") and (".3." in name or ".0." in name):
            yield name, w, astro.Hessian(w.shape[1]).update(x).matrix


def core_run(core, w, h, steps, solver):
    started = time.perf_counter()
    result = core.regularize(w, h, BETA, GROUP_SIZE, False, steps, solver, 0.0, 200, True)
    return time.perf_counter() - started, result


def torch_plain(w0, h, lam, alpha, steps, threads):
    """The plain iteration in PyTorch; returns seconds per step."""
    import torch

    torch.set_num_threads(threads)
    w0_t = torch.from_numpy(w0)
    hn = torch.from_numpy(h) / lam
    out, in_ = w0.shape
    groups = in_ // GROUP_SIZE
    tau = (BETA * torch.from_numpy(alpha[:groups])).view(1, groups, 1)
    ranks = torch.arange(1, GROUP_SIZE + 1, dtype=torch.float32)
    w = w0_t.clone()

    def step(w):
        v = (w - (w - w0_t) @ hn).view(out, groups, GROUP_SIZE)
        a = v.abs()
        u = torch.sort(a, dim=2, descending=True).values
        cumulative = u.cumsum(dim=2)
        active = (u * ranks > cumulative - tau).sum(dim=2, keepdim=True)
        mu = (cumulative.gather(2, active - 1) - tau) / active
        mu = torch.where(a.sum(dim=2, keepdim=True) <= tau, torch.zeros_like(mu), mu)
        return torch.maximum(torch.minimum(v, mu), -mu).view(out, in_)

    w = step(w)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            w = step(w)
        best = min(best, (time.perf_counter() - started) / steps)
    return best


def bench_layer(name, w, h, threads, torch_steps):
    astro = import_astro()
    core = astro._core
    out, in_ = w.shape
    flops = 2.0 * out * in_ * in_

    gemm = sgemm_gflops(out, in_)
    setup_seconds = per_step = float("inf")
    for _ in range(3):
        setup = core_run(core, w, h, 0, 0)[0]
        steps = core_run(core, w, h, 10, 0)[0]
        setup_seconds = min(setup_seconds, setup)
        per_step = min(per_step, (steps - setup) / 10)
    gemm = max(gemm, sgemm_gflops(out, in_))

    plain_seconds, (_, alpha, plain_objective, stats) = core_run(core, w, h, PLAIN_STEPS, 0)
    fista_seconds, (_, _, fista_objective, _) = core_run(core, w, h, PLAIN_STEPS, 1)
    target = plain_objective[PLAIN_STEPS]
    reached = np.nonzero(fista_objective <= target)[0]
    fista_steps = int(reached[0]) if reached.size else None

    record = {
        "layer": name, "out": out, "in": in_, "threads": threads,
        "sgemm_gflops": gemm,
        "astro_step_seconds": per_step,
        "astro_fraction_of_sgemm": flops / per_step / 1e9 / gemm,
        "plain_200_seconds": plain_seconds,
        "fista_steps_to_plain_200": fista_steps,
        "fista_gemm_fraction": None if fista_steps is None else fista_steps / PLAIN_STEPS,
        "fista_seconds_to_plain_200": None if fista_steps is None
        else setup_seconds + fista_steps * per_step,
        "fista_200_objective_vs_plain": fista_objective[PLAIN_STEPS] / target,
    }
    if torch_steps > 0 and in_ % GROUP_SIZE == 0:
        torch_step = torch_plain(w, h, stats["lambda_max"], alpha, torch_steps, threads)
        record["torch_step_seconds"] = torch_step
        record["torch_plain_200_seconds"] = PLAIN_STEPS * torch_step
        record["astro_speedup_over_torch"] = torch_step / per_step
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for OpenBLAS, OpenMP and torch")
    parser.add_argument("--size", type=int, nargs=2, default=(2048, 2048), metavar=("OUT", "IN"),
                        help="synthetic layer shape (out_features, in_features)")
    parser.add_argument("--minilm", action="store_true",
                        help="use the linear layers of MiniLM blocks 0 and 3 instead")
    parser.add_argument("--torch-steps", type=int, default=5,
                        help="PyTorch plain steps to time (0 skips PyTorch)")
    parser.add_argument("--json", type=Path, help="also write the records to this file")
    args = parser.parse_args()

    astro = import_astro()
    astro.set_num_threads(args.threads)
    if args.minilm:
        layers = list(minilm_layers())
    else:
        layers = [("synthetic", *synthetic_layer(*args.size))]

    records = []
    for name, w, h in layers:
        record = bench_layer(name, w, h, args.threads, args.torch_steps)
        records.append(record)
        torch_part = ""
        if "torch_step_seconds" in record:
            torch_part = (f"  torch step {record['torch_step_seconds'] * 1e3:.1f} ms"
                          f", Astro {record['astro_speedup_over_torch']:.1f}x faster")
        print(f"{name:40s} {record['out']}x{record['in']}  sgemm {record['sgemm_gflops']:.0f} GFLOP/s"
              f"  step {record['astro_step_seconds'] * 1e3:.1f} ms"
              f" = {record['astro_fraction_of_sgemm']:.0%} of sgemm{torch_part}"
              f"  FISTA reaches plain-200 in {record['fista_steps_to_plain_200']} GEMMs"
              f"  (FISTA-200 objective {record['fista_200_objective_vs_plain']:.3f} x plain-200)",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
