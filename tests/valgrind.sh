#!/usr/bin/env bash
# Runs a small workload of the astro binding under valgrind memcheck.
#
# CPython, NumPy and OpenBLAS report errors of their own under memcheck
# (pymalloc arenas, hand-written BLAS kernels reading past a vector on
# purpose), so suppression files cannot keep up with every version.
# Instead the log is filtered. The run fails on any invalid read or write,
# use of uninitialised memory, bad free or definite leak whose stack passes
# through the astro extension (astro/_core*.so, functions named astro_* or
# py_*). Other records are only counted.
#
# Usage: tests/valgrind.sh            (skips with exit 0 where valgrind is missing)
# Environment: PYTHON (default python3), VALGRIND_LOG (keep the log there).
set -euo pipefail

if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind.sh: valgrind not found; skipping the memcheck pass"
    exit 0
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
LOG=${VALGRIND_LOG:-$(mktemp /tmp/astro-valgrind.XXXXXX.log)}
WORKLOAD=$(mktemp /tmp/astro-valgrind-workload.XXXXXX.py)
trap 'rm -f "$WORKLOAD"' EXIT

cat >"$WORKLOAD" <<'PY'
"""Exercise every binding entry point on small layers, errors included."""
import numpy as np

import astro
from astro import _core

rng = np.random.default_rng(0)
w = rng.standard_normal((24, 96), dtype=np.float32)
x = rng.standard_normal((3, 40, 96), dtype=np.float32)
mask = np.ones((3, 40), bool)
mask[1, 30:] = False
hessian = astro.Hessian(96).update(x, mask=mask)
h = hessian.matrix

for bits, group_size, act_order, static_groups in [(4, 32, False, False), (3, 64, True, False),
                                                  (2, -1, True, True), (8, 32, False, True)]:
    q = astro.quantize_layer(w, hessian, bits=bits, group_size=group_size, method="gptq",
                             act_order=act_order, static_groups=static_groups)
    for checkpoint_format in ("v1", "v2"):
        tensors = q.pack(checkpoint_format=checkpoint_format)
        codes, scales, zeros, g_idx = astro.unpack_gptq(tensors, bits, 96, checkpoint_format)
        assert (codes == q.codes).all()
    q.dequantize()
astro.quantize_layer(w, x, bits=4, group_size=32, method="rtn", mse=True)

# Dead columns, an all-dead layer, an indefinite H that needs more damping.
x_dead = x.copy()
x_dead[..., :5] = 0
astro.quantize_layer(w, x_dead, bits=4, group_size=32, method="gptq")
astro.quantize_layer(w, astro.Hessian(96).update(np.zeros((4, 96), np.float32)),
                     bits=4, group_size=32, method="gptq")
indefinite = np.eye(96, dtype=np.float32)
indefinite[0, 1] = indefinite[1, 0] = 3.0
astro.quantize_layer(w, astro.Hessian.from_matrix(indefinite), bits=4, group_size=32,
                     method="gptq")

# Error paths in Python and in the core.
for call in (
    lambda: astro.quantize_layer(w, astro.Hessian.from_matrix(indefinite), method="gptq",
                                 damp_max=0.5),
    lambda: astro.quantize_layer(np.full((2, 96), np.nan, np.float32), x, method="gptq"),
    lambda: _core.dequantize(q.codes, q.scales, q.zeros, np.full(96, 7, np.int32)),
    lambda: astro.quantize_layer(w, x, bits=9),
):
    try:
        call()
    except (ValueError, TypeError, astro.NumericalError):
        pass
    else:
        raise AssertionError("an invalid call did not raise")

_core.output_error(w, w, h)
try:
    from astro import regularize  # noqa: F401  (present once the solver lands)
    astro.quantize_layer(w, hessian, bits=3, group_size=32, method="astro")
except ImportError:
    pass
print("valgrind workload finished")
PY

# Use the installed package, or the in-place build of this checkout.
if ! (cd / && "$PYTHON" -c "import astro") >/dev/null 2>&1; then
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

# valgrind must start the interpreter itself, not a launcher script (pyenv).
PYTHON_BINARY=$("$PYTHON" -c "import sys; print(sys.executable)")

echo "valgrind.sh: running the workload under memcheck (a minute or two)"
cd "$ROOT"
status=0
PYTHONMALLOC=malloc OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_CORETYPE=Haswell \
    valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --num-callers=30 --log-file="$LOG" \
    "$PYTHON_BINARY" "$WORKLOAD" || status=$?
if [ "$status" -ne 0 ]; then
    echo "valgrind.sh: the workload failed under valgrind (exit status $status); log: $LOG"
    exit 1
fi

"$PYTHON" - "$LOG" <<'PY'
"""Fail on memcheck records whose stack passes through the astro extension."""
import re
import sys

ERROR_START = re.compile(
    r"^(Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|"
    r"Mismatched free|Source and destination overlap|.* bytes in .* blocks are definitely lost)"
)
OURS = re.compile(r"(/astro/_core[^ ]*\.so|\bastro_\w+|\bpy_\w+ \(_core\.c)")

records, current = [], []
with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
    for line in log:
        text = re.sub(r"^==\d+== ?", "", line.rstrip("\n"))
        if not text.strip():
            if current:
                records.append(current)
            current = []
        else:
            current.append(text)
if current:
    records.append(current)

errors = [r for r in records if ERROR_START.match(r[0])]
ours = [r for r in errors if any(OURS.search(frame) for frame in r)]
print(f"valgrind.sh: {len(errors)} memcheck record(s), {len(ours)} through the astro extension")
for record in ours[:10]:
    print("\n".join(record))
    print()
sys.exit(1 if ours else 0)
PY
echo "valgrind.sh: log kept at $LOG"
