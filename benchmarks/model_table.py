"""Held-out perplexity of the default model under every method and setting.

Loads SmolLM2-135M-Instruct once and splits the articles of wiki.utf8 into
test, validation and fit articles (see benchmarks/model_setup.py). For Astro methods, beta is chosen per setting by
``astro.tuning.select_beta`` from the validation perplexity, so the choice
uses calibration-side text only. Every run starts from the float weights.
Prints one JSON record per run, writes them all to --json and ends with a
Markdown table.

    python benchmarks/model_table.py --settings 3:128,4:128,2:64 \\
        --methods rtn,gptq,astro,astro+rtn
"""
import argparse
import json
import platform
import time

import torch

import model_setup
from astro.evaluate import perplexity
from astro.pipeline import quantize_model
from astro.tuning import select_beta

ASTRO_METHODS = ("astro", "astro+rtn")


def _markdown(records) -> str:
    lines = ["| setting | method | beta | validation ppl | test ppl | quantize s |",
             "|---|---|---|---|---|---|"]
    for r in records:
        setting = "float" if r["method"] == "float" else f"W{r['bits']} g{r['group_size']}"
        beta = f"{r['beta']:.3g}" if r.get("beta") is not None else ""
        seconds = f"{r['quantize_seconds']:.1f}" if "quantize_seconds" in r else ""
        lines.append(f"| {setting} | {r['method']} | {beta} | {r['validation_ppl']:.3f} | "
                     f"{r['ppl']:.3f} | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="3:128,4:128,2:64",
                        help="comma-separated bits:group_size pairs")
    parser.add_argument("--methods", default="rtn,gptq,astro,astro+rtn")
    parser.add_argument("--validation-windows", type=int, default=4,
                        help="validation windows of 2048 tokens for the beta search")
    parser.add_argument("--beta-start", type=float, default=1e-4,
                        help="first beta of the search (the library default)")
    parser.add_argument("--beta-runs", type=int, default=5,
                        help="maximum number of runs per beta search")
    parser.add_argument("--json", default="model_table.json", help="output file")
    model_setup.add_arguments(parser)
    args = parser.parse_args()

    setup = model_setup.prepare(args)
    model, windows = setup.model, setup.windows
    print(f"articles: {setup.article_counts}; calibration {tuple(windows.shape)}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}",
          flush=True)

    def scores():
        test = perplexity(model, setup.test_ids, 2048, max_windows=args.eval_windows)
        validation = perplexity(model, setup.validation_ids, 2048,
                                max_windows=args.validation_windows)
        return test["ppl"], validation["ppl"]

    records = []

    def emit(record):
        records.append(record)
        print(json.dumps(record), flush=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(records, handle, indent=1)

    test_ppl, validation_ppl = scores()
    emit({"method": "float", "ppl": test_ppl, "validation_ppl": validation_ppl})
    for setting in args.settings.split(","):
        bits, group_size = (int(part) for part in setting.split(":"))
        for method in args.methods.split(","):
            model.load_state_dict(setup.float_state)
            options = dict(bits=bits, group_size=group_size, progress=False)
            record = {"method": method, "bits": bits, "group_size": group_size}
            started = time.perf_counter()
            if method in ASTRO_METHODS:
                selection = select_beta(model, windows, setup.validation_ids, method=method,
                                        start=args.beta_start, max_runs=args.beta_runs,
                                        max_windows=args.validation_windows, **options)
                chosen = next(r for r in selection.runs if r["beta"] == selection.beta)
                record.update(beta=selection.beta, search=selection.runs,
                              search_seconds=time.perf_counter() - started,
                              quantize_seconds=chosen["quantize_seconds"])
            else:
                result = quantize_model(model, windows, method=method, **options)
                record["quantize_seconds"] = result.seconds
            record["ppl"], record["validation_ppl"] = scores()
            emit(record)

    print()
    print(_markdown(records))


if __name__ == "__main__":
    main()
