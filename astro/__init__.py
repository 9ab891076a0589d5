"""astro-ptq: weight-only post-training quantization of linear layers.

    import astro
    q = astro.quantize_layer(W, X, bits=4, group_size=128)   # Astro + GPTQ
    W_hat = q.dequantize()
    tensors = q.pack()                                        # GPTQ checkpoint tensors

The numerical work runs in a C core over OpenBLAS; see astro.quantize_layer.
"""
from __future__ import annotations

import ctypes
import logging
import os


def _set_thread_wait_defaults() -> None:
    """Make idle OpenBLAS and OpenMP worker threads sleep instead of spin.

    The core alternates OpenBLAS calls with its own OpenMP loops, and the
    model pipeline alternates both with torch. A pool whose idle workers spin
    takes the cores the next pool needs: quantizing 4 blocks of SmolLM2-135M
    with GPTQ took 11.7 s with the spinning defaults and 5.4 s with these, on
    2 cores. Both variables are read when each library starts, so they are set
    here, before either loads, and only where the user has not set them.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _preload_openblas() -> None:
    """Load the scipy-openblas32 library globally before the C extension.

    The extension links against libscipy_openblas.so; loading it here from the
    installed wheel lets the dynamic loader resolve it in editable and
    relocated installs alike.
    """
    try:
        import scipy_openblas32
    except ImportError:  # built against a system OpenBLAS
        return
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


_set_thread_wait_defaults()
_preload_openblas()

from . import _core  # noqa: E402
from ._core import NumericalError  # noqa: E402
from .hessian import Hessian  # noqa: E402
from .layer import QuantizedLayer, quantize_layer, unpack_gptq  # noqa: E402
# Imported after the submodule's own name is bound, so that astro.regularize
# is the function rather than the module.
from .regularize import regularize  # noqa: E402

logging.getLogger("astro").addHandler(logging.NullHandler())

__version__ = "0.1.0"


def set_num_threads(num_threads: int) -> None:
    """Set the threads used by OpenBLAS and by the core's own loops."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise TypeError(f"num_threads must be an int, got {type(num_threads).__name__}")
    _core.set_num_threads(num_threads)


def get_num_threads() -> int:
    """Return the thread count the core uses."""
    return _core.get_num_threads()


# The model pipeline needs torch and transformers (the "model" extra), so its
# names load on first use and `import astro` works without them.
_LAZY = {
    "quantize_model": "pipeline",
    "ModelQuantization": "pipeline",
    "save_quantized": "checkpoint",
    "load_quantized": "checkpoint",
    "QuantLinear": "checkpoint",
    "load_model": "models",
    "perplexity": "evaluate",
    "select_beta": "tuning",
    "BetaSelection": "tuning",
    "fetch_assets": "assets",
    "minilm_dir": "assets",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'astro' has no attribute {name!r}")


__all__ = [
    "Hessian",
    "NumericalError",
    "QuantizedLayer",
    "get_num_threads",
    "quantize_layer",
    "regularize",
    "set_num_threads",
    "unpack_gptq",
    *sorted(_LAZY),
]
