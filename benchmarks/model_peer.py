"""Whole-model GPTQ: astro against llm-compressor on the default model.

Both quantize SmolLM2-135M-Instruct (float32, CPU) from the same calibration
windows (the fit articles of benchmarks/model_setup.py) and are scored
on the same held-out test windows. It needs the ``bench`` extra
(llm-compressor) in the interpreter:

    pip install -e ".[model,bench]"
    python benchmarks/model_peer.py --threads 2 --settings 3:64,4:64

The group size must divide every layer's input width: llm-compressor 0.14
rejects group 128 on this model's 576-wide layers (576 = 4.5 x 128), and with
its divisibility check bypassed its quantizer fails on the short last group.
Groups of 64 divide both 576 and 1536.

Rows per setting:

- ``astro matched``: astro's GPTQ set up as llm-compressor 0.14 runs by
  default: act-order with static groups (scales and zero points from the whole
  weight before the sweep, as its ``actorder="static"``), and every layer of a
  block calibrated from the block's float inputs (not true-sequential).
- ``llm-compressor``: ``oneshot`` with ``GPTQModifier`` (block 128, damping
  0.01, actorder static), the sequential pipeline, quantized outputs passed on.
- ``astro default``: astro's own defaults (true-sequential, no act-order,
  group parameters taken at each group's start as in the reference GPTQ).

Wall time is that of the quantization call alone (model already loaded), and
for llm-compressor it includes its data loading and graph tracing, which are
part of what a user waits for.
"""
import argparse
import json
import platform
import tempfile
import time

import torch

import model_setup
from astro import assets
from astro.evaluate import perplexity
from astro.models import load_model
from astro.pipeline import quantize_model


def quantize_llmcompressor(model, tokenizer, windows, bits: int, group_size: int) -> float:
    """Quantize ``model`` in place with llm-compressor's GPTQ; return the seconds taken."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    num_windows, seqlen = windows.shape
    dataset = Dataset.from_dict({
        "input_ids": windows.tolist(),
        "attention_mask": [[1] * seqlen for _ in range(num_windows)],
    })
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=bits, type="int", symmetric=False,
                                 strategy="group", group_size=group_size),
    )
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"],
                          block_size=128, dampening_frac=0.01, actorder="static")
    with tempfile.TemporaryDirectory() as config_dir:
        # oneshot rereads config.json from model.config.name_or_path, which a
        # model built from a GGUF file lacks, so point it at a saved copy.
        model.config.save_pretrained(config_dir)
        model.config._name_or_path = config_dir
        started = time.perf_counter()
        oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=recipe,
                num_calibration_samples=num_windows, max_seq_length=seqlen,
                shuffle_calibration_samples=False, pipeline="sequential")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="3:64,4:64",
                        help="comma-separated bits:group_size pairs")
    parser.add_argument("--json", default="model_peer.json", help="output file")
    model_setup.add_arguments(parser)
    args = parser.parse_args()

    import llmcompressor

    setup = model_setup.prepare(args)
    model, tokenizer, windows, float_state = (setup.model, setup.tokenizer, setup.windows,
                                              setup.float_state)
    print(f"calibration {tuple(windows.shape)}; torch {torch.__version__}, "
          f"llm-compressor {llmcompressor.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor()}", flush=True)

    records = []

    def emit(record, scored_model):
        record["ppl"] = perplexity(scored_model, setup.test_ids, 2048, max_windows=args.eval_windows)["ppl"]
        records.append(record)
        print(json.dumps(record), flush=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(records, handle, indent=1)

    emit({"run": "float"}, model)
    for setting in args.settings.split(","):
        bits, group_size = (int(part) for part in setting.split(":"))
        base = {"bits": bits, "group_size": group_size}

        model.load_state_dict(float_state)
        result = quantize_model(model, windows, method="gptq", bits=bits, group_size=group_size,
                                act_order=True, static_groups=True, true_sequential=False,
                                progress=False)
        emit({"run": "astro matched", **base, "seconds": result.seconds}, model)

        model.load_state_dict(float_state)
        result = quantize_model(model, windows, method="gptq", bits=bits, group_size=group_size,
                                progress=False)
        emit({"run": "astro default", **base, "seconds": result.seconds}, model)

        # llm-compressor wraps the model's modules, so it gets a fresh copy.
        peer_model, _ = load_model(assets.default_model_path())
        peer_model.load_state_dict(float_state)
        seconds = quantize_llmcompressor(peer_model, tokenizer, windows, bits, group_size)
        emit({"run": "llm-compressor", **base, "seconds": seconds}, peer_model)
        del peer_model


if __name__ == "__main__":
    main()
