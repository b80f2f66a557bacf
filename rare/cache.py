"""Corpus embeddings cached per (model fingerprint, dataset, length limit, dtype): re-runs only encode
queries."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from rare.beir_data import BeirDataset, corpus_file
from rare.encoding import DEFAULT_BATCH_TOKENS, encode_texts
from rare.model import LoadedModel
from rare.storage import atomic_write_bytes


def dataset_fingerprint(ds: BeirDataset) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(corpus_file(ds.path).read_bytes())
    return h.hexdigest()


def corpus_embeddings(
    model: LoadedModel,
    ds: BeirDataset,
    cache_dir: Path | None,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    show_progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    """(doc ids, normalized embeddings) of the whole corpus, from the cache when it matches."""
    ids = list(ds.corpus)
    path = None
    if cache_dir is not None:
        key = f"{ds.name}-{dataset_fingerprint(ds)}-{model.fingerprint}-{model.max_tokens}"
        if model.dtype != "float32":  # float32 keys predate the setting
            key += f"-{model.dtype}"
        path = Path(cache_dir) / f"{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if json.loads(str(z["ids"])) == ids:
                        return ids, z["emb"]
            except (OSError, ValueError, KeyError):
                pass  # a bad cache file is recomputed
    emb = encode_texts(
        model,
        [ds.doc_text(i) for i in ids],
        batch_tokens=batch_tokens,
        show_progress=show_progress,
        desc=f"encoding {ds.name} corpus",
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, ids=np.array(json.dumps(ids)), emb=emb)
        atomic_write_bytes(path, buf.getvalue())
    return ids, emb
