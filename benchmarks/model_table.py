"""Held-out perplexity of the default model under every method and setting.

Loads SmolLM2-135M-Instruct once, draws calibration windows from the
calibration articles of wiki.utf8, and for each setting and method quantizes a
fresh copy of the float weights and scores the held-out articles. Prints one
JSON record per run and writes them all to --json.

    python benchmarks/model_table.py --settings 3:128,4:128,2:64 \\
        --methods rtn,gptq,astro,astro+rtn
"""
import argparse
import json
import time

from astro import assets, data
from astro.evaluate import perplexity
from astro.models import load_model
from astro.pipeline import quantize_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="3:128,4:128,2:64",
                        help="comma-separated bits:group_size pairs")
    parser.add_argument("--methods", default="rtn,gptq,astro,astro+rtn")
    parser.add_argument("--calibration-windows", type=int, default=16)
    parser.add_argument("--calibration-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=4,
                        help="held-out windows of 2048 tokens to score")
    parser.add_argument("--json", default="model_table.json", help="output file")
    args = parser.parse_args()

    model, tokenizer = load_model(assets.default_model_path())
    float_state = {name: value.clone() for name, value in model.state_dict().items()}
    calibration_docs, eval_docs = data.split_documents(data.read_documents(assets.text_path("wiki")))
    windows = data.calibration_windows(data.tokenize_documents(tokenizer, calibration_docs),
                                       args.calibration_windows, args.calibration_seqlen, seed=0)
    eval_ids = data.tokenize_documents(tokenizer, eval_docs)

    records = []
    score = perplexity(model, eval_ids, 2048, max_windows=args.eval_windows)
    records.append({"method": "float", "ppl": score["ppl"]})
    print(json.dumps(records[-1]), flush=True)
    for setting in args.settings.split(","):
        bits, group_size = (int(part) for part in setting.split(":"))
        for method in args.methods.split(","):
            model.load_state_dict(float_state)
            started = time.perf_counter()
            quantize_model(model, windows, bits=bits, group_size=group_size, method=method,
                           progress=False)
            seconds = time.perf_counter() - started
            score = perplexity(model, eval_ids, 2048, max_windows=args.eval_windows)
            records.append({"method": method, "bits": bits, "group_size": group_size,
                            "ppl": score["ppl"], "quantize_seconds": seconds})
            print(json.dumps(records[-1]), flush=True)
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(records, handle, indent=1)


if __name__ == "__main__":
    main()
