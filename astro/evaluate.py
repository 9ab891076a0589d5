"""Perplexity of a causal LM over non-overlapping windows of a token stream."""

from __future__ import annotations

import logging
import math
import time

logger = logging.getLogger("astro")

__all__ = ["perplexity"]


def perplexity(model, token_ids, seqlen: int = 2048, max_windows=None, progress: bool = False):
    """Compute perplexity over consecutive non-overlapping windows of ``token_ids``.

    The stream is cut into ``len // seqlen`` windows (the remainder is dropped,
    as is usual for this protocol), each window is scored on its own with no
    context from the previous one, and every window predicts its ``seqlen - 1``
    next tokens. ``max_windows`` keeps only the first windows, for quick runs.

    Returns a dict: ``ppl`` (exp of the mean negative log-likelihood per
    predicted token), ``nll``, ``windows``, ``tokens`` (predicted tokens) and
    ``seconds``.
    """
    import torch
    import torch.nn.functional as F

    token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    num_windows = token_ids.numel() // seqlen
    if max_windows is not None:
        num_windows = min(num_windows, int(max_windows))
    if num_windows < 1:
        raise ValueError(
            f"the evaluation text has {token_ids.numel()} tokens, fewer than one window of {seqlen}"
        )
    device = next(model.parameters()).device
    windows = token_ids[: num_windows * seqlen].reshape(num_windows, seqlen)

    iterator = range(num_windows)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="perplexity", unit="window")

    start = time.perf_counter()
    total_nll = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in iterator:
            ids = windows[i : i + 1].to(device)
            logits = model(ids, use_cache=False).logits[0, :-1].float()
            total_nll += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
    model.train(was_training)

    tokens = num_windows * (seqlen - 1)
    nll = total_nll / tokens
    result = {
        "ppl": math.exp(nll),
        "nll": nll,
        "windows": num_windows,
        "tokens": tokens,
        "seconds": time.perf_counter() - start,
    }
    logger.info("perplexity %.4f over %d windows of %d tokens (%.1f s)",
                result["ppl"], num_windows, seqlen, result["seconds"])
    return result
