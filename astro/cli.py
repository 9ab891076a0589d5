"""The ``astro`` command line: fetch, quantize, eval and demo.

Text arguments take a file path or a bundled text name (``wiki``, ``c4``,
``tiny``, ...). Every text file is split into documents, and a fixed-seed 25 %
of them is held out. By default ``quantize`` draws its calibration windows from
the other 75 % and ``eval`` scores only the held-out part, so evaluation
articles never appear in calibration windows (``--calibration-split all`` and
``--text-split all`` use whole files instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("astro")

# Sizes of `astro demo` (float baseline, RTN, GPTQ and Astro at W3 g128, four
# perplexity runs), chosen to finish within 15 minutes on a 2-core CPU: the
# whole demo took 4 min 43 s on an idle 2-core machine (assets cached).
DEMO_CALIBRATION_WINDOWS = 16
DEMO_CALIBRATION_SEQLEN = 512
DEMO_EVAL_WINDOWS = 4
DEMO_EVAL_SEQLEN = 2048


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------

def _set_threads(threads):
    if threads is None:
        return
    import astro
    import torch

    torch.set_num_threads(threads)
    astro.set_num_threads(threads)


def _is_checkpoint(path: Path) -> bool:
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    return "quantization_config" in json.loads(config.read_text())


def _load(model_arg):
    """Load ``(model, tokenizer)`` from a GGUF file, a HF directory or a checkpoint."""
    from .assets import default_model_path
    from .models import load_model

    path = default_model_path() if model_arg is None else Path(model_arg).expanduser()
    if _is_checkpoint(path):
        from transformers import AutoTokenizer

        from .checkpoint import load_quantized

        return load_quantized(path), AutoTokenizer.from_pretrained(str(path))
    return load_model(path)


def _documents(text_arg, split, seed, eval_fraction):
    """Return the documents of a text argument for ``split`` (calibration, eval, all)."""
    from .data import read_documents, resolve_text, split_documents

    docs = read_documents(resolve_text(text_arg))
    if split == "all":
        return docs
    calibration, evaluation = split_documents(docs, eval_fraction=eval_fraction, seed=seed)
    return calibration if split == "calibration" else evaluation


def _calibration_windows(tokenizer, args, validation_fraction=None):
    """Return ``(windows, validation_ids)``; ``validation_ids`` is None without a fraction.

    The validation documents are a seeded share of the calibration documents
    (never of the held-out evaluation documents), and the windows come from
    the rest.
    """
    from .data import calibration_windows, split_documents, tokenize_documents

    split = "all" if args.calibration_split == "all" else "calibration"
    docs = _documents(args.calibration, split, args.split_seed, args.eval_fraction)
    validation_ids = None
    if validation_fraction is not None:
        docs, validation_docs = split_documents(docs, eval_fraction=validation_fraction,
                                                seed=args.split_seed + 1)
        validation_ids = tokenize_documents(tokenizer, validation_docs)
    ids = tokenize_documents(tokenizer, docs)
    windows = calibration_windows(ids, args.num_windows, args.seqlen, seed=args.seed)
    return windows, validation_ids


def _parse_beta(text):
    """Parse ``--beta``: a positive number, or ``auto`` for the validation search."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _eval_tokens(tokenizer, args):
    from .data import tokenize_documents

    split = "all" if args.text_split == "all" else "eval"
    docs = _documents(args.text, split, args.split_seed, args.eval_fraction)
    return tokenize_documents(tokenizer, docs)


def _quantize_options(args) -> dict:
    beta = None if args.beta == "auto" else args.beta
    return dict(
        bits=args.bits, group_size=args.group_size, method=getattr(args, "method", "astro"),
        sym=args.sym,
        act_order=args.act_order, static_groups=args.static_groups, damp=args.damp,
        beta=beta, budget=args.budget,
        iterations=args.iterations, batch_size=args.batch_size,
    )


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------

def cmd_fetch(args) -> int:
    from .assets import fetch_assets

    names = ["smollm2", "text"] + (["minilm"] if args.minilm else [])
    for name, directory in fetch_assets(names, force=args.force).items():
        print(f"{name}: {directory}")
    return 0


def _quantize_with_beta_search(model, tokenizer, args):
    """Run ``astro.tuning.select_beta`` for ``--beta auto`` and print its runs."""
    from .tuning import select_beta

    if args.method not in ("astro", "astro+rtn"):
        raise ValueError(f"--beta auto applies to --method astro or astro+rtn, not {args.method}")
    if args.budget is not None:
        raise ValueError("--beta auto and --budget exclude each other: pass only one")
    if not 0.0 < args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction must be in (0, 1), got {args.validation_fraction}")
    windows, validation_ids = _calibration_windows(tokenizer, args, args.validation_fraction)
    options = _quantize_options(args)
    del options["beta"], options["budget"]
    selection = select_beta(model, windows, validation_ids, seqlen=args.eval_seqlen,
                            max_windows=args.validation_windows, max_runs=args.beta_runs,
                            progress=not args.quiet, **options)
    for run in selection.runs:
        print(f"beta {run['beta']:.3g}: validation perplexity {run['validation_ppl']:.4f} "
              f"(quantize {run['quantize_seconds']:.1f} s)")
    print(f"chose beta {selection.beta:.3g} in {selection.seconds:.1f} s")
    return selection.quantization


def cmd_quantize(args) -> int:
    from .checkpoint import save_quantized
    from .evaluate import perplexity
    from .pipeline import quantize_model

    model, tokenizer = _load(args.model)
    if args.beta == "auto":
        result = _quantize_with_beta_search(model, tokenizer, args)
    else:
        windows, _ = _calibration_windows(tokenizer, args)
        result = quantize_model(model, windows, progress=not args.quiet, **_quantize_options(args))
    print(f"quantized {len(result.layers)} layers with {args.method} W{args.bits} "
          f"g{args.group_size} in {result.seconds:.1f} s "
          f"({result.calibration_tokens} calibration tokens)")
    if args.output:
        save_quantized(model, result, args.output, tokenizer=tokenizer,
                       checkpoint_format=args.checkpoint_format)
        print(f"saved checkpoint to {args.output}")
    if args.eval:
        ppl = perplexity(model, _eval_tokens(tokenizer, args), seqlen=args.eval_seqlen,
                         max_windows=args.max_windows, progress=not args.quiet)
        print(f"perplexity {ppl['ppl']:.4f} ({ppl['windows']} windows of {args.eval_seqlen} tokens)")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import perplexity

    model, tokenizer = _load(args.model)
    ppl = perplexity(model, _eval_tokens(tokenizer, args), seqlen=args.eval_seqlen,
                     max_windows=args.max_windows, progress=not args.quiet)
    print(f"perplexity {ppl['ppl']:.4f} ({ppl['windows']} windows of {args.eval_seqlen} tokens, "
          f"{ppl['seconds']:.1f} s)")
    return 0


def cmd_demo(args) -> int:
    from .assets import fetch_assets
    from .evaluate import perplexity
    from .pipeline import quantize_model

    if args.beta == "auto":
        raise ValueError("--beta auto runs several quantizations and is only available in "
                         "'astro quantize'; pass a number to 'astro demo'")
    start = time.perf_counter()
    if args.model is None:
        fetch_assets()
    model, tokenizer = _load(args.model)
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    windows, _ = _calibration_windows(tokenizer, args)
    eval_ids = _eval_tokens(tokenizer, args)
    print(f"calibration: {windows.shape[0]} windows of {windows.shape[1]} tokens; "
          f"evaluation: {min(args.max_windows, eval_ids.numel() // args.eval_seqlen)} "
          f"held-out windows of {args.eval_seqlen} tokens")

    rows = []
    score = perplexity(model, eval_ids, seqlen=args.eval_seqlen, max_windows=args.max_windows,
                       progress=not args.quiet)
    rows.append(("float", score["ppl"], 0.0, score["seconds"]))
    for method in args.methods.split(","):
        model.load_state_dict(float_state)
        options = _quantize_options(args)
        options["method"] = method
        result = quantize_model(model, windows, progress=not args.quiet, **options)
        score = perplexity(model, eval_ids, seqlen=args.eval_seqlen,
                           max_windows=args.max_windows, progress=not args.quiet)
        rows.append((method, score["ppl"], result.seconds, score["seconds"]))
    model.load_state_dict(float_state)

    print()
    print(f"W{args.bits} g{args.group_size} {'sym' if args.sym else 'asym'}, held-out text "
          f"{args.text}")
    print(f"{'method':<10} {'perplexity':>11} {'quantize s':>11} {'eval s':>8}")
    for method, ppl, quant_s, eval_s in rows:
        print(f"{method:<10} {ppl:>11.3f} {quant_s:>11.1f} {eval_s:>8.1f}")
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    return 0


# --------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------

def _add_common(p, calibration=False, evaluation=False):
    p.add_argument("--model", help="Hugging Face Llama-family directory, .gguf file or astro "
                   "checkpoint directory (default: SmolLM2-135M-Instruct, fetched on demand)")
    p.add_argument("--threads", type=int, help="threads for torch and the astro core "
                   "(default: the libraries' defaults)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the held-out document split (default 0)")
    p.add_argument("--eval-fraction", type=float, default=0.25,
                   help="fraction of each text's documents held out for evaluation (default 0.25)")
    p.add_argument("-q", "--quiet", action="store_true", help="hide progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log one line per layer")
    if calibration:
        p.add_argument("--calibration", default="wiki",
                       help="calibration text: a UTF-8 file or a bundled name (default wiki)")
        p.add_argument("--calibration-split", choices=("calibration", "all"), default="calibration",
                       help="use the non-held-out documents (default) or the whole file")
        p.add_argument("--seed", type=int, default=0, help="seed of the calibration window offsets")
        p.add_argument("--bits", type=int, default=4, help="bits per weight (2, 3, 4 or 8)")
        p.add_argument("--group-size", type=int, default=128,
                       help="input columns per scale/zero group; -1 for one group per row")
        p.add_argument("--sym", action="store_true", help="symmetric quantization")
        p.add_argument("--act-order", action="store_true", help="GPTQ act-order (desc_act)")
        p.add_argument("--static-groups", action="store_true",
                       help="take every group's scale and zero point from the original weights "
                            "before the GPTQ sweep")
        p.add_argument("--damp", type=float, default=0.01, help="GPTQ damping, a fraction of mean(diag H)")
        p.add_argument("--beta", type=_parse_beta, help="Astro regularization strength, or "
                       "'auto' to choose it by validation perplexity on a share of the "
                       "calibration documents (default: astro.regularize's default, 1e-4)")
        p.add_argument("--budget", type=float, help="Astro relative output-distortion budget "
                       "(replaces --beta)")
        p.add_argument("--iterations", type=int, help="Astro solver iteration limit")
        p.add_argument("--batch-size", type=int, default=1,
                       help="calibration sequences per forward pass (default 1)")
    if evaluation:
        p.add_argument("--text", default="wiki",
                       help="evaluation text: a UTF-8 file or a bundled name (default wiki)")
        p.add_argument("--text-split", choices=("eval", "all"), default="eval",
                       help="score the held-out documents (default) or the whole file")
        p.add_argument("--eval-seqlen", type=int, default=2048,
                       help="tokens per evaluation window (default 2048)")
        p.add_argument("--max-windows", type=int, help="score only the first N evaluation windows")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astro",
        description="Weight-only post-training quantization of Llama-family models "
                    "with Astro, GPTQ and RTN.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download the default model and text into the cache")
    p.add_argument("--minilm", action="store_true", help="also fetch all-MiniLM-L6-v2 (test weights)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("-v", "--verbose", action="store_true", help="log each download")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("quantize", help="quantize a model and save a GPTQ checkpoint")
    _add_common(p, calibration=True, evaluation=True)
    p.add_argument("--num-windows", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window (default 2048)")
    p.add_argument("--method", default="astro", choices=("astro", "gptq", "rtn", "astro+rtn"),
                   help="astro (Astro then GPTQ, default), gptq, rtn or astro+rtn")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="with --beta auto: share of the calibration documents kept for "
                        "validation (default 0.1)")
    p.add_argument("--validation-windows", type=int, default=4,
                   help="with --beta auto: validation windows of --eval-seqlen tokens per "
                        "candidate (default 4)")
    p.add_argument("--beta-runs", type=int, default=5,
                   help="with --beta auto: maximum number of quantization runs in the search (default 5)")
    p.add_argument("--output", help="checkpoint directory to write")
    p.add_argument("--checkpoint-format", choices=("auto", "v1", "v2"), default="auto",
                   help="GPTQ zero-point format: v1 stores zero - 1, v2 the zero point; "
                        "auto (default) is v1 with --sym and v2 without")
    p.add_argument("--eval", action="store_true", help="also report held-out perplexity")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="held-out perplexity of a model or checkpoint")
    _add_common(p, evaluation=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="fetch, quantize with RTN, GPTQ and Astro, print perplexities")
    _add_common(p, calibration=True, evaluation=True)
    p.add_argument("--num-windows", type=int, default=DEMO_CALIBRATION_WINDOWS,
                   help=f"calibration windows (default {DEMO_CALIBRATION_WINDOWS})")
    p.add_argument("--seqlen", type=int, default=DEMO_CALIBRATION_SEQLEN,
                   help=f"tokens per calibration window (default {DEMO_CALIBRATION_SEQLEN})")
    p.add_argument("--methods", default="rtn,gptq,astro",
                   help="comma-separated methods to compare (default rtn,gptq,astro)")
    p.set_defaults(func=cmd_demo, bits=3, max_windows=DEMO_EVAL_WINDOWS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _set_threads(getattr(args, "threads", None))
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"astro {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .assets import AssetError

        if isinstance(exc, AssetError):
            print(f"astro {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
