"""Check that third-party GPTQ loaders read checkpoints written by astro.save_quantized.

For each setting (method, bits, sym, act_order, checkpoint format) the script
quantizes a tiny random Llama with astro, saves it with
``astro.save_quantized`` and loads it back with:

- ``astro``: ``astro.load_quantized(dir)`` in float32, and ``astro-fp16`` in float16;
- ``gptqmodel``: ``GPTQModel.load(dir, backend=BACKEND.GPTQ_TORCH)`` on the CPU in float16;
- ``hf``: ``transformers.AutoModelForCausalLM.from_pretrained(dir)`` in float16 with
  backend "gptq_torch" (this path goes through optimum and gptqmodel);
- ``hf-auto``: the same with the kernel that gptqmodel selects by itself.

For each model it prints the max |logit difference| on random token ids,
divided by the max |logit|, and the max |weight difference| of the dequantized
layers, divided by the max |weight| of that layer, first against the model
that ``astro.quantize_model`` quantized in memory (float32 scales), then
against ``astro-fp16``, with the class of the loaded layers. A loader that reads the tensors as astro wrote them
gives weights equal to ``astro-fp16`` when its kernel computes in float16.
Kernels that compute in bfloat16 differed by up to 5.3e-3 here, while a zero
point or code that is off by one step typically differs by more than 1e-2 for
2 to 4 bits.
Lines that exceed the tolerance are marked MISMATCH and make the exit status 1.
``--zero-point-zero`` adds groups whose zero point is 0, which format v1 stores
as -1.

Results with gptqmodel 7.6.0 and optimum 2.3.0 on the CPU:

- every setting that loads matches astro-fp16 exactly with the float16 kernel
  TorchLinear (2, 3, 4 and 8 bits, sym on and off, act_order on and off,
  formats v1 and v2), and within 5.3e-3 with the bfloat16 kernel TorchAtenLinear;
- GPTQModel.load rejects format v1 with sym=False unless the config's
  ``meta.quantizer`` names gptqmodel >= 0.9.0, while the transformers path loads it;
- with zero points of 0 in format v1, both paths read wrong zero points at 2, 4
  and 8 bits. gptqmodel adds 1 to all fields of a packed word at once, so the
  carry out of a field that stores -1 spills into the next field. At 3 bits it
  converts each field on its own and reads them correctly;
- gptqmodel reads the ``method`` key of ``quantization_config`` before
  ``quant_method``, and astro writes its own method name there. For "astro",
  "rtn" and "astro+rtn", GPTQModel.from_quantized raises "Unknown quantization
  method", and GPTQModel.load hands the folder to transformers, which needs
  optimum and ignores the requested backend. The transformers path loads them.

gptqmodel 7.7.0 requires torch >= 2.14.1, so this uses gptqmodel 7.6.0 with
torch 2.13.0. Run it in a separate virtual environment from the repository
root, with astro's extension already built in place::

    python3 -m venv /work/venvs/gptqcheck
    /work/venvs/gptqcheck/bin/pip install torch==2.13.0
    /work/venvs/gptqcheck/bin/pip install gptqmodel==7.6.0 torch==2.13.0 scipy-openblas32
    /work/venvs/gptqcheck/bin/pip install optimum torch==2.13.0   # for hf and hf-auto
    OMP_NUM_THREADS=1 PYTHONPATH=. /work/venvs/gptqcheck/bin/python benchmarks/check_gptq_loader.py

The default 32 settings take about 3 minutes on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import sys
import tempfile
import traceback
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

import astro

HIDDEN = 256
INTERMEDIATE = 512
VOCAB = 512


def build_model(seed: int, init_std: float):
    """Return a random 2-block Llama whose weights are large enough for 2-4 bit error to show."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        initializer_range=init_std,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    return model


def build_tokenizer():
    """Return a word-level tokenizer over VOCAB made-up words, because GPTQModel.load requires one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def random_ids(seed: int, batch: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> np.ndarray:
    return model(input_ids=ids).logits.float().cpu().numpy()


@torch.no_grad()
def dense_weight(module, in_features: int, dtype) -> np.ndarray:
    """Return the (out, in) float weight a linear-like module applies, by feeding it the identity."""
    eye = torch.eye(in_features, dtype=dtype)
    output = module(eye).float()
    bias = getattr(module, "bias", None)
    if bias is not None:
        output = output - bias.float()
    return output.T.cpu().numpy()


def load_gptqmodel(path: Path):
    from gptqmodel import BACKEND, GPTQModel

    # The GPTQ_TORCH kernel accepts only float16 and bfloat16 activations.
    wrapper = GPTQModel.load(str(path), device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16)
    return wrapper.model.eval()


def load_transformers(path: Path, backend="gptq_torch"):
    from transformers import AutoModelForCausalLM, GPTQConfig

    # transformers keeps the checkpoint's quantization_config and takes only `backend` from this one.
    override = GPTQConfig(bits=4, backend=backend)
    return AutoModelForCausalLM.from_pretrained(
        str(path), device_map="cpu", dtype=torch.float16, quantization_config=override
    ).eval()


def load_transformers_auto(path: Path):
    from transformers import AutoModelForCausalLM

    # On the CPU gptqmodel 7.6.0 picks TorchAtenLinear here, which computes in bfloat16.
    return AutoModelForCausalLM.from_pretrained(str(path), device_map="cpu", dtype=torch.float16).eval()


LOADERS = {"gptqmodel": load_gptqmodel, "hf": load_transformers, "hf-auto": load_transformers_auto}

# Max relative weight difference from astro-fp16 that still counts as reading the
# checkpoint correctly. Identity-matrix products in float16 are exact, so kernels
# that dequantize in float16 match exactly. TorchAtenLinear (gptqmodel 7.6.0, 4 bits
# on the CPU) works in bfloat16 and rounds the scales and the zero-point term,
# which cost up to 5.3e-3 on these models.
WEIGHT_TOLERANCE = 1e-3
BFLOAT16_KERNELS = {"TorchAtenLinear"}
BFLOAT16_WEIGHT_TOLERANCE = 1e-2


def outputs_of(model, ids, names, in_features):
    """Return the logits on ``ids`` and the dequantized weight of each quantized layer."""
    weights = {
        name: dense_weight(model.get_submodule(name), in_features[name], model.dtype) for name in names
    }
    return logits_of(model, ids), weights


def relative_diffs(outputs, reference):
    """Return max |logit diff| / max |logit| and the max over layers of max |weight diff| / max |weight|."""
    logits, weights = outputs
    reference_logits, reference_weights = reference
    logit_diff = float(np.abs(logits - reference_logits).max()) / float(np.abs(reference_logits).max())
    weight_diff = max(
        float(np.abs(weights[name] - expected).max()) / float(np.abs(expected).max())
        for name, expected in reference_weights.items()
    )
    return logit_diff, weight_diff


def run_setting(args, bits, sym, act_order, method, checkpoint_format, loaders, workdir: Path):
    """Quantize, save and reload one setting, and return max |logit| and one result row per loader."""
    model = build_model(args.seed, args.init_std)
    if args.zero_point_zero:
        # With sym=False a group of nonnegative weights gets zero point 0, which
        # format v1 stores as -1.
        with torch.no_grad():
            weight = model.model.layers[0].self_attn.q_proj.weight
            weight[:4, : args.group_size].abs_()
    calibration = random_ids(args.seed + 1, 8, 64)
    result = astro.quantize_model(
        model, calibration, bits=bits, group_size=args.group_size, method=method,
        sym=sym, act_order=act_order, progress=False,
    )
    path = workdir / f"{method}-b{bits}-sym{int(sym)}-act{int(act_order)}-{checkpoint_format}"
    astro.save_quantized(model, result, path, tokenizer=build_tokenizer(), checkpoint_format=checkpoint_format)

    names = sorted(result.layers)
    in_features = {name: model.get_submodule(name).in_features for name in names}
    ids = random_ids(args.seed + 2, 4, 32)
    memory = outputs_of(model, ids, names, in_features)

    candidates = {
        "astro": astro.load_quantized,
        "astro-fp16": lambda p: astro.load_quantized(p, dtype=torch.float16),
    }
    candidates.update({name: LOADERS[name] for name in loaders})
    outputs, rows = {}, {}
    for loader_name, load in candidates.items():
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                loaded = load(path)
                outputs[loader_name] = outputs_of(loaded, ids, names, in_features)
        except Exception as error:  # report the loader's failure and keep checking the rest
            if args.verbose:
                traceback.print_exc()
            rows[loader_name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:110]}"
            continue
        rows[loader_name] = relative_diffs(outputs[loader_name], memory)
        if loader_name in LOADERS:
            kernel = type(loaded.get_submodule(names[0])).__name__
            rows[loader_name] += relative_diffs(outputs[loader_name], outputs["astro-fp16"]) + (kernel,)
    return float(np.abs(memory[0]).max()), rows


def print_setting(args, bits, sym, act_order, method, checkpoint_format, workdir):
    """Run one setting, print one line per loader and return (mismatches, load failures)."""
    scale, rows = run_setting(args, bits, sym, act_order, method, checkpoint_format, args.loaders, workdir)
    print(f"\n{method} bits={bits} sym={sym} act_order={act_order} group_size={args.group_size} "
          f"format={checkpoint_format} max|logit|={scale:.2f}")
    mismatches = failures = 0
    for loader_name, row in rows.items():
        if isinstance(row, str):
            print(f"  {loader_name:10s} {row}")
            failures += 1
            continue
        line = f"  {loader_name:10s} vs memory: logits {row[0]:.2e} weights {row[1]:.2e}"
        if len(row) == 5:
            kernel = row[4]
            line += f" | vs astro-fp16: logits {row[2]:.2e} weights {row[3]:.2e} ({kernel})"
            tolerance = BFLOAT16_WEIGHT_TOLERANCE if kernel in BFLOAT16_KERNELS else WEIGHT_TOLERANCE
            if row[3] > tolerance:
                line += "  MISMATCH"
                mismatches += 1
        print(line)
    return mismatches, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=["gptq"],
                        help="astro.quantize_model methods to check")
    parser.add_argument("--checkpoint-formats", nargs="+", default=["auto", "v1", "v2"], choices=["auto", "v1", "v2"],
                        help="GPTQ checkpoint formats to write: v1 stores zero - 1, v2 stores zero")
    parser.add_argument("--sym", choices=["both", "true", "false"], default="both")
    parser.add_argument("--act-order", choices=["both", "true", "false"], default="both")
    parser.add_argument("--loaders", nargs="+", default=None,
                        help="third-party loaders: gptqmodel, hf, hf-auto (default: those installed)")
    parser.add_argument("--init-std", type=float, default=0.1,
                        help="standard deviation of the random weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the checkpoints in this folder (default: a temporary one)")
    parser.add_argument("--zero-point-zero", action="store_true",
                        help="make the first group of 4 q_proj rows nonnegative, so that sym=False "
                             "gives them zero point 0")
    parser.add_argument("--verbose", action="store_true", help="print loader logs and tracebacks")
    args = parser.parse_args()

    if not args.verbose:
        logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    if args.loaders is None:
        args.loaders = []
        if importlib.util.find_spec("gptqmodel"):
            args.loaders.append("gptqmodel")
        if importlib.util.find_spec("gptqmodel") and importlib.util.find_spec("optimum"):
            args.loaders += ["hf", "hf-auto"]

    flags = {"both": [False, True], "true": [True], "false": [False]}
    versions = [f"{package} {version(package)}" for package in ("torch", "transformers", "gptqmodel", "optimum")
                if importlib.util.find_spec(package)]
    print("versions:", ", ".join(versions))
    print("max |logit diff| / max |logit| and max |weight diff| / max |weight| over layers,\n"
          "against the in-memory quantized model and against astro.load_quantized in float16")

    mismatches = failures = 0
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.out or Path(temporary)
        for method in args.methods:
            for bits in args.bits:
                for sym in flags[args.sym]:
                    for act_order in flags[args.act_order]:
                        for checkpoint_format in args.checkpoint_formats:
                            counts = print_setting(args, bits, sym, act_order, method, checkpoint_format, workdir)
                            mismatches += counts[0]
                            failures += counts[1]
    print(f"\n{mismatches} mismatches, {failures} failed loads")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
