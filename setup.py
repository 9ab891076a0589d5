"""Build the astro._core extension: the C core in csrc/ plus the NumPy binding.

OpenBLAS comes from the scipy-openblas32 wheel, whose symbols carry a
``scipy_`` prefix. Set ASTRO_SYSTEM_OPENBLAS=1 to link a system OpenBLAS found
through pkg-config instead (its symbols have no prefix).
"""
import glob
import os
import shlex
import subprocess

import numpy
from setuptools import Extension, setup

C_FLAGS = [
    "-std=c11",
    "-O3",
    "-fopenmp",
    # Keep a * b + c as two rounded operations so the core matches the
    # NumPy references in the tests bit for bit on every x86-64 and ARM CPU.
    "-ffp-contract=off",
    "-fno-math-errno",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
]


def openblas_flags():
    """Return (define_macros, include_dirs, library_dirs, libraries, link_args)."""
    if os.environ.get("ASTRO_SYSTEM_OPENBLAS") == "1":
        pkg = os.environ.get("ASTRO_OPENBLAS_PKG", "openblas")
        cflags = subprocess.check_output(["pkg-config", "--cflags", pkg], text=True)
        libs = subprocess.check_output(["pkg-config", "--libs", pkg], text=True)
        includes = [f[2:] for f in shlex.split(cflags) if f.startswith("-I")]
        lib_dirs = [f[2:] for f in shlex.split(libs) if f.startswith("-L")]
        lib_names = [f[2:] for f in shlex.split(libs) if f.startswith("-l")]
        return [("ASTRO_BLAS_PREFIX", "")], includes, lib_dirs, lib_names, []

    import scipy_openblas32

    lib_dir = scipy_openblas32.get_lib_dir()
    # At run time astro/__init__.py loads the library from the installed
    # scipy_openblas32 package before importing the extension, so no rpath to
    # the (temporary) build environment is recorded.
    return (
        [("ASTRO_BLAS_PREFIX", "scipy_")],
        [],
        [lib_dir],
        [scipy_openblas32.get_library()],
        ["-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"],
    )


macros, blas_includes, blas_lib_dirs, blas_libs, blas_link = openblas_flags()

core = Extension(
    "astro._core",
    sources=sorted(glob.glob("csrc/*.c")) + ["astro/_core.c"],
    include_dirs=["csrc", numpy.get_include()] + blas_includes,
    define_macros=macros + [("NPY_NO_DEPRECATED_API", "NPY_1_21_API_VERSION")],
    library_dirs=blas_lib_dirs,
    libraries=blas_libs + ["m"],
    extra_compile_args=C_FLAGS,
    extra_link_args=["-fopenmp"] + blas_link,
)

setup(ext_modules=[core])
