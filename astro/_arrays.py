"""Input conversion and validation shared by the public API.

Every public function funnels arrays through here, so that a bad input is
rejected once, in Python, with a message that names the argument, the value
and the fix. The C core then receives only float32 C-contiguous buffers.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
# A group's range spans up to 2 max|W|, and the core accepts ranges up to
# FLT_MAX / 2 (1.7e38) so that no decoded weight rounds past FLT_MAX.
MAX_WEIGHT = 8e37


def is_torch_tensor(value: Any) -> bool:
    """Return True for a torch.Tensor without importing torch."""
    kind = type(value)
    return kind.__module__.startswith("torch") and hasattr(value, "detach")


def to_numpy(value: Any, name: str) -> np.ndarray:
    """Convert a NumPy array or CPU torch tensor to a floating NumPy array.

    bfloat16 tensors are widened to float32 (NumPy has no bfloat16). The
    result may share memory with the input; callers never write to it.
    """
    if is_torch_tensor(value):
        if value.device.type != "cpu":
            raise ValueError(
                f"{name} is a torch tensor on device {value.device}; move it to "
                f"the CPU first with {name}.cpu()"
            )
        tensor = value.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        if not tensor.is_floating_point():
            raise TypeError(
                f"{name} has dtype {tensor.dtype}; pass float16, bfloat16, "
                f"float32 or float64 (for example {name}.float())"
            )
        return tensor.numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray or a torch.Tensor, got "
            f"{type(value).__name__}"
        )
    if value.dtype.type not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {value.dtype}; pass float16, float32 or float64 "
            f"(for example {name}.astype(numpy.float32))"
        )
    return value


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ValueError if the array contains NaN or Inf, naming the first one."""
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{name} contains {len(bad)} NaN/Inf value(s), the first at index "
            f"{first} (= {array[first]}); clean or clip the input before "
            f"quantizing"
        )


def as_weight(value: Any) -> np.ndarray:
    """Return W as a float32 C-contiguous (out, in) array, validated."""
    w = to_numpy(value, "W")
    if w.ndim != 2:
        raise ValueError(
            f"W must be 2-D (out_features, in_features) as in torch.nn.Linear."
            f"weight; got shape {w.shape}"
        )
    if w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"W must have at least one row and column; got shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    check_finite(w, "W")
    largest = float(np.abs(w).max())
    if largest > MAX_WEIGHT:
        raise ValueError(
            f"W has a value of magnitude {largest:g}, too large for a finite float32 "
            f"quantization range; |W| must be <= {MAX_WEIGHT:g}, so rescale W"
        )
    return w


def check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if int(bits) not in SUPPORTED_BITS:
        raise ValueError(
            f"bits={bits} is not supported; use one of {SUPPORTED_BITS} "
            f"(2, 3, 4 and 8 are the usual choices)"
        )
    return int(bits)


def check_group_size(group_size: Any, in_features: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    group_size = int(group_size)
    if group_size == -1:
        return group_size
    if group_size <= 0:
        raise ValueError(
            f"group_size={group_size} is invalid; use -1 for one group per row "
            f"or a positive size such as 128"
        )
    if group_size > in_features:
        raise ValueError(
            f"group_size={group_size} is larger than in_features={in_features}; "
            f"use -1 for one group per row or a size <= {in_features}"
        )
    return group_size


def check_positive_float(value: Any, name: str, allow_zero: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def available_memory_bytes() -> int | None:
    """Return MemAvailable from /proc/meminfo, or None where it is unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def require_memory(needed: int, what: str) -> None:
    """Raise MemoryError up front when `needed` bytes exceed what is free.

    ASTRO_SKIP_MEMORY_CHECK=1 disables the check (for machines with swap or
    overcommit where MemAvailable understates what can be used).
    """
    if os.environ.get("ASTRO_SKIP_MEMORY_CHECK") == "1":
        return
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise MemoryError(
            f"{what} needs about {needed / 2**30:.2f} GiB but only "
            f"{available / 2**30:.2f} GiB is available; use a machine with more "
            f"memory or set ASTRO_SKIP_MEMORY_CHECK=1 to try anyway"
        )
