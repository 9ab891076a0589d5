"""PyTorch peers for the layer benchmarks.

These are our own transcriptions, into plain PyTorch, of the algorithms users
would otherwise run:

* GPTQ as the reference implementation defines it (Frantar et al. 2022,
  IST-DASLab/gptq, ``GPTQ.fasterquant``, ``GPTQ.add_batch`` and ``Quantizer``
  in ``quant.py``). The step order, the tensors allocated and the operations
  are kept as in that code, CUDA synchronisation and printing aside, so its
  speed on CPU is what a user of that code gets.
* The plain Astro/MagR proximal-gradient iteration: ``V = W - (W - W0) Hn``
  with ``Hn = H / lambda_max(H)``, then per row and group
  ``w = v - tau * P(v / tau)`` where ``P`` projects onto the unit L1 ball
  (sort-based, Duchi et al. 2008) and ``tau = beta * alpha_k``.

Every function takes and returns torch tensors on the CPU, in float32.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch


# --------------------------------------------------------------------------
# Quantizer (reference quant.py, weight quantization, one scale per row)
# --------------------------------------------------------------------------


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
             maxq: torch.Tensor) -> torch.Tensor:
    """Fake-quantize ``x``: ``scale * (clamp(round(x / scale) + zero) - zero)``.

    ``torch.round`` rounds half to even.
    """
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class ReferenceQuantizer:
    """Min-max uniform quantizer with one scale and zero point per row.

    Matches the reference ``Quantizer`` configured with ``perchannel=True``
    and used on weights: the range always contains 0, an all-zero row uses
    [-1, 1], the symmetric zero point is ``(maxq + 1) / 2``, and the optional
    MSE search shrinks the range by ``1 - i / grid`` for
    ``i < maxshrink * grid`` and keeps the smallest ``sum |q - x|^norm``.
    """

    def __init__(self, bits: int, sym: bool = False, mse: bool = False,
                 norm: float = 2.4, grid: int = 100, maxshrink: float = 0.8):
        self.maxq = torch.tensor(2 ** bits - 1)
        self.sym = sym
        self.mse = mse
        self.norm = norm
        self.grid = grid
        self.maxshrink = maxshrink
        self.scale = torch.zeros(1)
        self.zero = torch.zeros(1)

    def ready(self) -> bool:
        return bool(torch.all(self.scale != 0))

    def find_params(self, x: torch.Tensor) -> None:
        """Set ``scale`` and ``zero`` (shape rows x 1) from the rows of ``x``."""
        x = x.flatten(1)
        tmp = torch.zeros(x.shape[0], device=x.device)
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)

        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1

        self.scale = (xmax - xmin) / self.maxq
        if self.sym:
            self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = torch.round(-xmin / self.scale)

        if self.mse:
            best = torch.full([x.shape[0]], float("inf"), device=x.device)
            for i in range(int(self.maxshrink * self.grid)):
                p = 1 - i / self.grid
                xmin1 = p * xmin
                xmax1 = p * xmax
                scale1 = (xmax1 - xmin1) / self.maxq
                zero1 = torch.round(-xmin1 / scale1) if not self.sym else self.zero
                q = quantize(x, scale1.unsqueeze(1), zero1.unsqueeze(1), self.maxq)
                q -= x
                q.abs_()
                q.pow_(self.norm)
                err = torch.sum(q, 1)
                tmp = err < best
                if torch.any(tmp):
                    best[tmp] = err[tmp]
                    self.scale[tmp] = scale1[tmp]
                    self.zero[tmp] = zero1[tmp]

        self.scale = self.scale.reshape(-1, 1)
        self.zero = self.zero.reshape(-1, 1)


# --------------------------------------------------------------------------
# Hessian accumulation (reference GPTQ.add_batch for nn.Linear)
# --------------------------------------------------------------------------


def hessian_update_reference(h: torch.Tensor, num_samples: int,
                             inputs: torch.Tensor) -> int:
    """Fold a batch of layer inputs into ``h`` in place; return the new count.

    ``inputs`` is (tokens, in) or (batch, seq, in). As in the reference code,
    the count grows by the batch size (the leading dimension of a 3-D input,
    1 for a 2-D input) and the product is a full GEMM, not a SYRK.
    """
    if inputs.dim() == 2:
        inputs = inputs.unsqueeze(0)
    batch = inputs.shape[0]
    inputs = inputs.reshape((-1, inputs.shape[-1])).t()
    h *= num_samples / (num_samples + batch)
    num_samples += batch
    inputs = math.sqrt(2 / num_samples) * inputs.float()
    h += inputs.matmul(inputs.t())
    return num_samples


# --------------------------------------------------------------------------
# GPTQ (reference GPTQ.fasterquant)
# --------------------------------------------------------------------------


@dataclass
class GPTQResult:
    """Fake-quantized weights, summed GPTQ loss and group index per column."""

    weight: torch.Tensor
    loss: float
    g_idx: torch.Tensor


def gptq_reference(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4,
                   group_size: int = -1, sym: bool = False,
                   act_order: bool = False, static_groups: bool = False,
                   damp: float = 0.01, block_size: int = 128,
                   mse: bool = False,
                   overwrite_hessian: bool = False) -> GPTQResult:
    """Quantize ``weight`` (out x in) with GPTQ given ``hessian`` (in x in).

    Deviations from the reference code, none of which changes a result:
    the act-order permutation uses a stable sort (the reference leaves ties
    in an unspecified order), and ``g_idx`` is computed here because the
    reference code does not return it.

    Reference behaviour kept on purpose: with dynamic groups, a group that
    starts inside a block takes its scale from ``W``, which does not yet hold
    the updates made earlier in that block (only ``W1`` does). A group size
    that is a multiple of the block size is unaffected, because every group
    then starts at a block start.

    The reference consumes its Hessian. ``overwrite_hessian=True`` does the
    same with ``hessian``; otherwise a copy is taken first.
    """
    quantizer = ReferenceQuantizer(bits, sym=sym, mse=mse)
    rows, columns = weight.shape
    W = weight.clone().float()

    if not quantizer.ready():
        quantizer.find_params(W)

    H = hessian if overwrite_hessian else hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    if static_groups:
        groups = []
        for i in range(0, columns, group_size):
            group_quantizer = copy.deepcopy(quantizer)
            group_quantizer.find_params(W[:, i:(i + group_size)])
            groups.append(group_quantizer)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)

    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)

    damping = damp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damping
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H

    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        count = i2 - i1

        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]

            if group_size != -1:
                if not static_groups:
                    if (i1 + i) % group_size == 0:
                        quantizer.find_params(W[:, (i1 + i):(i1 + i + group_size)])
                else:
                    idx = i1 + i
                    if act_order:
                        idx = perm[idx]
                    quantizer = groups[idx // group_size]

            q = quantize(w.unsqueeze(1), quantizer.scale, quantizer.zero,
                         quantizer.maxq).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2

            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1

        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2

        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    loss = torch.sum(Losses).item()
    if act_order:
        Q = Q[:, invperm]

    g_idx = _group_index(columns, group_size, perm, static_groups)
    return GPTQResult(weight=Q, loss=loss, g_idx=g_idx)


def _group_index(columns: int, group_size: int, perm: torch.Tensor | None,
                 static_groups: bool) -> torch.Tensor:
    """Group of each input column, in the original column order."""
    if group_size == -1:
        return torch.zeros(columns, dtype=torch.int32)
    position = torch.arange(columns, dtype=torch.int32)
    if perm is None or static_groups:
        return position // group_size
    g_idx = torch.empty(columns, dtype=torch.int32)
    g_idx[perm] = position // group_size
    return g_idx


def rtn_reference(weight: torch.Tensor, bits: int = 4, group_size: int = -1,
                  sym: bool = False, mse: bool = False) -> torch.Tensor:
    """Round-to-nearest with the reference quantizer, group by group."""
    W = weight.float()
    quantizer = ReferenceQuantizer(bits, sym=sym, mse=mse)
    if group_size == -1:
        quantizer.find_params(W)
        return quantize(W, quantizer.scale, quantizer.zero, quantizer.maxq)
    Q = torch.empty_like(W)
    for i in range(0, W.shape[1], group_size):
        block = W[:, i:(i + group_size)]
        quantizer.find_params(block)
        Q[:, i:(i + group_size)] = quantize(block, quantizer.scale, quantizer.zero,
                                            quantizer.maxq)
    return Q


# --------------------------------------------------------------------------
# Plain Astro / MagR proximal gradient
# --------------------------------------------------------------------------


def largest_eigenvalue(h: torch.Tensor, iterations: int = 30) -> float:
    """Estimate lambda_max of the symmetric PSD ``h`` by power iteration.

    Starts from the constant vector, so the result is deterministic.
    """
    v = torch.full((h.shape[0],), 1.0 / math.sqrt(h.shape[0]), dtype=h.dtype)
    estimate = 0.0
    for _ in range(iterations):
        hv = h.mv(v)
        norm = torch.linalg.vector_norm(hv).item()
        if norm == 0.0:
            return 0.0
        estimate = norm
        v = hv / norm
    return estimate


def group_alpha(h: torch.Tensor, group_size: int,
                uniform: bool = False) -> torch.Tensor:
    """Per-group weights ``alpha_k = ||X^(k)||_F / mean_i ||X^(i)||_F``.

    ``||X^(k)||_F^2`` is taken as the sum of ``H_cc`` over the group's
    columns (H's scale cancels). A short last group is allowed.
    """
    columns = h.shape[0]
    size = columns if group_size == -1 else group_size
    groups = -(-columns // size)
    if uniform:
        return torch.ones(groups, dtype=h.dtype)
    diagonal = torch.diagonal(h).clamp_min(0)
    padded = torch.zeros(groups * size, dtype=h.dtype)
    padded[:columns] = diagonal
    norms = padded.reshape(groups, size).sum(1).sqrt()
    mean = norms.mean()
    if mean == 0:
        return torch.ones(groups, dtype=h.dtype)
    return norms / mean


def project_l1_ball(u: torch.Tensor) -> torch.Tensor:
    """Project each row of ``u`` (batch x n) onto the unit L1 ball.

    Sort-based method of Duchi et al. (2008): rows already inside the ball
    are returned unchanged; the others are soft-thresholded by ``theta``
    with ``theta = (sum_{j <= rho} mu_j - 1) / rho``.
    """
    magnitude = u.abs()
    inside = magnitude.sum(-1) <= 1
    mu, _ = torch.sort(magnitude, dim=-1, descending=True)
    cumulative = torch.cumsum(mu, dim=-1)
    ranks = torch.arange(1, u.shape[-1] + 1, dtype=u.dtype)
    positive = (mu - (cumulative - 1) / ranks) > 0
    rho = positive.sum(-1, keepdim=True).clamp_min(1)
    theta = (cumulative.gather(-1, rho - 1) - 1) / rho.to(u.dtype)
    projected = torch.sign(u) * (magnitude - theta).clamp_min(0)
    return torch.where(inside.unsqueeze(-1), u, projected)


def prox_group_linf(v: torch.Tensor, tau: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """Prox of ``sum_k tau_k ||w^(k)||_inf``: ``v - tau * P(v / tau)`` per group.

    ``v`` is (out, in). A short last group is zero-padded, which leaves both
    the L1 norm and the projection of the real entries unchanged.
    """
    rows, columns = v.shape
    size = columns if group_size == -1 else group_size
    groups = tau.shape[0]
    padded_columns = groups * size
    if padded_columns != columns:
        padded = torch.zeros(rows, padded_columns, dtype=v.dtype)
        padded[:, :columns] = v
    else:
        padded = v
    grouped = padded.reshape(rows, groups, size)
    scale = tau.reshape(1, groups, 1)
    projected = project_l1_ball((grouped / scale).reshape(-1, size))
    result = grouped - scale * projected.reshape(rows, groups, size)
    return result.reshape(rows, padded_columns)[:, :columns]


def astro_objective(w: torch.Tensor, w0: torch.Tensor, hn: torch.Tensor,
                    tau: torch.Tensor, group_size: int) -> float:
    """``sum_rows 1/2 (w - w0)^T Hn (w - w0) + sum_k tau_k ||w^(k)||_inf``."""
    delta = (w - w0).double()
    quadratic = 0.5 * torch.sum((delta @ hn.double()) * delta).item()
    rows, columns = w.shape
    size = columns if group_size == -1 else group_size
    groups = tau.shape[0]
    padded = torch.zeros(rows, groups * size, dtype=torch.float64)
    padded[:, :columns] = w.double().abs()
    group_max = padded.reshape(rows, groups, size).amax(-1)
    penalty = torch.sum(group_max * tau.double().reshape(1, groups)).item()
    return quadratic + penalty


@dataclass
class AstroResult:
    """Regularized weights and the quantities needed to check them."""

    weight: torch.Tensor
    lambda_max: float
    tau: torch.Tensor
    hn: torch.Tensor


def astro_plain(w0: torch.Tensor, h: torch.Tensor, beta: float,
                group_size: int = 128, iterations: int = 200,
                uniform_alpha: bool = False,
                power_iterations: int = 30) -> AstroResult:
    """Run ``iterations`` plain proximal-gradient steps from ``w0``.

    Step size 1 on the normalized Hessian ``Hn = H / lambda_max``; one GEMM
    (``addmm``) per step. ``uniform_alpha=True`` gives MagR.
    """
    w0 = w0.float()
    lambda_max = largest_eigenvalue(h, power_iterations)
    tau = beta * group_alpha(h, group_size, uniform_alpha)
    if lambda_max == 0.0 or beta == 0.0:
        return AstroResult(weight=w0.clone(), lambda_max=lambda_max, tau=tau,
                           hn=h)
    hn = h / lambda_max
    w = w0.clone()
    for _ in range(iterations):
        v = torch.addmm(w, w - w0, hn, alpha=-1.0)
        w = prox_group_linf(v, tau, group_size)
    return AstroResult(weight=w, lambda_max=lambda_max, tau=tau, hn=hn)
