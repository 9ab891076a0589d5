"""Whole-model quantization of Llama-family causal LMs, one decoder block at a time.

How ``quantize_model`` proceeds:

1. Run the calibration batches through the embeddings and stop at the first
   decoder block, keeping its inputs (hidden states plus the keyword arguments
   the model passes to every block: attention mask, rotary embeddings, ...).
2. For each block in order, quantize its linear layers in groups that share an
   input and hence a Hessian ``H = (2/n) X^T X``. With ``true_sequential`` the
   groups are q/k/v, then o, then gate/up, then down, and each group's Hessian
   is built from a forward pass through the block whose earlier groups are
   already quantized. Padding positions (mask 0) are left out of every Hessian.
3. Run the quantized block on the stored inputs; its outputs replace them and
   feed the next block. Only one block's activations are held at a time.

Embeddings, norms and ``lm_head`` stay in float. Each linear layer's weight is
replaced in place by its dequantized weight, so the model can be evaluated
directly. The integer codes are kept in the returned ``ModelQuantization``,
which ``astro.checkpoint.save_quantized`` writes to disk.
"""

from __future__ import annotations

import dataclasses
import logging
import time

logger = logging.getLogger("astro")

__all__ = ["quantize_model", "ModelQuantization", "SUBLAYER_GROUPS", "METHODS"]

METHODS = ("astro", "gptq", "rtn", "astro+rtn")

# Linear layers of a Llama block, grouped by shared input, in execution order.
SUBLAYER_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)

# Keyword arguments of a decoder block that must not be replayed from the capture.
_DROPPED_BLOCK_KWARGS = ("cache", "past_key_values", "past_key_value", "use_cache", "output_attentions")


@dataclasses.dataclass
class ModelQuantization:
    """Result of ``quantize_model``.

    ``layers`` maps each quantized linear layer's module name (for example
    ``model.layers.0.self_attn.q_proj``) to its ``astro.QuantizedLayer``.
    ``config`` is the dict of settings used and ``seconds`` the wall time.
    """

    layers: dict
    config: dict
    seconds: float
    calibration_tokens: int


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the needed input is seen."""


def _batches_from_calibration(calibration, batch_size: int, pad_token_id: int):
    """Split calibration data into a list of ``(input_ids, mask)`` batches.

    Accepted forms are a LongTensor (n, seqlen), a dict with ``input_ids`` and
    an optional ``attention_mask``, or a list of 1-D token sequences of any
    lengths, which are padded on the right and masked. ``mask`` is None when
    no position is padding.
    """
    import torch

    if isinstance(calibration, dict):
        ids = torch.as_tensor(calibration["input_ids"], dtype=torch.long)
        mask = calibration.get("attention_mask")
        mask = None if mask is None else torch.as_tensor(mask).to(torch.long)
    elif torch.is_tensor(calibration) and calibration.dim() == 2:
        ids, mask = calibration.to(torch.long), None
    elif isinstance(calibration, (list, tuple)):
        rows = [torch.as_tensor(r, dtype=torch.long).reshape(-1) for r in calibration]
        if not rows or any(r.numel() == 0 for r in rows):
            raise ValueError("calibration sequences must be non-empty")
        length = max(r.numel() for r in rows)
        ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : r.numel()] = r
            mask[i, : r.numel()] = 1
    else:
        raise TypeError(
            "calibration must be a LongTensor (n, seqlen), a dict with input_ids, "
            f"or a list of token sequences, got {type(calibration).__name__}"
        )
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise ValueError(f"calibration input_ids must have shape (n, seqlen) with n > 0, got {tuple(ids.shape)}")
    if mask is not None:
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} differs from input_ids {tuple(ids.shape)}")
        if bool(mask.all()):
            mask = None
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [
        (ids[s : s + batch_size], None if mask is None else mask[s : s + batch_size])
        for s in range(0, ids.shape[0], batch_size)
    ]


def _capture_block_inputs(model, layers, batches):
    """Return per-batch ``(hidden_states, block_kwargs)`` entering the first block."""
    import torch

    captured = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        rest = {k: v for k, v in kwargs.items() if k != "hidden_states" and k not in _DROPPED_BLOCK_KWARGS}
        captured.append((hidden.detach(), rest))
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids, mask in batches:
                try:
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError("the first decoder block was not reached during the forward pass")
    return captured


def _run_block(block, hidden, kwargs):
    output = block(hidden, use_cache=False, **kwargs)
    return output[0] if isinstance(output, tuple) else output


def _collect_hessians(block, modules, states, masks):
    """Build one Hessian per module input over all batches.

    ``modules`` are listed in execution order; each pass through the block
    stops at the last one, so later sub-layers are not run.
    """
    import astro
    import torch

    hessians = [astro.Hessian(m.in_features) for m in modules]
    current_mask = [None]

    def make_hook(hessian, is_last):
        def hook(mod, args):
            hessian.update(args[0].detach().float(), mask=current_mask[0])
            if is_last:
                raise _StopForward

        return hook

    handles = [
        m.register_forward_pre_hook(make_hook(h, i == len(modules) - 1))
        for i, (m, h) in enumerate(zip(modules, hessians))
    ]
    try:
        with torch.no_grad():
            for (hidden, kwargs), mask in zip(states, masks):
                current_mask[0] = None if mask is None else mask.bool()
                try:
                    _run_block(block, hidden, kwargs)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return hessians


def _quantize_linear(module, hessian, options):
    """Quantize one torch Linear and replace its weight by the dequantized weight."""
    import astro
    import torch

    quantized = astro.quantize_layer(module.weight.detach().float(), hessian, **options)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(quantized.dequantize()).to(module.weight.dtype))
    return quantized


def _layer_options(bits, group_size, method, sym, act_order, static_groups, damp, mse, extra):
    options = dict(bits=bits, group_size=group_size, method=method, sym=sym,
                   act_order=act_order, static_groups=static_groups, damp=damp, mse=mse)
    options.update({k: v for k, v in extra.items() if v is not None})
    return options


def quantize_model(
    model,
    calibration,
    *,
    bits: int = 4,
    group_size: int = 128,
    method: str = "astro",
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    damp: float = 0.01,
    mse: bool = False,
    beta=None,
    budget=None,
    iterations=None,
    true_sequential: bool = True,
    batch_size: int = 1,
    num_blocks=None,
    progress: bool = True,
    **layer_options,
) -> ModelQuantization:
    """Quantize every linear layer in the decoder blocks of ``model`` in place.

    ``calibration`` is a LongTensor (n, seqlen) of token ids, a dict with
    ``input_ids`` and ``attention_mask``, or a list of 1-D token sequences
    (padded here and masked out of the Hessians). ``method`` is one of
    "astro", "gptq", "rtn" and "astro+rtn". The remaining arguments are passed
    to ``astro.quantize_layer``, and ``beta``, ``budget`` and ``iterations``
    only when given, so that its defaults apply otherwise. ``batch_size`` is the number
    of calibration sequences per forward pass. ``num_blocks`` quantizes only
    the first blocks and leaves the rest in float (for quick experiments).
    """
    import torch

    from .models import decoder_layers

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layers = decoder_layers(model)
    if num_blocks is not None:
        if not 1 <= num_blocks <= len(layers):
            raise ValueError(f"num_blocks must be in [1, {len(layers)}], got {num_blocks}")
        layers = layers[:num_blocks]
    pad_token_id = getattr(model.config, "pad_token_id", None) or 0
    batches = _batches_from_calibration(calibration, batch_size, pad_token_id)
    masks = [mask for _, mask in batches]
    calibration_tokens = sum(
        int(ids.numel() if mask is None else mask.sum()) for ids, mask in batches
    )
    options = _layer_options(bits, group_size, method, sym, act_order, static_groups, damp, mse,
                             dict(beta=beta, budget=budget, iterations=iterations, **layer_options))
    needs_hessian = method != "rtn"
    if not needs_hessian:
        # RTN needs no calibration data, so no output error can be computed.
        options["compute_error"] = False
    # A stage is the set of sub-layer groups quantized after one forward pass.
    if true_sequential:
        stages = [(group,) for group in SUBLAYER_GROUPS]
    else:
        stages = [SUBLAYER_GROUPS]

    start = time.perf_counter()
    was_training = model.training
    model.eval()
    states = _capture_block_inputs(model, layers, batches) if needs_hessian else None

    iterator = enumerate(layers)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(layers), desc=f"quantize {method} W{bits}", unit="block")

    results = {}
    for index, block in iterator:
        block_start = time.perf_counter()
        for stage in stages:
            groups = [[block.get_submodule(name) for name in group] for group in stage]
            if needs_hessian:
                hessians = _collect_hessians(block, [g[0] for g in groups], states, masks)
            else:
                hessians = [None] * len(groups)
            for names, modules, hessian in zip(stage, groups, hessians):
                for name, module in zip(names, modules):
                    full_name = f"model.layers.{index}.{name}"
                    results[full_name] = _quantize_linear(module, hessian, options)
                    stats = results[full_name].stats
                    logger.info("%s: output error %.5f, %.2f s", full_name,
                                stats.get("output_error", float("nan")),
                                stats.get("seconds", float("nan")))
        if needs_hessian and index + 1 < len(layers):
            with torch.no_grad():
                for j, (hidden, kwargs) in enumerate(states):
                    states[j] = (_run_block(block, hidden, kwargs).detach(), kwargs)
        if progress:
            iterator.set_postfix_str(f"{time.perf_counter() - block_start:.1f} s/block")

    model.train(was_training)
    config = dict(options)
    config["true_sequential"] = true_sequential
    return ModelQuantization(
        layers=results,
        config=config,
        seconds=time.perf_counter() - start,
        calibration_tokens=calibration_tokens,
    )
