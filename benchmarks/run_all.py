"""Run the benchmark suite and write benchmarks/RESULTS.md with PNG plots.

    python benchmarks/run_all.py --quick     # CI-sized, a few minutes
    python benchmarks/run_all.py --full      # the whole grid, about 20 minutes idle

Run it with an interpreter that can import the peers (``pip install
.[bench]``, ideally in a separate virtual environment). Peers that fail to
import are reported as absent and skipped. Every measurement runs in a fresh
worker process (see bench_layer.py). Raw records go to
``benchmarks/out/results-<mode>.json``; ``--render FILE`` rewrites the page
from such a file without measuring again.

RESULTS.md keeps text outside the markers ``<!-- layer-benchmarks:begin -->``
and ``<!-- layer-benchmarks:end -->``, so sections written by other
benchmarks (solver convergence, model level) survive a rerun.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_layer  # noqa: E402
from bench_layer import Spec  # noqa: E402

BENCH_DIR = bench_layer.BENCH_DIR
BEGIN_MARK = "<!-- layer-benchmarks:begin -->"
END_MARK = "<!-- layer-benchmarks:end -->"

TASKS = ("gptq", "rtn", "astro", "hessian")
SQUARE_QUICK = (512, 1024, 2048)
SQUARE_FULL = (512, 1024, 2048, 4096, 8192)
# LLaMA-7B MLP projections as (out, in): up/gate 11008 x 4096, down 4096 x 11008.
RECTANGULAR = ((11008, 4096), (4096, 11008))
TOKENS_QUICK = (2048, 32768)
TOKENS_FULL = (2048, 32768, 262144)

# Per-case limits that keep --full near 20 minutes on a 2-core machine:
# Hessian feeds stop after this many seconds and are scaled to the full token
# count, and Astro runs as many iterations as fit in the Astro budget.
HESSIAN_CAP = {"quick": 3.0, "full": 4.0}
ASTRO_SECONDS = {"quick": 3.0, "full": 15.0}
ASTRO_MAX_ITERATIONS = 20


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------


def machine_description() -> dict:
    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as meminfo:
            memory_gib = int(meminfo.readline().split()[1]) / 2 ** 20
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": memory_gib,
            "kernel": platform.release()}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(bench_layer.REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "-C", str(bench_layer.REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no", "csrc", "astro"],
                               capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "unknown"
    commit = out.stdout.strip() or "no commit"
    return commit + (" + uncommitted changes in csrc/ or astro/" if dirty.stdout.strip() else "")


def peer_availability() -> dict:
    available = {}
    try:
        import torch  # noqa: F401

        available["reference"] = True
    except ImportError:
        available["reference"] = False
    try:
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight  # noqa: F401

        available["llmcompressor"] = True
    except Exception:  # any import failure means the peer is absent
        available["llmcompressor"] = False
    return available


def ours_entry_points() -> dict:
    """Report which of our entry points this build has."""
    astro = bench_layer._import_astro()
    return {
        "quantize_layer": hasattr(astro, "quantize_layer"),
        "Hessian": hasattr(astro, "Hessian"),
    }


# --------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------


def plan(mode: str, threads: int, ceiling: dict, peers: dict, ours: dict,
         cache_dir: Path) -> tuple[list, list]:
    """Return (specs to run, notes on cases limited or left out)."""
    square = SQUARE_QUICK if mode == "quick" else SQUARE_FULL
    shapes = [(n, n) for n in square]
    if mode == "full":
        shapes += list(RECTANGULAR)
    tokens_grid = TOKENS_QUICK if mode == "quick" else TOKENS_FULL
    notes = []

    ours_gptq = "astro" if ours["quantize_layer"] and ours["Hessian"] else "astro_core"
    ours_hessian = "astro" if ours["Hessian"] else "astro_core"
    if ours_gptq == "astro_core":
        notes.append("astro.quantize_layer was not available: our GPTQ and RTN were "
                     "timed through the binding astro._core directly.")

    specs = []
    for out, inp in shapes:
        repeats = 3 if out * inp <= 2048 * 2048 else 1
        common = dict(out=out, inp=inp, threads=threads, repeats=repeats,
                      cache_dir=str(cache_dir))
        specs.append(Spec("gptq", ours_gptq, **common))
        specs.append(Spec("gptq", ours_gptq, static_groups=True, **common))
        if peers["reference"]:
            specs.append(Spec("gptq", "reference", **common))
        if peers["llmcompressor"]:
            specs.append(Spec("gptq", "llmcompressor", static_groups=True, **common))
        specs.append(Spec("rtn", ours_gptq, **common))
        if peers["reference"]:
            specs.append(Spec("rtn", "reference", **common))

        rate = bench_layer.ceiling_rate(ceiling["sgemm_gflops"], inp) * 1e9
        per_iteration = bench_layer.astro_iteration_flops(out, inp) / rate
        iterations = int(max(1, min(ASTRO_MAX_ITERATIONS, ASTRO_SECONDS[mode] / per_iteration)))
        astro_common = dict(common, iterations=iterations, repeats=1)
        specs.append(Spec("astro", "astro_core", **astro_common))
        if peers["reference"]:
            specs.append(Spec("astro", "reference", **astro_common))

    hessian_sizes = sorted({inp for _, inp in shapes})
    for inp in hessian_sizes:
        for tokens in tokens_grid:
            common = dict(out=0, inp=inp, tokens=tokens, threads=threads,
                          time_cap=HESSIAN_CAP[mode], cache_dir=str(cache_dir))
            specs.append(Spec("hessian", ours_hessian, **common))
            if peers["reference"]:
                specs.append(Spec("hessian", "reference", **common))
            if peers["llmcompressor"]:
                specs.append(Spec("hessian", "llmcompressor", **common))
    if mode == "quick":
        notes.append("Quick mode: square layers up to 2048 only, tokens up to 32768.")
    notes.append(f"Hessian accumulation stops feeding batches after {HESSIAN_CAP[mode]:.0f} s "
                 "and scales the time linearly to the full token count (every batch costs "
                 "the same); such rows are marked with *.")
    notes.append(f"Astro runs as many plain iterations as fit in about {ASTRO_SECONDS[mode]:.0f} s "
                 f"(1 to {ASTRO_MAX_ITERATIONS}); the table reports seconds per iteration.")
    return specs, notes


# --------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------


def load_average() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run(mode: str, threads: int, out_dir: Path, tasks: tuple = TASKS) -> dict:
    started = time.time()
    environment = {
        "mode": mode,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], bench_layer.REPO_ROOT)] + sys.argv[1:]),
        "interpreter": sys.executable,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine_description(),
        "threads": threads,
        "load_average_start": load_average(),
        "commit": git_commit(),
        "versions": bench_layer.versions(),
    }
    try:
        import torch

        environment["torch_blas"] = ("MKL" if torch.backends.mkl.is_available() else "not MKL")
    except ImportError:
        pass
    peers = peer_availability()
    ours = ours_entry_points()
    environment["peers"] = peers
    environment["ours"] = ours

    print(f"measuring the OpenBLAS ceiling with {threads} threads", flush=True)
    ceiling = measure_ceiling_subprocess(threads, mode)
    specs, notes = plan(mode, threads, ceiling, peers, ours, out_dir / "cache")
    specs = [spec for spec in specs if spec.task in tasks]
    if tuple(tasks) != TASKS:
        notes.append(f"Tasks measured by this command: {', '.join(tasks)}.")
    records = []
    for index, spec in enumerate(specs, 1):
        case_start = time.time()
        load = load_average()
        record = bench_layer.run_in_subprocess(spec)
        record["load_average"] = load
        record["wall_seconds"] = time.time() - case_start
        records.append(record)
        status = record.get("error") or f"{record['seconds']:.3f} s"
        print(f"[{index}/{len(specs)}] {spec.label()}: {status}", flush=True)
    environment["load_average_end"] = load_average()
    environment["total_minutes"] = (time.time() - started) / 60
    result = {"environment": environment, "ceiling": ceiling, "records": records, "notes": notes}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"results-{mode}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"raw records written to {path}")
    return result


def measure_ceiling_subprocess(threads: int, mode: str) -> dict:
    """Measure the OpenBLAS rates in a worker with the thread variables set."""
    sizes = "(512, 1024, 2048)" if mode == "quick" else "(512, 1024, 2048, 4096)"
    code = ("import json, sys; sys.path.insert(0, %r); import bench_layer; "
            "print(json.dumps(bench_layer.measure_ceiling(%d, sizes=%s)))"
            % (str(BENCH_DIR), threads, sizes))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env=bench_layer.thread_environment(threads), check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def index_records(records: list) -> dict:
    table = {}
    for record in records:
        spec = record["spec"]
        key = (spec["task"], spec["impl"], spec["out"], spec["inp"], spec["tokens"],
               spec["static_groups"])
        table[key] = record
    return table


IMPL_NAMES = {
    "astro": "astro (ours)",
    "astro_core": "astro._core (ours)",
    "reference": "PyTorch reference",
    "llmcompressor": "llm-compressor",
}


def _fmt_seconds(value: float) -> str:
    if value < 0.01:
        return f"{value * 1000:.2f} ms"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _fmt(value, digits=2, suffix=""):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def _sgemm_rate(record: dict, ceiling: dict, inp: int) -> float:
    """sgemm rate measured in the worker just before the case, else the global one."""
    return record.get("local_sgemm_gflops") or bench_layer.ceiling_rate(ceiling["sgemm_gflops"], inp)


def _ssyrk_rate(record: dict, ceiling: dict, inp: int) -> float:
    return record.get("local_ssyrk_gflops") or bench_layer.ceiling_rate(ceiling["ssyrk_gflops"], inp)


def _fraction(record: dict, kind: str, wall_ceiling: float) -> str:
    """Format the rate as a percentage of the ceiling, by wall time and by CPU time.

    The CPU-time figure divides flops per CPU second by the ceiling's flops per
    CPU second, both measured in the same worker. With one thread it is immune
    to other processes sharing the core.
    """
    wall = record["flops"] / record["seconds"] / 1e9 / wall_ceiling
    text = f"{100 * wall:.0f} %"
    cpu_ceiling = record.get(f"local_{kind}_cpu_gflops")
    if cpu_ceiling and record.get("cpu_seconds"):
        cpu = record["flops"] / record["cpu_seconds"] / 1e9 / cpu_ceiling
        text += f" ({100 * cpu:.0f} %)"
    return text


def _judged_fraction(record: dict, kind: str, wall_ceiling: float, threads: int) -> float:
    """Fraction of the ceiling used to judge a target.

    With one thread the CPU-time ratio is used, because it measures the work
    done whatever else runs on the machine; with more threads, wall time.
    """
    cpu_ceiling = record.get(f"local_{kind}_cpu_gflops")
    if threads == 1 and cpu_ceiling and record.get("cpu_seconds"):
        return record["flops"] / record["cpu_seconds"] / 1e9 / cpu_ceiling
    return record["flops"] / record["seconds"] / 1e9 / wall_ceiling


def _ok(record) -> bool:
    return record is not None and "error" not in record


def gptq_section(result: dict, table: dict) -> list:
    ceiling = result["ceiling"]
    lines = ["### GPTQ with the Hessian given",
             "",
             "4-bit asymmetric, group size 128, block 128, damp 0.01, no act-order. "
             "Dynamic groups take each group's scale at its first column from the updated "
             "weights; static groups take all scales from the original weights (what "
             "llm-compressor does, so it is compared with our static run). "
             "GFLOP/s counts `out*in^2 + 2/3*in^3`; % sgemm divides it by the sgemm rate "
             "measured in the same worker just before the case (n = min(in, 2048)), so both "
             "see the same machine load; in brackets the same ratio by CPU time, which "
             "other processes cannot inflate when one thread is used. CPU is the "
             "process's user+system time. Peak is the resident memory added "
             "during the call, and `x(W+H)` adds the inputs to it, in units of the float32 "
             "size of W plus H. Error is the relative output error "
             "`tr(D H D^T) / tr(W H W^T)` on the same rows for every implementation.",
             "",
             "| out x in | implementation | groups | time | CPU | GFLOP/s | % sgemm | peak MiB | x(W+H) | output error | ours faster by |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, record in sorted(table.items(), key=lambda item: (item[0][2] * item[0][3], item[0][3], item[0][5], item[0][1])):
        task, impl, out, inp, _, static = key
        if task != "gptq":
            continue
        if not _ok(record):
            lines.append(f"| {out} x {inp} | {IMPL_NAMES[impl]} | {'static' if static else 'dynamic'} | failed: {record['error'][:80]} |||||||| ")
            continue
        rate = record["flops"] / record["seconds"] / 1e9
        sgemm = _sgemm_rate(record, ceiling, inp)
        total = (record["peak_extra_mib"] + record["inputs_mib"]) / record["inputs_mib"]
        speedup = "" if impl.startswith("astro") else _speedup(record, _ours(table, "gptq", out, inp, 0, static))
        lines.append(
            f"| {out} x {inp} | {IMPL_NAMES[impl]} | {'static' if static else 'dynamic'} | "
            f"{_fmt_seconds(record['seconds'])} | {_fmt_seconds(record['cpu_seconds'])} | "
            f"{rate:.1f} | {_fraction(record, 'sgemm', sgemm)} | "
            f"{record['peak_extra_mib']:.0f} | {total:.2f} | {record['output_error']:.5f} | {speedup} |")
    return lines


def _speedup(record: dict, ours) -> str:
    """Peer time over our time, or an empty cell when ours is missing or failed."""
    if not _ok(ours):
        return ""
    text = f"{record['seconds'] / ours['seconds']:.1f}x"
    if record.get("cpu_seconds") and ours.get("cpu_seconds"):
        text += f" ({record['cpu_seconds'] / ours['cpu_seconds']:.1f}x)"
    return text


def _ours(table, task, out, inp, tokens, static=False):
    for impl in ("astro", "astro_core"):
        record = table.get((task, impl, out, inp, tokens, static))
        if record is not None:
            return record
    return None


def rtn_section(table: dict) -> list:
    lines = ["### RTN",
             "",
             "Same quantizer settings; the PyTorch reference runs the reference quantizer "
             "group by group.",
             "",
             "| out x in | implementation | time | peak MiB | output error | ours faster by |",
             "|---|---|---|---|---|---|"]
    for key, record in sorted(table.items(), key=lambda item: (item[0][2] * item[0][3], item[0][3], item[0][1])):
        task, impl, out, inp, _, _ = key
        if task != "rtn":
            continue
        if not _ok(record):
            lines.append(f"| {out} x {inp} | {IMPL_NAMES[impl]} | failed: {record['error'][:80]} ||||")
            continue
        speedup = "" if impl.startswith("astro") else _speedup(record, _ours(table, "rtn", out, inp, 0))
        lines.append(f"| {out} x {inp} | {IMPL_NAMES[impl]} | {_fmt_seconds(record['seconds'])} | "
                     f"{record['peak_extra_mib']:.0f} | {record['output_error']:.5f} | {speedup} |")
    return lines


def astro_section(result: dict, table: dict) -> list:
    ceiling = result["ceiling"]
    lines = ["### Astro, plain proximal-gradient iterations",
             "",
             f"beta = {bench_layer.ASTRO_BETA:g} (normalized Hessian), group size 128, "
             f"{bench_layer.POWER_ITERATIONS} power iterations for lambda_max, both "
             "implementations from W0 with the same iteration count. One iteration is one "
             "GEMM of `2*out*in^2` flops; the time includes the power iterations, setup and "
             "final statistics (ours computes the output change, two more GEMMs), so runs "
             "of one or two iterations understate the per-iteration rate. "
             "The objective (on the error rows) is evaluated with one common lambda_max and "
             "alpha for both, so equal numbers mean the same iterates. % sgemm as in the GPTQ table.",
             "",
             "| out x in | implementation | iterations | time / iteration | GFLOP/s | % sgemm | peak MiB | objective (start -> end) | ours faster by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, record in sorted(table.items(), key=lambda item: (item[0][2] * item[0][3], item[0][3], item[0][1])):
        task, impl, out, inp, _, _ = key
        if task != "astro":
            continue
        iterations = record["spec"]["iterations"]
        if not _ok(record):
            lines.append(f"| {out} x {inp} | {IMPL_NAMES[impl]} | {iterations} | failed: {record['error'][:80]} ||||||")
            continue
        rate = record["flops"] / record["seconds"] / 1e9
        sgemm = _sgemm_rate(record, ceiling, inp)
        speedup = "" if impl.startswith("astro") else _speedup(record, table.get(("astro", "astro_core", out, inp, 0, False)))
        lines.append(
            f"| {out} x {inp} | {IMPL_NAMES[impl]} | {iterations} | "
            f"{_fmt_seconds(record['seconds_per_iteration'])} | {rate:.1f} | {_fraction(record, 'sgemm', sgemm)} | "
            f"{record['peak_extra_mib']:.0f} | {record['objective_initial']:.6g} -> {record['objective']:.6g} | {speedup} |")
    return lines


def hessian_section(result: dict, table: dict) -> list:
    ceiling = result["ceiling"]
    lines = ["### Hessian accumulation",
             "",
             f"Batches of {bench_layer.CHUNK_TOKENS} tokens (float32). GFLOP/s counts "
             "`tokens*in^2`, what ssyrk does; the reference and llm-compressor do a full "
             "GEMM, twice the arithmetic, as their code does. The ssyrk ceiling is measured "
             f"on {ceiling['syrk_tokens']}-token batches. Deviation is the largest relative "
             "difference of a 256 x 256 block of H (normalized by its trace) from a float64 "
             "computation. % ssyrk divides by the ssyrk rate on the same batch measured in the "
             "same worker just before. * = time scaled from the tokens actually fed.",
             "",
             "| in | tokens | implementation | time | GFLOP/s | % ssyrk | peak MiB | deviation | ours faster by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, record in sorted(table.items(), key=lambda item: (item[0][3], item[0][4], item[0][1])):
        task, impl, _, inp, tokens, _ = key
        if task != "hessian":
            continue
        if not _ok(record):
            lines.append(f"| {inp} | {tokens} | {IMPL_NAMES[impl]} | failed: {record['error'][:80]} ||||||")
            continue
        rate = record["flops"] / record["seconds"] / 1e9
        ssyrk = _ssyrk_rate(record, ceiling, inp)
        mark = "*" if record["extrapolated"] else ""
        speedup = "" if impl.startswith("astro") else _speedup(record, _ours(table, "hessian", 0, inp, tokens))
        lines.append(
            f"| {inp} | {tokens} | {IMPL_NAMES[impl]} | {_fmt_seconds(record['seconds'])}{mark} | "
            f"{rate:.1f} | {_fraction(record, 'ssyrk', ssyrk)} | {record['peak_extra_mib']:.0f} | "
            f"{record['max_relative_deviation']:.1e} | {speedup} |")
    return lines


def targets_section(result: dict, table: dict) -> list:
    """Check the performance targets against the 4096 x 4096 (or largest) case."""
    ceiling = result["ceiling"]
    threads = result["environment"]["threads"]
    square = sorted(key[3] for key in table if key[0] == "gptq" and key[2] == key[3])
    size = None
    if 4096 in square:
        size = 4096
    elif square:
        size = square[-1]
    lines = ["### Targets", ""]
    if size is None:
        return lines + ["No GPTQ case ran."]
    lines += [f"Measured on the {size} x {size} layer (4096 x 4096 is the target's size"
              + ("" if size == 4096 else "; this run did not include it") + "). "
              "Percentages are by wall time, in brackets by CPU time; ratios likewise. "
              + ("With one thread, \"met\" judges the CPU-time figures, which other "
                 "processes on the machine cannot inflate." if threads == 1 else
                 "\"Met\" judges the wall-time figures."), "",
              "| target | measured | met |", "|---|---|---|"]
    ours = _ours(table, "gptq", size, size, 0)
    if _ok(ours):
        fraction = _judged_fraction(ours, "sgemm", _sgemm_rate(ours, ceiling, size), threads)
        lines.append(f"| GPTQ >= 50 % of sgemm | {_fraction(ours, 'sgemm', _sgemm_rate(ours, ceiling, size))} | {'yes' if fraction >= 0.5 else 'no'} |")
        for peer, static in (("reference", False), ("llmcompressor", True)):
            record = table.get(("gptq", peer, size, size, 0, static))
            mine = _ours(table, "gptq", size, size, 0, static)
            if _ok(record) and _ok(mine):
                ratio = record["seconds"] / mine["seconds"]
                if threads == 1 and record.get("cpu_seconds") and mine.get("cpu_seconds"):
                    ratio = record["cpu_seconds"] / mine["cpu_seconds"]
                lines.append(f"| GPTQ >= 5x faster than {IMPL_NAMES[peer]} | {_speedup(record, mine)} | {'yes' if ratio >= 5 else 'no'} |")
        total = (ours["peak_extra_mib"] + ours["inputs_mib"]) / ours["inputs_mib"]
        lines.append(f"| GPTQ peak memory <= 3 x (W + H), inputs included | {total:.2f} x | {'yes' if total <= 3 else 'no'} |")

    tokens = max((key[4] for key in table if key[0] == "hessian" and key[3] == size), default=None)
    hessian = _ours(table, "hessian", 0, size, tokens) if tokens else None
    if _ok(hessian):
        fraction = _judged_fraction(hessian, "ssyrk", _ssyrk_rate(hessian, ceiling, size), threads)
        lines.append(f"| H accumulation >= 80 % of ssyrk ({tokens} tokens) | {_fraction(hessian, 'ssyrk', _ssyrk_rate(hessian, ceiling, size))} | {'yes' if fraction >= 0.8 else 'no'} |")
    astro = table.get(("astro", "astro_core", size, size, 0, False))
    if _ok(astro):
        fraction = _judged_fraction(astro, "sgemm", _sgemm_rate(astro, ceiling, size), threads)
        lines.append(f"| Astro iteration >= 80 % of sgemm | {_fraction(astro, 'sgemm', _sgemm_rate(astro, ceiling, size))} | {'yes' if fraction >= 0.8 else 'no'} |")
    lines.append("| Astro reaches the 200-iteration objective in <= 1/3 of the GEMMs | see the solver section (bench_astro.py) | |")
    return lines


def environment_section(result: dict) -> list:
    env = result["environment"]
    ceiling = result["ceiling"]
    machine = env["machine"]
    versions = env["versions"]
    peer_versions = ", ".join(f"{name} {versions[name]}" for name in
                              ("torch", "llmcompressor", "compressed_tensors") if name in versions)
    sgemm = ", ".join(f"{size}: {rate:.0f}" for size, rate in ceiling["sgemm_gflops"].items())
    ssyrk = ", ".join(f"{size}: {rate:.0f}" for size, rate in ceiling["ssyrk_gflops"].items())
    lines = [
        f"- Command: `{env['command']}` ({env['mode']} mode, {env['total_minutes']:.1f} min), "
        f"run on {env['date']} at commit {env['commit']}.",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{_fmt(machine['memory_gib'], 0)} GiB, Linux {machine['kernel']}. "
        f"Load average (1, 5, 15 min) at start {env['load_average_start']}, "
        f"at end {env['load_average_end']}; the machine was "
        + ("shared with other work, so times are noisy."
           if env['load_average_start'] and env['load_average_start'][0] > 0.5 * machine['cores']
           else "otherwise idle at the start."),
        f"- Threads: {env['threads']} for everything (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, "
        "MKL_NUM_THREADS, torch.set_num_threads, astro's set_num_threads).",
        f"- Ceiling: OpenBLAS {ceiling['wheel_version']} from the scipy-openblas32 wheel our "
        f"package links, called through ctypes ({ceiling['corename']} kernels). "
        f"sgemm n x n x n GFLOP/s by n: {sgemm}; ssyrk GFLOP/s by n: {ssyrk}.",
        f"- Versions: Python {versions['python']}, NumPy {versions['numpy']}, {peer_versions}"
        + (f" (torch BLAS: {env['torch_blas']})" if "torch_blas" in env else "") + ".",
        "- Peers: `PyTorch reference` is our transcription of the reference GPTQ "
        "(`GPTQ.fasterquant`, `add_batch`, `Quantizer`) and of the plain Astro/MagR "
        "iteration, in benchmarks/peers.py; `llm-compressor` is "
        "`llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight` on CPU with its "
        "memoryless min-max weight observer, and `accumulate_hessian` for H.",
        "- Inputs: synthetic, seeded: Student-t weights, activations with log-normal "
        f"channel scales and outlier channels; H from {bench_layer.HESSIAN_TOKENS} tokens. "
        f"Errors use up to {bench_layer.ERROR_ROWS} evenly spaced rows.",
    ]
    builds = sorted({record["core_build"] for record in result["records"]
                     if record["spec"]["impl"].startswith("astro") and "core_build" in record})
    if len(builds) > 1:
        lines.append(f"- The extension was rebuilt during the run: our records come from "
                     f"{len(builds)} builds ({', '.join(builds)}, SHA-256 prefixes).")
    absent = [IMPL_NAMES[name] for name, ok in env["peers"].items() if not ok]
    if absent:
        lines.append(f"- Not measured (failed to import): {', '.join(absent)}.")
    for note in result["notes"]:
        lines.append(f"- {note}")
    return lines


def plots(result: dict, table: dict, out_dir: Path) -> list:
    """Write the scaling plots next to RESULTS.md; return their file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = []

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (impl, static), style in ((("astro", False), "o-"), (("astro_core", False), "o-"),
                                  (("astro", True), "o--"), (("astro_core", True), "o--"),
                                  (("reference", False), "s-"), (("llmcompressor", True), "^--")):
        points = sorted((key[3], record) for key, record in table.items()
                        if key[0] == "gptq" and key[1] == impl and key[5] == static
                        and key[2] == key[3] and _ok(record))
        if not points:
            continue
        label = IMPL_NAMES[impl] + (", static groups" if static else "")
        sizes = [size for size, _ in points]
        axes[0].loglog(sizes, [r["seconds"] for _, r in points], style, label=label, base=2)
        axes[1].semilogx(sizes, [r["flops"] / r["seconds"] / 1e9 for _, r in points], style,
                         label=label, base=2)
    ceiling = result["ceiling"]["sgemm_gflops"]
    axes[1].semilogx([int(k) for k in ceiling], list(ceiling.values()), "k:", label="OpenBLAS sgemm", base=2)
    axes[0].set(xlabel="in = out", ylabel="seconds", title="GPTQ, H given")
    axes[1].set(xlabel="in = out", ylabel="GFLOP/s (out*in^2 + 2/3 in^3)", title="GPTQ rate")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "gptq_scaling.png", dpi=110)
    plt.close(figure)
    names.append("gptq_scaling.png")

    figure, axis = plt.subplots(figsize=(6, 4.2))
    tokens_values = sorted({key[4] for key in table if key[0] == "hessian"})
    for impl, style in (("astro", "o-"), ("astro_core", "o-"), ("reference", "s-"), ("llmcompressor", "^--")):
        for tokens in tokens_values[-1:]:
            points = sorted((key[3], record) for key, record in table.items()
                            if key[0] == "hessian" and key[1] == impl and key[4] == tokens and _ok(record))
            if points:
                axis.semilogx([p for p, _ in points],
                              [r["flops"] / r["seconds"] / 1e9 for _, r in points], style,
                              label=f"{IMPL_NAMES[impl]}, {tokens} tokens", base=2)
    ceiling = result["ceiling"]["ssyrk_gflops"]
    axis.semilogx([int(k) for k in ceiling], list(ceiling.values()), "k:", label="OpenBLAS ssyrk", base=2)
    axis.set(xlabel="in", ylabel="GFLOP/s (tokens*in^2)", title="Hessian accumulation")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "hessian_scaling.png", dpi=110)
    plt.close(figure)
    names.append("hessian_scaling.png")
    return names


def render(result: dict, results_path: Path) -> None:
    table = index_records(result["records"])
    plot_names = plots(result, table, results_path.parent)
    body = [BEGIN_MARK,
            "## Layer benchmarks",
            "",
            "Generated by `benchmarks/run_all.py`; rerun that command to reproduce. "
            "Ratios (\"ours faster by\") are peer time over our time on the same inputs, "
            "threads and machine.",
            ""]
    body += environment_section(result) + [""]
    body += targets_section(result, table) + [""]
    body += gptq_section(result, table) + [""]
    body += rtn_section(table) + [""]
    body += astro_section(result, table) + [""]
    body += hessian_section(result, table) + [""]
    for name in plot_names:
        body.append(f"![{name}]({name})")
        body.append("")
    failures = [r for r in result["records"] if "error" in r]
    if failures:
        body.append("Failed cases: " + "; ".join(f"{r['label']}: {r['error'][:120]}" for r in failures))
        body.append("")
    body.append(END_MARK)

    if results_path.exists():
        text = results_path.read_text()
    else:
        text = ("# Benchmark results\n\n" + BEGIN_MARK + "\n" + END_MARK + "\n\n"
                "## Solver convergence\n\nWritten by `benchmarks/bench_astro.py`.\n\n"
                "## Model level\n\nOur GPTQ against llm-compressor's on the default model "
                "(perplexity and wall time): written by the pipeline benchmarks.\n")
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        _, tail = rest.split(END_MARK, 1)
        text = head + "\n".join(body) + tail
    else:
        text = text.rstrip() + "\n\n" + "\n".join(body) + "\n"
    results_path.write_text(text)
    print(f"wrote {results_path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the layer benchmarks and write RESULTS.md.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="CI-sized grid: square layers up to 2048, a few minutes (default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="whole grid up to 8192 and the LLaMA MLP shapes, about 20 minutes")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for every library and implementation (default 2)")
    parser.add_argument("--out", type=Path, default=bench_layer.DEFAULT_OUT_DIR,
                        help="folder for raw JSON records and cached inputs")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md",
                        help="page to write (default benchmarks/RESULTS.md)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="rewrite the page from a results JSON file without measuring")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated subset of {','.join(TASKS)} to measure (default all)")
    parser.add_argument("--merge", type=Path, metavar="JSON",
                        help="start from the records of an earlier results JSON file; "
                             "cases measured now replace the earlier ones")
    args = parser.parse_args(argv)
    tasks = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")

    if args.render:
        result = json.loads(args.render.read_text())
    else:
        result = run(args.mode or "quick", args.threads, args.out, tasks)
    if args.merge:
        result = merge_results(json.loads(args.merge.read_text()), result)
        merged_path = args.out / f"results-{result['environment']['mode']}-merged.json"
        merged_path.write_text(json.dumps(result, indent=1))
        print(f"merged records written to {merged_path}")
    render(result, args.results)
    return 0


def merge_results(earlier: dict, newer: dict) -> dict:
    """Combine two runs: newer records replace earlier ones of the same case.

    The page then shows the newer run's environment and ceiling, and a note
    names the command and date of the earlier records that were kept.
    """
    newer_keys = set(index_records(newer["records"]))
    kept = [record for key, record in index_records(earlier["records"]).items()
            if key not in newer_keys]
    merged = dict(newer)
    merged["records"] = kept + newer["records"]
    if kept:
        env = earlier["environment"]
        tasks = sorted({record["spec"]["task"] for record in kept})
        earlier_merges = [note for note in earlier.get("notes", []) if " kept from " in note]
        merged["notes"] = list(newer["notes"]) + earlier_merges + [
            f"Records of {', '.join(tasks)} kept from an earlier run: `{env['command']}` "
            f"on {env['date']} at commit {env['commit']}, {env['threads']} thread(s), "
            f"load average {env['load_average_start']}."]
    return merged


if __name__ == "__main__":
    sys.exit(main())
