"""Build or extend a collection from a BEIR folder or JSONL files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from rare.beir_data import DataError, doc_text, iter_jsonl, load_beir, pool_split
from rare.collection import Collection, collections_root
from rare.encoding import DEFAULT_BATCH_TOKENS, encode_texts
from rare.instructions import instruction_for
from rare.model import LoadedModel
from rare.pool import pool_from_beir, pool_from_jsonl
from rare.prompt import Example

log = logging.getLogger(__name__)

DocTuple = tuple[str, str, str]  # (id, title, text)


def read_documents(path: str | Path) -> list[DocTuple]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"documents file not found: {path}")
    out = []
    for i, obj in enumerate(iter_jsonl(path), 1):
        doc_id = obj.get("id", obj.get("_id"))
        text = obj.get("text")
        if doc_id is None or not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: record {i} needs 'id' and a non-empty string 'text'")
        out.append((str(doc_id), str(obj.get("title") or ""), text))
    return out


def open_or_create(data_dir: Path, name: str, model: LoadedModel, **create_options) -> Collection:
    """Open a collection for writing, or create it with `Collection.create`'s options."""
    if (collections_root(data_dir) / name / "CURRENT").is_file():
        return Collection.open(data_dir, name, model)
    return Collection.create(data_dir, name, model, **create_options)


def add_to_collection(
    col: Collection,
    docs: Sequence[DocTuple],
    examples: Sequence[Example] = (),
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    show_progress: bool = True,
) -> dict:
    """Encode only documents that are new or changed, add them and the examples, then snapshot."""
    fresh = []
    for doc_id, title, text in docs:
        old = col.document(doc_id)
        if old is None or old.title != title or old.text != text:
            fresh.append((doc_id, title, text))
    emb = encode_texts(
        col.model,
        [doc_text(t, x) for _, t, x in fresh],
        batch_tokens=batch_tokens,
        show_progress=show_progress,
        desc="encoding documents",
    )
    col.upsert_documents(fresh, emb, durable=False)
    if examples:
        col.upsert_examples(list(examples), durable=False)
    col.save_snapshot()
    return {
        "encoded": len(fresh),
        "skipped": len(docs) - len(fresh),
        "examples": len(examples),
        "documents": len(col.docs),
    }


def index_beir(
    data_dir: Path,
    name: str,
    model: LoadedModel,
    beir_dir: str | Path,
    *,
    split: str | None = None,
    index_spec: str = "Flat",
    instruction: str | None = None,
    selector: str | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    show_progress: bool = True,
) -> dict:
    ds = load_beir(beir_dir)
    chosen = pool_split(ds, split)
    examples = pool_from_beir(ds, chosen) if chosen else []
    col = open_or_create(
        data_dir,
        name,
        model,
        index_spec=index_spec,
        instruction=instruction or instruction_for(ds.name),
        selector=selector,
        pool_source=f"{ds.name}:{chosen}" if chosen else None,
    )
    try:
        docs = [(i, d["title"], d["text"]) for i, d in ds.corpus.items()]
        stats = add_to_collection(col, docs, examples, batch_tokens=batch_tokens, show_progress=show_progress)
    finally:
        col.close()
    return {**stats, "pool_split": chosen, "collection": name}


def index_jsonl(
    data_dir: Path,
    name: str,
    model: LoadedModel,
    documents: str | Path | None,
    examples: str | Path | None = None,
    *,
    index_spec: str = "Flat",
    instruction: str | None = None,
    selector: str | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    show_progress: bool = True,
) -> dict:
    docs = read_documents(documents) if documents else []
    exs = pool_from_jsonl(examples) if examples else []
    col = open_or_create(
        data_dir,
        name,
        model,
        index_spec=index_spec,
        instruction=instruction,
        selector=selector,
        pool_source=str(examples) if examples else None,
    )
    try:
        stats = add_to_collection(col, docs, exs, batch_tokens=batch_tokens, show_progress=show_progress)
    finally:
        col.close()
    return {**stats, "collection": name}
