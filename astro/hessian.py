"""Streaming accumulation of the layer Hessian H = (2/n) X^T X."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._arrays import check_finite, is_torch_tensor, require_memory, to_numpy

# Rows converted to float32 at a time, so a large float16 or bfloat16 batch is
# never copied to float32 in one piece.
_CHUNK_ROWS = 8192


class Hessian:
    """Running H = (2/n) X^T X of one linear layer's inputs.

    Feed calibration batches with update(); each batch may have any leading
    shape, (tokens, in) or (batch, seq, in), and a mask that drops padded
    positions. The matrix is float32 and costs in_features^2 * 4 bytes.
    """

    def __init__(self, in_features: int) -> None:
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)):
            raise TypeError(f"in_features must be an int, got {type(in_features).__name__}")
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        self.in_features = int(in_features)
        require_memory(4 * self.in_features**2, f"a Hessian for in_features={in_features}")
        # One buffer: syrk updates its upper triangle, and `matrix` mirrors that
        # onto the lower one in place when asked, so H is never held twice.
        self._upper = np.zeros((self.in_features, self.in_features), dtype=np.float32)
        self._symmetric = True
        self.num_samples = 0

    @classmethod
    def from_matrix(cls, matrix: Any, num_samples: int = 1) -> "Hessian":
        """Wrap an existing symmetric H (in x in), for example one saved earlier."""
        h = to_numpy(matrix, "H")
        if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] < 1:
            raise ValueError(f"H must be a square (in, in) matrix; got shape {h.shape}")
        check_finite(h, "H")
        h32 = np.ascontiguousarray(h, dtype=np.float32)
        if not np.allclose(h32, h32.T, rtol=1e-4, atol=1e-6 * float(np.abs(h32).max() or 1)):
            raise ValueError("H must be symmetric; pass (H + H.T) / 2 if it is not")
        hessian = cls.__new__(cls)
        hessian.in_features = h32.shape[0]
        hessian._upper = h32.copy()
        hessian._symmetric = False
        hessian.num_samples = int(num_samples)
        return hessian

    def update(self, x: Any, mask: Any = None) -> "Hessian":
        """Fold a batch of inputs into H and return self.

        x: (..., in_features), NumPy or CPU torch, float16/bfloat16/float32/
        float64. mask: boolean (or 0/1) array of shape x.shape[:-1]; positions
        where it is False or 0 (padding) are left out of H and of the count.
        """
        array = to_numpy(x, "X")
        if array.ndim < 1 or array.shape[-1] != self.in_features:
            raise ValueError(
                f"X must have shape (..., {self.in_features}) to match in_features; "
                f"got {array.shape}"
            )
        rows = array.reshape(-1, self.in_features)
        if mask is not None:
            keep = self._mask_rows(mask, array.shape[:-1])
            rows = rows[keep]
        for start in range(0, rows.shape[0], _CHUNK_ROWS):
            chunk = np.ascontiguousarray(rows[start:start + _CHUNK_ROWS], dtype=np.float32)
            check_finite(chunk, "X")
            self._symmetric = False
            self.num_samples = _core.hessian_update(self._upper, self.num_samples, chunk)
        # |H_ij| <= sqrt(H_ii H_jj), so a finite diagonal means a finite H.
        if not np.isfinite(np.diagonal(self._upper)).all():
            raise ValueError(
                "H overflowed float32: X has values too large to square and sum "
                f"(max |X| = {float(np.abs(rows).max()):g}); rescale X before "
                "calibrating"
            )
        return self

    @staticmethod
    def _mask_rows(mask: Any, lead_shape: tuple) -> np.ndarray:
        if is_torch_tensor(mask):
            mask = mask.detach().cpu().numpy()
        keep = np.asarray(mask)
        if keep.shape != tuple(lead_shape):
            raise ValueError(
                f"mask must have shape {tuple(lead_shape)} (X's shape without the "
                f"last axis); got {keep.shape}"
            )
        if keep.dtype != np.bool_:
            if not np.isin(keep, (0, 1)).all():
                raise ValueError("mask must be boolean or hold only 0 and 1")
            keep = keep.astype(bool)
        return keep.reshape(-1)

    @property
    def matrix(self) -> np.ndarray:
        """H as a full symmetric float32 (in, in) array (a read-only view).

        The view shares memory with the accumulator, so a later update()
        changes it; copy it to keep a snapshot.
        """
        if not self._symmetric:
            _core.hessian_symmetrize(self._upper)
            self._symmetric = True
        view = self._upper.view()
        view.setflags(write=False)
        return view

    @property
    def nbytes(self) -> int:
        return self._upper.nbytes

    def __repr__(self) -> str:
        return f"Hessian(in_features={self.in_features}, num_samples={self.num_samples})"


def as_hessian(value: Any, in_features: int) -> Hessian:
    """Return a Hessian for X, a Hessian, or raise a clear error."""
    if isinstance(value, Hessian):
        hessian = value
    else:
        x = to_numpy(value, "X")
        if x.ndim < 2:
            raise ValueError(
                f"X must be (tokens, in_features) or (batch, seq, in_features); got "
                f"shape {x.shape}. To pass a precomputed H use "
                f"astro.Hessian.from_matrix(H)"
            )
        if x.shape[-1] != in_features:
            raise ValueError(
                f"X has {x.shape[-1]} features in its last axis but W has "
                f"in_features={in_features}; X must be (..., {in_features})"
            )
        if x.size == 0:
            raise ValueError(f"X has no tokens (shape {x.shape}); pass calibration inputs")
        hessian = Hessian(in_features).update(x)
    if hessian.in_features != in_features:
        raise ValueError(
            f"the Hessian is for in_features={hessian.in_features} but W has "
            f"in_features={in_features}"
        )
    if hessian.num_samples == 0:
        raise ValueError("the Hessian has seen no tokens; call update(X) first")
    return hessian
