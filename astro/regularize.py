"""Astro regularization: move a layer's weight outliers away from the input
groups that carry large activations, before quantization.

For each output row w with original w0 the C core minimizes

    1/2 (w - w0)^T Hn (w - w0) + beta * sum_k alpha_k ||w^(k)||_inf

with Hn = H / lambda_max(H), w^(k) the k-th group of ``group_size`` input
columns and alpha_k = ||X^(k)||_F / mean_i ||X^(i)||_F (mean 1 over the
groups). ``budget`` replaces beta by a bound on the relative output change
||X (W~ - W0)^T||^2 / ||X W0^T||^2 and searches beta per layer.

The default beta of 1e-4 comes from the 18 linear layers of blocks 0, 3 and
5 of all-MiniLM-L6-v2, with activations from 15k tokens of Wikipedia text.
The table gives the output error of GPTQ after regularization relative to
GPTQ alone (geometric mean over the layers), measured with a float64 NumPy
model of this solver and of GPTQ:

    beta        3e-5   1e-4   3e-4   1e-3   3e-3     (60 FISTA steps)
    W3 g128     0.956  0.895  0.835  0.928  1.524
    W2 g64      0.958  0.888  0.794  0.734  0.937

Up to 3e-4 every layer improved at both settings; from 1e-3 on, some layers
got worse than GPTQ alone at W3 g128. The optimum scales with the weights,
because the penalty is linear in w and the data term quadratic: MiniLM's
weights have a standard deviation of 0.04 to 0.09. 1e-4 sits a factor 10
below the first failures, and within a factor 3 of the 3e-5 to 5e-5 reported
as best for LLaMA-2-7B at W3 g128 (under the same normalization; not
reproduced here).
On the whole SmolLM2-135M model, a search on validation articles
(``astro.select_beta``) chose 3.16e-4 over 1e-4 at W4 g128, W3 g128 and W2
g64, for both GPTQ and RTN after Astro (benchmarks/RESULTS.md), so 1e-4 is a
conservative default and ``select_beta`` tunes it per model.
Solving further helps at that beta: with 200 FISTA steps the W3 g128 ratio
is 0.835 (W2 g64: 0.800), with 100 it is 0.850, against 0.941 for the
paper's 200 plain steps, whose objective FISTA reaches in about 36 steps.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _core
from ._arrays import as_weight, check_group_size, check_positive_float
from .hessian import Hessian, as_hessian

logger = logging.getLogger("astro")

DEFAULT_BETA = 1e-4
DEFAULT_GROUP_SIZE = 128
# Steps when `iterations` is None: the Astro paper's 200 for the plain
# method; 100 for FISTA, which on the MiniLM layers keeps most of the gain of
# 200 FISTA steps (W3 g128 ratio 0.850 against 0.835) at half the GEMMs.
DEFAULT_ITERATIONS = {"plain": 200, "fista": 100}
# Relative objective decrease per step below which the solver stops. On
# real layers FISTA still lowers the objective by more than this after 200
# steps, so it only ends runs that have stalled.
DEFAULT_TOL = 1e-6
DEFAULT_POWER_ITERATIONS = 200

SOLVERS = {"plain": 0, "fista": 1}
STOP_REASONS = ("max_iterations", "tolerance", "zero_beta", "zero_hessian")

# Budget search: bracket expansion factor, accepted shortfall and solve limit.
_BUDGET_GROWTH = 10.0
_BUDGET_RTOL = 0.1
_BUDGET_MAX_SOLVES = 16
_BUDGET_MAX_BETA = 1e3


def regularize(
    W: Any,
    X_or_Hessian: Any,
    beta: Optional[float] = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    iterations: Optional[int] = None,
    solver: str = "fista",
    tol: Optional[float] = None,
    uniform_alpha: bool = False,
    budget: Optional[float] = None,
    record_objective: bool = False,
    power_iterations: int = DEFAULT_POWER_ITERATIONS,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Regularize W (out, in) under the inputs X (or an astro.Hessian).

    beta: penalty weight for H / lambda_max(H); 1e-4 when None.
    group_size: input columns per group, as the quantizer uses; -1 for rows.
    iterations: proximal steps at most, one GEMM each; when None, 100 for
        "fista" and 200 for "plain".
    solver: "fista" (accelerated with adaptive restart) or "plain" (the
        proximal gradient method of the Astro paper).
    tol: stop when a step lowers the objective by less than tol times its
        value; 0 disables; 1e-6 when None.
    uniform_alpha: True gives every group alpha_k = 1 (the MagR variant).
    budget: instead of beta, the largest relative output change
        ||X (W~ - W0)^T||^2 / ||X W0^T||^2 allowed; beta is then searched per
        layer (starting from `beta`) and the largest feasible one found is
        used.
    record_objective: store the objective after every step in the stats.

    Returns (W~ float32 (out, in), stats). stats contains iterations (GEMMs of
    the final solve), stop_reason, beta, lambda_max, objective_initial,
    objective_final, output_change, alpha (groups,), group_max_before and
    group_max_after (groups,: max |w| of each group averaged over rows),
    seconds, objective (when recorded) and, in budget mode, budget, solves
    and gemms (all solves together).
    """
    started = time.perf_counter()
    w = as_weight(W)
    out, in_ = w.shape
    hessian = as_hessian(X_or_Hessian, in_)
    h = hessian.matrix

    group_size = check_group_size(group_size, in_)
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is invalid; use 'fista' or 'plain'")
    iterations = _check_count(
        DEFAULT_ITERATIONS[solver] if iterations is None else iterations, "iterations", 0)
    power_iterations = _check_count(power_iterations, "power_iterations", 1)
    tol = check_positive_float(DEFAULT_TOL if tol is None else tol, "tol")
    beta = check_positive_float(DEFAULT_BETA if beta is None else beta, "beta")

    def solve(beta_value: float):
        return _core.regularize(
            w, h, beta_value, group_size, bool(uniform_alpha), iterations,
            SOLVERS[solver], tol, power_iterations, bool(record_objective),
        )

    if budget is None:
        result, search = solve(beta), {"beta": beta}
    else:
        budget = check_positive_float(budget, "budget")
        if budget == 0.0:
            # Only beta = 0 changes no output at all.
            result = solve(0.0)
            search = {"budget": budget, "beta": 0.0, "solves": 1, "gemms": 1}
        else:
            start = beta if beta > 0.0 else DEFAULT_BETA
            result, search = _search_beta(solve, start, budget)

    w_reg, alpha, objective, core_stats = result
    stats = _collect_stats(w, w_reg, alpha, objective, core_stats, group_size)
    stats.update(search)
    stats["seconds"] = time.perf_counter() - started
    return w_reg, stats


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or value > 2**31 - 2:
        raise ValueError(f"{name} must be an int in [{minimum}, 2**31 - 2], got {value}")
    return int(value)


def _search_beta(solve, beta: float, budget: float):
    """Find the largest beta whose output change stays within the budget.

    The output change grows with beta, roughly as beta^2 on real layers, so
    the search works on log(beta) and log(change). It brackets the budget by
    factors of 10. Then it narrows the bracket by false position with the
    Illinois modification, which halves the weight of an end that stays put
    and needs few solves on such a curve. It stops once the feasible end
    is within 10 % of the budget or after 16 solves, and returns the result
    of the feasible end (beta = 0, the weights unchanged, if none is).
    """
    solves = 0
    gemms = 0

    def run(beta_value: float):
        nonlocal solves, gemms
        result = solve(beta_value)
        solves += 1
        gemms += result[3]["iterations"] + 1
        return result

    def change(result) -> float:
        return result[3]["output_change"]

    # 1. Bracket: lo is feasible (change <= budget), hi is not.
    lo = hi = None
    current = run(beta)
    if change(current) <= budget:
        lo = (beta, current)
        while hi is None and solves < _BUDGET_MAX_SOLVES:
            step = lo[0] * _BUDGET_GROWTH
            if step > _BUDGET_MAX_BETA:
                break
            trial = run(step)
            if change(trial) <= budget:
                lo = (step, trial)
            else:
                hi = (step, trial)
    else:
        hi = (beta, current)
        while lo is None and solves < _BUDGET_MAX_SOLVES:
            step = hi[0] / _BUDGET_GROWTH
            trial = run(step)
            if change(trial) <= budget:
                lo = (step, trial)
            else:
                hi = (step, trial)
    if lo is None:
        lo = (0.0, run(0.0))

    # 2. Narrow the bracket on the log-log curve.
    def residual(point) -> float:
        value = change(point[1])
        return math.log(max(value, 1e-300) / budget)

    weight_lo = weight_hi = 1.0
    last_moved = None
    while (hi is not None and lo[0] > 0.0 and solves < _BUDGET_MAX_SOLVES
           and change(lo[1]) < (1.0 - _BUDGET_RTOL) * budget):
        x_lo, x_hi = math.log(lo[0]), math.log(hi[0])
        r_lo, r_hi = residual(lo) * weight_lo, residual(hi) * weight_hi
        x = x_lo - r_lo * (x_hi - x_lo) / (r_hi - r_lo) if r_hi != r_lo else 0.5 * (x_lo + x_hi)
        if not x_lo < x < x_hi:
            x = 0.5 * (x_lo + x_hi)
        step = math.exp(x)
        trial = run(step)
        if change(trial) <= budget:
            lo, moved = (step, trial), "lo"
        else:
            hi, moved = (step, trial), "hi"
        weight_lo = weight_hi = 1.0
        if moved == last_moved:  # Illinois: damp the end that stays put
            if moved == "lo":
                weight_hi = 0.5
            else:
                weight_lo = 0.5
        last_moved = moved

    if hi is None:
        logger.info("budget %g not reached up to beta=%g; using that beta", budget, lo[0])
    return lo[1], {"budget": budget, "beta": lo[0], "solves": solves, "gemms": gemms}


def _group_max(w: np.ndarray, group_size: int) -> np.ndarray:
    """Return max |w| of each group, averaged over rows, shape (groups,)."""
    out, in_ = w.shape
    size = in_ if group_size == -1 else group_size
    peaks = [np.abs(w[:, start:start + size]).max(axis=1) for start in range(0, in_, size)]
    return np.stack(peaks, axis=1).mean(axis=0)


def _collect_stats(w0, w_reg, alpha, objective, core_stats, group_size) -> Dict[str, Any]:
    stats: Dict[str, Any] = dict(core_stats)
    stats["stop_reason"] = STOP_REASONS[core_stats["stop_reason"]]
    stats["alpha"] = alpha
    stats["group_max_before"] = _group_max(w0, group_size)
    stats["group_max_after"] = _group_max(w_reg, group_size)
    if objective is not None:
        stats["objective"] = objective[: core_stats["iterations"] + 1]
    return stats
