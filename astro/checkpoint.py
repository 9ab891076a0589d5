"""GPTQ-format checkpoints: saving a quantized model and loading it back for evaluation.

A checkpoint directory holds:

- ``model.safetensors``: for each quantized linear layer ``NAME``, the tensors
  ``NAME.qweight`` (int32, ceil(in*bits/32) x out), ``NAME.qzeros`` (int32,
  groups x ceil(out*bits/32)), ``NAME.scales`` (float16, groups x out) and
  ``NAME.g_idx`` (int32, in). Every other parameter is stored in its model
  dtype, and a tied ``lm_head.weight`` is not stored twice.
- ``config.json``: the model configuration with a ``quantization_config``
  (``quant_method: "gptq"``, bits, group_size, desc_act, sym, static_groups,
  damp_percent, true_sequential, checkpoint_format ``"gptq"`` for format v1,
  which stores ``zero - 1``, or ``"gptq_v2"``, which stores the zero point
  itself). The producer and the astro settings (method, beta, ...) go under
  ``meta``, where GPTQ loaders expect them: gptqmodel 7.6 reads a top-level
  ``method`` key as the name of the quantization method.
- the tokenizer files, when a tokenizer is given.

``load_quantized`` rebuilds a torch model whose quantized layers are
``QuantLinear`` modules: they keep the packed tensors and dequantize them once,
on first use, to ``(codes - zeros) * scales`` in float32. Because scales are
stored in float16, the reloaded weights equal the in-memory quantized weights
with their scales rounded to float16.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger("astro")

__all__ = ["save_quantized", "load_quantized", "QuantLinear", "quantization_config",
           "resolve_checkpoint_format"]

_WEIGHTS_NAME = "model.safetensors"
_PACKED_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


def _torch_module_base():
    import torch

    return torch.nn.Module


class QuantLinear(_torch_module_base()):
    """A linear layer stored as GPTQ tensors, dequantized to float on first use."""

    def __init__(self, in_features, out_features, bits, group_size, bias=False,
                 checkpoint_format="v1", dtype=None):
        import torch

        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.checkpoint_format = checkpoint_format
        self.compute_dtype = dtype or torch.float32
        group = in_features if group_size == -1 else group_size
        num_groups = -(-in_features // group)
        zeros_words = -(-out_features * bits // 32)
        self.register_buffer("qweight", torch.zeros(-(-in_features * bits // 32), out_features, dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(num_groups, zeros_words, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(num_groups, out_features, dtype=torch.float16))
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32))
        if bias:
            self.bias = torch.nn.Parameter(torch.zeros(out_features, dtype=self.compute_dtype))
        else:
            self.register_parameter("bias", None)
        self._weight = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._weight = None
        super()._load_from_state_dict(*args, **kwargs)

    def dequantized_weight(self):
        """Return the float weight (out, in), computed once from the packed tensors."""
        import astro
        import torch

        if self._weight is None:
            tensors = {name: getattr(self, name).cpu().numpy() for name in _PACKED_SUFFIXES}
            codes, scales, zeros, g_idx = astro.unpack_gptq(
                tensors, self.bits, self.in_features, checkpoint_format=self.checkpoint_format
            )
            g_idx = np.asarray(g_idx, dtype=np.int64)
            weight = (codes.astype(np.float32) - zeros[:, g_idx]) * scales[:, g_idx]
            self._weight = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)).to(
                device=self.qweight.device, dtype=self.compute_dtype
            )
        return self._weight

    def forward(self, x):
        import torch.nn.functional as F

        return F.linear(x, self.dequantized_weight(), self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}")


def resolve_checkpoint_format(checkpoint_format: str, sym: bool) -> str:
    """Return "v1" or "v2" for a ``checkpoint_format`` argument of "auto", "v1" or "v2".

    "auto" picks v1 for symmetric quantization, whose zero points are never 0,
    and v2 otherwise. Format v1 stores ``zero - 1``, so a zero point of 0 wraps
    round, and gptqmodel 7.6 rejects asymmetric v1 checkpoints from other
    producers. Every loader that reads v2 reads asymmetric checkpoints exactly.
    """
    if checkpoint_format == "auto":
        return "v1" if sym else "v2"
    if checkpoint_format not in ("v1", "v2"):
        raise ValueError(
            f"checkpoint_format={checkpoint_format!r} is invalid; use 'auto', 'v1' or 'v2'"
        )
    return checkpoint_format


def quantization_config(config: dict) -> dict:
    """Return the ``quantization_config`` entry of config.json for pipeline settings."""
    from . import __version__

    checkpoint_format = config.get("checkpoint_format", "v1")
    meta = {"quantizer": [f"astro-ptq:{__version__}"],
            "astro_method": config.get("method", "astro")}
    for key in ("beta", "budget", "iterations"):
        if config.get(key) is not None:
            meta[f"astro_{key}"] = config[key]
    entry = {
        "quant_method": "gptq",
        "bits": config["bits"],
        "group_size": config["group_size"],
        "desc_act": bool(config.get("act_order", False)),
        "sym": bool(config.get("sym", False)),
        "static_groups": bool(config.get("static_groups", False)),
        "damp_percent": config.get("damp", 0.01),
        "true_sequential": bool(config.get("true_sequential", True)),
        "checkpoint_format": "gptq" if checkpoint_format == "v1" else "gptq_v2",
        "meta": meta,
    }
    return entry


def save_quantized(model, quantization, path, tokenizer=None, checkpoint_format="auto"):
    """Write ``model`` quantized by ``quantize_model`` as a GPTQ checkpoint directory.

    ``quantization`` is the ``ModelQuantization`` that ``quantize_model``
    returned for this model. ``checkpoint_format`` is "v1", "v2" or "auto"
    (v1 for symmetric, v2 for asymmetric quantization; see
    ``resolve_checkpoint_format``). Pass "v1" for loaders that read only v1.
    Returns the directory path.
    """
    import torch
    from safetensors.torch import save_file

    checkpoint_format = resolve_checkpoint_format(
        checkpoint_format, bool(quantization.config.get("sym", False)))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in quantization.layers.items():
        packed = layer.pack(format="gptq", checkpoint_format=checkpoint_format)
        for suffix in _PACKED_SUFFIXES:
            tensors[f"{name}.{suffix}"] = torch.from_numpy(np.ascontiguousarray(packed[suffix]))

    quantized_weights = {f"{name}.weight" for name in quantization.layers}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, value in model.state_dict().items():
        if name in quantized_weights or (tied and name == "lm_head.weight"):
            continue
        tensors[name] = value.detach().contiguous().cpu()
    save_file(tensors, str(path / _WEIGHTS_NAME), metadata={"format": "pt"})

    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    settings = dict(quantization.config, checkpoint_format=checkpoint_format)
    config["quantization_config"] = quantization_config(settings)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    logger.info("saved %d quantized layers to %s", len(quantization.layers), path)
    return path


def load_quantized(path, dtype=None):
    """Rebuild a torch causal LM from a checkpoint written by ``save_quantized``.

    Quantized layers become ``QuantLinear`` modules and the ``quantization_config``
    dict is stored as ``model.quantization_settings``; the model is returned in
    eval mode on the CPU. Load the tokenizer with
    ``transformers.AutoTokenizer.from_pretrained(path)``.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    weights = path / _WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found; is {path} a checkpoint written by astro?")
    dtype = torch.float32 if dtype is None else dtype
    config = AutoConfig.from_pretrained(str(path))
    qconfig = getattr(config, "quantization_config", None)
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != "gptq":
        raise ValueError(f"{path}/config.json has no GPTQ quantization_config")
    # Build a plain float model: transformers must not apply its own GPTQ loader.
    del config.quantization_config
    checkpoint_format = "v1" if qconfig.get("checkpoint_format", "gptq") == "gptq" else "v2"

    state = load_file(str(weights))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    quantized_names = sorted({k[: -len(".qweight")] for k in state if k.endswith(".qweight")})
    for name in quantized_names:
        linear = model.get_submodule(name)
        replacement = QuantLinear(
            linear.in_features, linear.out_features, qconfig["bits"], qconfig["group_size"],
            bias=linear.bias is not None, checkpoint_format=checkpoint_format, dtype=dtype,
        )
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, replacement)

    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{weights}: missing tensors {missing}, unexpected tensors {unexpected}")
    if tied:
        model.tie_weights()
    # Kept off model.config so that transformers treats the model as a plain one.
    model.quantization_settings = qconfig
    model.eval()
    return model
