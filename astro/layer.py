"""Quantize one linear layer: quantize_layer() and its QuantizedLayer result."""
from __future__ import annotations

import html
import logging
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _core
from ._arrays import (
    as_weight,
    check_bits,
    check_group_size,
    check_positive_float,
    require_memory,
)
from .hessian import Hessian, as_hessian

logger = logging.getLogger("astro")

METHODS = ("astro", "gptq", "rtn", "astro+rtn")
CHECKPOINT_FORMATS = ("v1", "v2")


class QuantizedLayer:
    """Integer codes, scales and zero points of one quantized weight matrix.

    codes    uint8 (out, in), in [0, 2^bits - 1]
    scales   float32 (out, groups)
    zeros    float32 (out, groups), integer zero points
    g_idx    int32 (in,), the group of each input column
    stats    dict of figures from the run (errors, damping, seconds, ...)

    A weight is represented as scales[r, g] * (codes[r, c] - zeros[r, g]) with
    g = g_idx[c].
    """

    def __init__(self, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
                 g_idx: np.ndarray, bits: int, group_size: int, sym: bool,
                 method: str, stats: Optional[Dict[str, Any]] = None) -> None:
        self.codes = codes
        self.scales = scales
        self.zeros = zeros
        self.g_idx = g_idx
        self.bits = bits
        self.group_size = group_size
        self.sym = sym
        self.method = method
        self.stats: Dict[str, Any] = dict(stats or {})

    @property
    def shape(self) -> Tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def dequantize(self) -> np.ndarray:
        """Return the float32 (out, in) weights the codes represent."""
        return _core.dequantize(self.codes, self.scales, self.zeros, self.g_idx)

    def pack(self, format: str = "gptq", checkpoint_format: str = "v1") -> Dict[str, np.ndarray]:
        """Return the GPTQ checkpoint tensors of this layer.

        qweight int32 (ceil(in*bits/32), out), packed along the input;
        qzeros int32 (groups, ceil(out*bits/32)), packed along the output;
        scales float16 (groups, out); g_idx int32 (in,).
        Format "v1" stores zero - 1 (what transformers and optimum loaders
        read), "v2" stores zero. Widths that do not fill whole 32-bit words
        are padded with zero bits.
        """
        if format != "gptq":
            raise ValueError(f"format={format!r} is not supported; use 'gptq'")
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"checkpoint_format={checkpoint_format!r} is invalid; use 'v1' or 'v2'"
            )
        largest = float(np.abs(self.scales).max(initial=0.0))
        if largest > np.finfo(np.float16).max:
            raise ValueError(
                f"a scale of {largest:g} does not fit in float16, which the GPTQ "
                f"format stores; rescale the layer or use more bits"
            )
        offset = 1 if checkpoint_format == "v1" else 0
        if offset and (self.zeros == 0).any():
            # NOTE: v1 stores zero - 1, so a zero point of 0 is stored as
            # 2^bits - 1. astro.unpack_gptq reads it back exactly, but gptqmodel
            # 7.6 adds 1 to whole packed words at 2, 4 and 8 bits, so the carry
            # also corrupts the next output channel's zero point.
            logger.warning(
                "%d zero point(s) are 0, which checkpoint format v1 cannot "
                "represent for other loaders; prefer checkpoint_format='v2'",
                int((self.zeros == 0).sum()),
            )
        return {
            "qweight": _core.pack_rows(self.codes, self.bits),
            "qzeros": _core.pack_zeros(np.ascontiguousarray(self.zeros.T), self.bits, offset),
            "scales": np.ascontiguousarray(self.scales.T).astype(np.float16),
            "g_idx": self.g_idx.copy(),
        }

    def summary(self) -> str:
        out, in_ = self.shape
        error = self.stats.get("output_error")
        error_text = f"{error:.4g}" if isinstance(error, float) else "n/a"
        return (
            f"QuantizedLayer({out}x{in_}, bits={self.bits}, group_size={self.group_size}, "
            f"{'sym' if self.sym else 'asym'}, method={self.method}, "
            f"output_error={error_text})"
        )

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        rows = [
            ("shape", f"{self.out_features} x {self.in_features}"),
            ("bits", self.bits),
            ("group size", self.group_size),
            ("symmetric", self.sym),
            ("method", self.method),
        ]
        for key in ("output_error", "loss", "damp_used", "dead_columns", "seconds"):
            if key in self.stats:
                value = self.stats[key]
                rows.append((key, f"{value:.4g}" if isinstance(value, float) else value))
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows
        )
        return f"<table><caption>QuantizedLayer</caption>{cells}</table>"


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid; use one of {METHODS}")
    return method


def _layer_memory(out: int, in_: int) -> int:
    # float32 W, W^T and dequantized copies, H and its factor, two uint8 codes.
    return 4 * (3 * out * in_ + 2 * in_ * in_) + 2 * out * in_


def quantize_layer(
    W: Any,
    X: Any,
    bits: int = 4,
    group_size: int = 128,
    method: str = "astro",
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    damp: float = 0.01,
    damp_max: float = 10.0,
    mse: bool = False,
    block_size: int = 128,
    beta: Optional[float] = None,
    budget: Optional[float] = None,
    iterations: Optional[int] = None,
    uniform_alpha: bool = False,
    solver: str = "fista",
    tol: Optional[float] = None,
    compute_error: bool = True,
) -> QuantizedLayer:
    """Quantize a linear layer's weight W with calibration inputs X.

    W: (out_features, in_features), NumPy or CPU torch, any float dtype.
    X: calibration inputs (..., in_features), or an astro.Hessian.
    method: "astro" (Astro regularization, then GPTQ), "gptq", "rtn", or
    "astro+rtn". beta, budget, iterations, uniform_alpha, solver and tol
    tune the Astro step (see astro.regularize). group_size=-1 quantizes each
    row as one group; a group size that does not divide in_features leaves a
    shorter last group. Returns a QuantizedLayer.
    """
    started = time.perf_counter()
    method = _check_method(method)
    w = as_weight(W)
    out, in_ = w.shape
    bits = check_bits(bits)
    group_size = check_group_size(group_size, in_)
    damp = check_positive_float(damp, "damp")
    damp_max = check_positive_float(damp_max, "damp_max")
    if damp_max < damp:
        raise ValueError(f"damp_max={damp_max} must be >= damp={damp}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    require_memory(_layer_memory(out, in_), f"quantizing a {out}x{in_} layer")

    needs_hessian = method != "rtn" or compute_error
    hessian: Optional[Hessian] = as_hessian(X, in_) if needs_hessian else None
    h = hessian.matrix if hessian is not None else None

    stats: Dict[str, Any] = {"method": method}
    target = w
    if method.startswith("astro"):
        from .regularize import regularize

        target, reg_stats = regularize(
            w, hessian, beta=beta, budget=budget, group_size=group_size,
            iterations=iterations, uniform_alpha=uniform_alpha, solver=solver, tol=tol,
        )
        stats["regularize"] = reg_stats

    if method in ("rtn", "astro+rtn"):
        codes, scales, zeros, dequant = _core.rtn(target, bits, group_size, sym, mse)
        g_idx = _group_index(in_, group_size)
    else:
        codes, scales, zeros, g_idx, dequant, gptq_stats = _core.gptq(
            target, h, bits, group_size, sym, mse, act_order, static_groups,
            damp, damp_max, block_size, compute_error,
        )
        stats.update(gptq_stats)
        if gptq_stats["rtn_fallback"]:
            logger.warning(
                "every input column of the %dx%d layer is dead (H_ii == 0); "
                "fell back to RTN", out, in_,
            )
        elif gptq_stats["damp_used"] > damp * (1 + 1e-6):
            logger.info("Cholesky needed damp=%g (requested %g)", gptq_stats["damp_used"], damp)

    if compute_error and h is not None:
        stats["output_error"] = _core.output_error(w, dequant, h)
    stats["seconds"] = time.perf_counter() - started
    return QuantizedLayer(codes, scales, zeros, g_idx, bits, group_size, bool(sym), method, stats)


def _group_index(in_features: int, group_size: int) -> np.ndarray:
    if group_size <= 0:
        return np.zeros(in_features, dtype=np.int32)
    return (np.arange(in_features, dtype=np.int64) // group_size).astype(np.int32)


def unpack_gptq(
    tensors: Dict[str, Any],
    bits: int,
    in_features: int,
    checkpoint_format: str = "v1",
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unpack GPTQ checkpoint tensors (qweight, qzeros, scales, g_idx).

    Returns codes uint8 (out, in), scales float32 (out, groups), zeros
    float32 (out, groups) and g_idx int32 (in,), the layout of QuantizedLayer.
    """
    bits = check_bits(bits)
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint_format={checkpoint_format!r} is invalid; use 'v1' or 'v2'")
    missing = [k for k in ("qweight", "qzeros", "scales") if k not in tensors]
    if missing:
        raise ValueError(f"tensors lack {missing}; a GPTQ layer has qweight, qzeros, scales, g_idx")

    def numpy_of(value: Any) -> np.ndarray:
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if str(value.dtype) == "torch.bfloat16":
                value = value.float()
            value = value.numpy()
        return np.asarray(value)

    qweight = np.ascontiguousarray(numpy_of(tensors["qweight"]).view(np.int32))
    qzeros = np.ascontiguousarray(numpy_of(tensors["qzeros"]).view(np.int32))
    scales_go = numpy_of(tensors["scales"]).astype(np.float32)
    out = qweight.shape[1]
    offset = 1 if checkpoint_format == "v1" else 0
    codes = _core.unpack_rows(qweight, int(in_features), bits)
    zeros = np.ascontiguousarray(_core.unpack_zeros(qzeros, out, bits, offset).T)
    scales = np.ascontiguousarray(scales_go.T)
    if "g_idx" in tensors and tensors["g_idx"] is not None:
        g_idx = np.ascontiguousarray(numpy_of(tensors["g_idx"]).astype(np.int32))
    else:
        group_size = -(-int(in_features) // scales.shape[1])
        g_idx = _group_index(int(in_features), group_size)
    return codes, scales, zeros, g_idx
