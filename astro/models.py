"""Loading Llama-family causal LMs from a Hugging Face directory or a GGUF file.

GGUF files are read with the ``gguf`` package and every tensor is dequantized to
float32, so a quantized GGUF becomes a plain float model (that float model is
the baseline every method is compared against). The configuration and the
tokenizer come from transformers' GGUF support, which needs no extra package.
The weights are mapped here because transformers' own GGUF weight loader
requires ``accelerate``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger("astro")

__all__ = ["load_model", "load_gguf_state_dict", "decoder_layers", "check_llama_family"]

# GGUF tensor names (llama.cpp's convention) -> transformers Llama parameter names.
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def _unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo the row order llama.cpp's converter applies to q/k projections.

    The converter interleaves the two rotary halves of each head, mapping rows
    ``[h, half, j]`` to ``[h, j, half]``. Transformers' rotary embedding
    expects the halves in sequence, so this swaps them back.
    """
    rows = weight.shape[0]
    head_half = rows // num_heads // 2
    grouped = weight.reshape(num_heads, head_half, 2, *weight.shape[1:])
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(weight.shape))


def load_gguf_state_dict(path, config) -> dict:
    """Read a Llama GGUF file into a float32 torch state dict for ``config``."""
    import gguf
    import torch

    reader = gguf.GGUFReader(str(path))
    state = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        values = np.asarray(values, dtype=np.float32)
        if tensor.name in _GGUF_GLOBAL_NAMES:
            name = _GGUF_GLOBAL_NAMES[tensor.name]
        else:
            match = _GGUF_BLOCK_RE.match(tensor.name)
            if match is None or match.group(2) not in _GGUF_BLOCK_NAMES:
                raise ValueError(
                    f"unsupported tensor {tensor.name!r} in {path}; only Llama-architecture "
                    "GGUF files (llama.cpp tensor names) are supported"
                )
            block, suffix = match.groups()
            name = f"model.layers.{block}.{_GGUF_BLOCK_NAMES[suffix]}"
            if suffix == "attn_q.weight":
                values = _unpermute_rotary(values, config.num_attention_heads)
            elif suffix == "attn_k.weight":
                values = _unpermute_rotary(values, config.num_key_value_heads)
        state[name] = torch.from_numpy(values.copy())
    return state


def _load_gguf(path: Path, dtype):
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    check_llama_family(config)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    state = load_gguf_state_dict(path, config)
    config.tie_word_embeddings = "lm_head.weight" not in state

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers (rotary inverse frequencies) were created on the meta device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.to(dtype), tokenizer


def check_llama_family(config) -> None:
    """Raise ValueError unless ``config`` describes a decoder the pipeline supports."""
    supported = {"llama", "mistral", "qwen2", "qwen3"}
    if getattr(config, "model_type", None) not in supported:
        raise ValueError(
            f"model type {getattr(config, 'model_type', None)!r} is not supported; "
            f"expected a Llama-family causal LM ({', '.join(sorted(supported))})"
        )


def load_model(path, dtype=None):
    """Load ``(model, tokenizer)`` from a Hugging Face directory or a ``.gguf`` file.

    ``dtype`` defaults to torch.float32. The model is put in eval mode on the CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path, dtype)
    elif path.is_dir():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path))
        check_llama_family(config)
        if getattr(config, "quantization_config", None):
            raise ValueError(
                f"{path} is a quantized checkpoint; load it with astro.load_quantized"
            )
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    else:
        raise ValueError(f"{path} is neither a Hugging Face model directory nor a .gguf file")
    model.eval()
    logger.info(
        "loaded %s: %d blocks, hidden size %d, %.1fM parameters",
        path, model.config.num_hidden_layers, model.config.hidden_size,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model, tokenizer


def decoder_layers(model):
    """Return the list of decoder blocks of a Llama-family causal LM."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers; expected a Llama-family causal LM")
    return layers
