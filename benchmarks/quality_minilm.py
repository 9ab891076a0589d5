"""Output error of RTN, GPTQ and Astro+GPTQ on every linear layer of MiniLM.

Weights are all-MiniLM-L6-v2's own float32 weights; inputs come from running
the model on Wikipedia text (tests/real_layers.py). Prints one line per layer
and, per setting, the geometric mean of Astro's error over GPTQ's.

    python benchmarks/quality_minilm.py [--settings 3:128,2:64]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import astro  # noqa: E402
from real_layers import minilm_layers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="3:128,2:64",
                        help="comma-separated bits:group_size pairs (default 3:128,2:64)")
    args = parser.parse_args()

    layers = {name: data for name, data in minilm_layers().items()
              if name.startswith("encoder.layer.")}
    for setting in args.settings.split(","):
        bits, group_size = (int(part) for part in setting.split(":"))
        ratios = []
        for name, (w, x) in layers.items():
            hessian = astro.Hessian(w.shape[1]).update(x)
            errors = {}
            for method in ("rtn", "gptq", "astro"):
                q = astro.quantize_layer(w, hessian, bits=bits, group_size=group_size, method=method)
                errors[method] = q.stats["output_error"]
            ratios.append(errors["astro"] / errors["gptq"])
            print(f"W{bits} g{group_size} {name:42s} rtn {errors['rtn']:.5f} "
                  f"gptq {errors['gptq']:.5f} astro {errors['astro']:.5f} "
                  f"astro/gptq {ratios[-1]:.3f}", flush=True)
        r = np.array(ratios)
        print(f"W{bits} g{group_size}: {len(r)} layers, astro/gptq geometric mean "
              f"{np.exp(np.log(r).mean()):.3f}, min {r.min():.3f}, max {r.max():.3f}, "
              f"astro worse on {int((r >= 1).sum())}", flush=True)


if __name__ == "__main__":
    main()
