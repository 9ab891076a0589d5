"""Setup shared by the model-level benchmarks: the default model and the text split.

The documents of wiki.utf8 are split three ways with fixed seeds. 25 % are
test articles, scored for the tables. Of the rest, a ``validation_fraction``
share are validation articles, used only to choose beta, and the remaining fit
articles supply the calibration windows. Every benchmark that
uses this module therefore calibrates on the same windows.
"""
import dataclasses

import torch

import astro
from astro import assets, data
from astro.models import load_model


@dataclasses.dataclass
class ModelSetup:
    """The float model, its saved state and the token data of one benchmark run."""

    model: object
    tokenizer: object
    float_state: dict
    windows: torch.Tensor
    validation_ids: torch.Tensor
    test_ids: torch.Tensor
    article_counts: dict


def add_arguments(parser) -> None:
    """Add the calibration, evaluation and thread options to ``parser``."""
    parser.add_argument("--calibration-windows", type=int, default=16)
    parser.add_argument("--calibration-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=4,
                        help="test windows of 2048 tokens to score")
    parser.add_argument("--validation-fraction", type=float, default=0.1,
                        help="fraction of the calibration articles kept for validation")
    parser.add_argument("--threads", type=int, help="threads for torch and the astro core")


def prepare(args) -> ModelSetup:
    """Set the threads, load the default model and build the calibration and test data."""
    if args.threads:
        torch.set_num_threads(args.threads)
        astro.set_num_threads(args.threads)
    model, tokenizer = load_model(assets.default_model_path())
    float_state = {name: value.clone() for name, value in model.state_dict().items()}
    calibration_docs, test_docs = data.split_documents(data.read_documents(assets.text_path("wiki")))
    fit_docs, validation_docs = data.split_documents(
        calibration_docs, eval_fraction=args.validation_fraction, seed=1)
    windows = data.calibration_windows(data.tokenize_documents(tokenizer, fit_docs),
                                       args.calibration_windows, args.calibration_seqlen, seed=0)
    return ModelSetup(
        model=model,
        tokenizer=tokenizer,
        float_state=float_state,
        windows=windows,
        validation_ids=data.tokenize_documents(tokenizer, validation_docs),
        test_ids=data.tokenize_documents(tokenizer, test_docs),
        article_counts={"fit": len(fit_docs), "validation": len(validation_docs),
                        "test": len(test_docs)},
    )
