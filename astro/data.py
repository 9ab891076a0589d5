"""Text handling: documents, the held-out split, calibration and evaluation tokens.

Protocol (the one the command line and the benchmarks use):

1. A text file is read as a list of documents. Files with ``<doc ...>`` tags
   (the bundled ``wiki.utf8``, one Wikipedia article per tag) give one document
   per article, and articles that are only a title (redirects) are dropped.
   Other files are split on blank lines, or on lines when they have no blank
   lines (the bundled ``c4.utf8`` has one document per line).
2. ``split_documents`` puts a fixed-seed random ``eval_fraction`` of the
   documents in the evaluation set and the rest in the calibration set, so no
   evaluation article ever appears in a calibration window.
3. Each set is joined with blank lines and tokenized as one stream, without
   special tokens. Calibration windows start at fixed-seed random offsets of
   the calibration stream; evaluation uses consecutive non-overlapping windows
   of the evaluation stream (see ``astro.evaluate``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = [
    "read_documents",
    "split_documents",
    "tokenize_documents",
    "calibration_windows",
    "resolve_text",
]

_DOC_RE = re.compile(r"<doc\b[^>]*>\n(.*?)\n?</doc>", flags=re.S)


def _has_body(article: str) -> bool:
    """Return True if an article has text after its title line."""
    _, _, body = article.strip().partition("\n")
    return bool(body.strip())


def read_documents(path) -> list[str]:
    """Read a UTF-8 text file as a list of non-empty documents (see the module doc)."""
    text = Path(path).read_text(encoding="utf-8")
    if "<doc " in text:
        articles = [a.strip() for a in _DOC_RE.findall(text)]
        docs = [a for a in articles if _has_body(a)]
    elif "\n\n" in text:
        docs = [d.strip() for d in re.split(r"\n\s*\n", text)]
    else:
        docs = [d.strip() for d in text.splitlines()]
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"{path} contains no text")
    return docs


def split_documents(docs, eval_fraction: float = 0.25, seed: int = 0):
    """Split documents into ``(calibration_docs, eval_docs)`` by a seeded permutation.

    Both lists keep the file order of their documents.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if len(docs) < 2:
        raise ValueError(f"need at least 2 documents to split, got {len(docs)}")
    order = np.random.default_rng(seed).permutation(len(docs))
    num_eval = min(max(1, round(eval_fraction * len(docs))), len(docs) - 1)
    is_eval = np.zeros(len(docs), dtype=bool)
    is_eval[order[:num_eval]] = True
    calibration = [d for d, e in zip(docs, is_eval) if not e]
    evaluation = [d for d, e in zip(docs, is_eval) if e]
    return calibration, evaluation


def tokenize_documents(tokenizer, docs):
    """Join documents with blank lines and tokenize them as one 1-D LongTensor."""
    import torch

    text = "\n\n".join(docs)
    # The stream is longer than the model's context on purpose: it is cut
    # into windows afterwards, so silence the tokenizer's length warning.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_windows(token_ids, num_windows: int = 128, seqlen: int = 2048, seed: int = 0):
    """Draw ``num_windows`` windows of ``seqlen`` tokens at seeded random offsets.

    Returns a LongTensor of shape (num_windows, seqlen). Windows may overlap
    one another when the stream is short.
    """
    import torch

    token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    if num_windows < 1 or seqlen < 1:
        raise ValueError(f"num_windows and seqlen must be positive, got {num_windows}, {seqlen}")
    if token_ids.numel() < seqlen:
        raise ValueError(
            f"calibration text has {token_ids.numel()} tokens, fewer than one window of "
            f"{seqlen}; pass more text or a shorter window"
        )
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, token_ids.numel() - seqlen + 1, size=num_windows)
    return torch.stack([token_ids[s:s + seqlen] for s in starts.tolist()])


def resolve_text(spec) -> Path:
    """Return the path for a text argument: a file path, or a bundled name such as ``wiki``."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if re.fullmatch(r"[a-z0-9]+", str(spec)):
        from .assets import text_path

        return text_path(str(spec))
    raise FileNotFoundError(f"text file {spec} does not exist")
