"""The C core's own tests under AddressSanitizer and UBSan, a bounded fuzz run
and a valgrind memcheck pass over the binding, driven from pytest so that the
one test command runs them all.

Each is skipped, with the reason, where its tool (make, gcc, objcopy,
valgrind) is missing.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
C_TESTS = ROOT / "tests" / "c"
FUZZ_SECONDS = int(os.environ.get("ASTRO_FUZZ_SECONDS", "60"))


def require_tools(*tools):
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found")


def run(command, timeout):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "PYTHON": sys.executable})
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    return output


def test_c_core_under_sanitizers():
    require_tools("make", "gcc", "objcopy")
    output = run(["make", "-C", str(C_TESTS), "test", f"PYTHON={sys.executable}"], timeout=900)
    assert "known failures" in output


def test_c_core_fuzz_bounded():
    require_tools("make", "gcc", "objcopy")
    output = run(["make", "-C", str(C_TESTS), "fuzz", f"PYTHON={sys.executable}",
                  f"FUZZ_SECONDS={FUZZ_SECONDS}"], timeout=FUZZ_SECONDS + 600)
    assert "no failures" in output


def test_binding_under_valgrind():
    require_tools("valgrind")
    run(["bash", str(ROOT / "tests" / "valgrind.sh")], timeout=900)
