"""Choice of the Astro strength beta for a whole model, from calibration data only.

``select_beta`` quantizes the model once per candidate beta and scores each
result by perplexity on validation text. The validation text must come from the
calibration side of the held-out split (``astro.data.split_documents`` applied
to the calibration documents), so the test articles play no part in the choice.

The candidates lie on a geometric grid ``start * factor**k``. The search scores
``start`` and its two neighbors, then keeps stepping toward the better
neighbor while the score improves, up to ``max_runs`` quantizations. Each run
costs one full ``quantize_model`` plus one perplexity pass, so with the default
factor of sqrt(10) a typical search takes 3 to 5 runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

logger = logging.getLogger("astro")

__all__ = ["select_beta", "BetaSelection"]


@dataclasses.dataclass
class BetaSelection:
    """Result of ``select_beta``.

    ``beta`` is the chosen strength and ``quantization`` the ``ModelQuantization``
    made with it, whose weights the model contains on return. ``runs`` lists one
    dict per candidate in the order scored: ``beta``, ``validation_ppl``,
    ``quantize_seconds`` and ``eval_seconds``. ``seconds`` is the search's
    total wall time.
    """

    beta: float
    quantization: object
    runs: list
    seconds: float


def _linear_weights(model):
    """Map each decoder linear layer's name to its weight parameter."""
    from .models import decoder_layers
    from .pipeline import SUBLAYER_GROUPS

    weights = {}
    for index, block in enumerate(decoder_layers(model)):
        for group in SUBLAYER_GROUPS:
            for name in group:
                weights[f"model.layers.{index}.{name}"] = block.get_submodule(name).weight
    return weights


def _copy_weights(source, target):
    import torch

    with torch.no_grad():
        for name, value in source.items():
            target[name].copy_(value)


def select_beta(
    model,
    calibration,
    validation_ids,
    *,
    method: str = "astro",
    start: float = 1e-4,
    factor: float = math.sqrt(10.0),
    max_runs: int = 5,
    seqlen: int = 2048,
    max_windows=4,
    **options,
) -> BetaSelection:
    """Quantize ``model`` with the beta that gives the lowest validation perplexity.

    ``calibration`` is passed to ``astro.quantize_model`` with ``method`` and
    ``options`` (bits, group_size, ...). ``validation_ids`` is a 1-D token
    stream scored by ``astro.perplexity`` over at most ``max_windows`` windows
    of ``seqlen`` tokens. It must not contain the text that the final
    evaluation uses. The model starts from its current (float) weights for
    every candidate and ends with the weights of the best one.
    """
    from .evaluate import perplexity
    from .pipeline import quantize_model

    if method not in ("astro", "astro+rtn"):
        raise ValueError(f"beta only applies to method 'astro' or 'astro+rtn', got {method!r}")
    if "beta" in options or "budget" in options:
        raise ValueError("select_beta chooses beta itself: remove the beta and budget arguments")
    if not (math.isfinite(start) and start > 0.0):
        raise ValueError(f"start must be a positive finite beta, got {start}")
    if not (math.isfinite(factor) and factor > 1.0):
        raise ValueError(f"factor must be a finite number above 1, got {factor}")
    if max_runs < 3:
        raise ValueError(f"max_runs must be at least 3 (start and both neighbors), got {max_runs}")

    began = time.perf_counter()
    weights = _linear_weights(model)
    float_weights = {name: w.detach().clone() for name, w in weights.items()}
    # Grid step k -> validation perplexity, with NaN or Inf ranked last as inf.
    scores = {}
    runs = []
    best = {"step": None, "weights": None, "quantization": None}

    def score(step: int) -> float:
        if step in scores:
            return scores[step]
        beta = start * factor ** step
        _copy_weights(float_weights, weights)
        quantization = quantize_model(model, calibration, method=method, beta=beta, **options)
        result = perplexity(model, validation_ids, seqlen, max_windows=max_windows)
        runs.append({"beta": beta, "validation_ppl": result["ppl"],
                     "quantize_seconds": quantization.seconds, "eval_seconds": result["seconds"]})
        logger.info("beta %.3g: validation perplexity %.4f (quantize %.1f s)",
                    beta, result["ppl"], quantization.seconds)
        scores[step] = result["ppl"] if math.isfinite(result["ppl"]) else math.inf
        # The first run always sets a best, so the model ends with quantized weights.
        if best["step"] is None or scores[step] < scores[best["step"]]:
            best.update(step=step, quantization=quantization,
                        weights={name: w.detach().clone() for name, w in weights.items()})
        return scores[step]

    center, lower, upper = score(0), score(-1), score(1)
    if min(lower, upper) < center:
        direction = -1 if lower < upper else 1
        step = direction
        while len(runs) < max_runs and score(step + direction) < score(step):
            step += direction

    _copy_weights(best["weights"], weights)
    chosen = start * factor ** best["step"]
    logger.info("chose beta %.3g after %d runs", chosen, len(runs))
    return BetaSelection(beta=chosen, quantization=best["quantization"], runs=runs,
                         seconds=time.perf_counter() - began)
