"""Slow, obviously correct NumPy references for the C kernels.

Written straight from the method description (GPTQ as the reference
implementation defines it), loop by loop, in float32 where the core works in
float32 so that results can be compared code for code.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def rint(x):
    """Half-to-even rounding, as rintf and torch.round."""
    return np.rint(x)


def find_params(x: np.ndarray, bits: int, sym: bool, mse: bool = False,
                norm: float = 2.4, grid: int = 100, max_shrink: float = 0.8):
    """Scale and zero per row of x (rows, count)."""
    maxq = F32(2**bits - 1)
    x = x.astype(F32)
    xmin = np.minimum(x.min(axis=1, initial=0.0), 0).astype(F32)
    xmax = np.maximum(x.max(axis=1, initial=0.0), 0).astype(F32)

    def finalize(lo, hi):
        lo = lo.astype(F32).copy()
        hi = hi.astype(F32).copy()
        if sym:
            m = np.maximum(-lo, hi)
            lo, hi = -m, m
        tiny = (hi - lo) < np.finfo(F32).tiny
        lo[tiny] = -1
        hi[tiny] = 1
        scale = ((hi - lo) / maxq).astype(F32)
        if sym:
            zero = np.full_like(scale, (maxq + 1) / 2)
        else:
            zero = rint((-lo / scale).astype(F32)).astype(F32)
        return scale, zero

    scale, zero = finalize(xmin, xmax)
    if mse:
        best = np.full(x.shape[0], np.inf, dtype=F32)
        for i in range(int(F32(max_shrink) * grid)):
            p = F32(1 - i / grid)
            s1, z1 = finalize(p * xmin, p * xmax)
            q = quantize(x, s1[:, None], z1[:, None], bits)
            err = (np.abs(q - x) ** F32(norm)).astype(F32).sum(axis=1, dtype=F32)
            better = err < best
            best[better] = err[better]
            scale[better] = s1[better]
            zero[better] = z1[better]
    return scale, zero


def codes_of(x, scale, zero, bits):
    maxq = 2**bits - 1
    return np.clip(rint((x / scale).astype(F32)) + zero, 0, maxq).astype(F32)


def quantize(x, scale, zero, bits):
    return (scale * (codes_of(x, scale, zero, bits) - zero)).astype(F32)


def rtn(w: np.ndarray, bits: int, group_size: int, sym: bool, mse: bool = False):
    out, in_ = w.shape
    gs = group_size if group_size > 0 else in_
    groups = -(-in_ // gs)
    codes = np.zeros((out, in_), np.uint8)
    scales = np.zeros((out, groups), F32)
    zeros = np.zeros((out, groups), F32)
    q = np.zeros((out, in_), F32)
    for g in range(groups):
        cols = slice(g * gs, min((g + 1) * gs, in_))
        s, z = find_params(w[:, cols], bits, sym, mse)
        scales[:, g], zeros[:, g] = s, z
        codes[:, cols] = codes_of(w[:, cols], s[:, None], z[:, None], bits)
        q[:, cols] = quantize(w[:, cols], s[:, None], z[:, None], bits)
    return codes, scales, zeros, q


def inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), in float64."""
    hinv = np.linalg.inv(h.astype(np.float64))
    return np.linalg.cholesky(hinv).T


def gptq(w, h, bits, group_size, sym, act_order=False, static_groups=False,
         damp=0.01, block_size=128, mse=False):
    """GPTQ, column by column. Returns codes, scales, zeros, g_idx, q, loss."""
    w = w.astype(F32).copy()
    h = h.astype(F32).copy()
    out, in_ = w.shape
    gs = group_size if group_size > 0 else in_
    groups = -(-in_ // gs) if group_size > 0 else 1

    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0

    static = []
    if group_size > 0 and static_groups:
        for g in range(groups):
            static.append(find_params(w[:, g * gs:(g + 1) * gs], bits, sym, mse))

    perm = np.arange(in_)
    if act_order:
        perm = np.argsort(-np.diag(h), kind="stable")
    w = w[:, perm]
    h = h[perm][:, perm]

    h = h + F32(damp * np.mean(np.diag(h))) * np.eye(in_, dtype=F32)
    u = inverse_cholesky_upper(h).astype(F32)

    codes = np.zeros((out, in_), np.uint8)
    q_all = np.zeros((out, in_), F32)
    scales = np.zeros((out, groups), F32)
    zeros = np.zeros((out, groups), F32)
    loss = 0.0
    if group_size <= 0:
        scale, zero = find_params(w, bits, sym, mse)
        scales[:, 0], zeros[:, 0] = scale, zero

    for b0 in range(0, in_, block_size):
        b1 = min(b0 + block_size, in_)
        w_block_start = w.copy()
        err_block = np.zeros((out, b1 - b0), F32)
        for i in range(b0, b1):
            if group_size > 0 and static_groups:
                scale, zero = static[perm[i] // gs]
            elif group_size > 0 and i % gs == 0:
                scale, zero = find_params(w_block_start[:, i:i + gs], bits, sym, mse)
                scales[:, i // gs], zeros[:, i // gs] = scale, zero
            col = w[:, i].copy()
            codes[:, i] = codes_of(col, scale, zero, bits)
            q = quantize(col, scale, zero, bits)
            q_all[:, i] = q
            err = ((col - q) / u[i, i]).astype(F32)
            loss += float(np.sum(err.astype(np.float64) ** 2)) / 2
            w[:, i + 1:b1] -= np.outer(err, u[i, i + 1:b1]).astype(F32)
            err_block[:, i - b0] = err
        w[:, b1:] -= (err_block @ u[b0:b1, b1:]).astype(F32)

    inv = np.argsort(perm)
    if group_size <= 0:
        g_idx = np.zeros(in_, np.int32)
    elif static_groups or not act_order:
        g_idx = (np.arange(in_) // gs).astype(np.int32)
    else:
        g_idx = (inv // gs).astype(np.int32)
    if group_size > 0 and static_groups:
        for g in range(groups):
            scales[:, g], zeros[:, g] = static[g]
    return codes[:, inv], scales, zeros, g_idx, q_all[:, inv], loss


def pack_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 1-D array of `bits`-wide values into uint32 words, bit by bit."""
    words = np.zeros(-(-len(values) * bits // 32), np.uint64)
    for k, v in enumerate(values.astype(np.uint64)):
        for b in range(bits):
            if (int(v) >> b) & 1:
                pos = k * bits + b
                words[pos // 32] |= np.uint64(1 << (pos % 32))
    return words.astype(np.uint32).view(np.int32)
