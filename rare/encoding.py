"""Encoding with token-budget batches: texts sorted by length so batches carry little padding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from rare.model import LoadedModel


def token_lengths(model: LoadedModel, texts: Sequence[str]) -> np.ndarray:
    """Tokens per text as the model sees it (capped at its max length)."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    with model.count_lock:
        enc = model.count_tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
    ids = enc["input_ids"]
    return np.minimum(np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)), model.max_tokens)


def plan_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Index batches, longest first, each within `batch_tokens` padded tokens (at least one text)."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, batch_tokens // longest)
        batches.append(order[start : start + size])
        start += size
    return batches


def encode_texts(
    model: LoadedModel,
    texts: Sequence[str],
    *,
    batch_tokens: int = 16384,
    show_progress: bool = False,
    desc: str = "encoding",
) -> np.ndarray:
    """L2-normalized float32 embeddings, in input order."""
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    if not texts:
        return out
    lengths = token_lengths(model, texts)
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not show_progress, smoothing=0.05) as bar:
        for idx in plan_batches(lengths, batch_tokens):
            batch = [texts[i] for i in idx]
            out[idx] = model.encode(batch)
            bar.update(len(batch))
    return out
