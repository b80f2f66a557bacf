"""The example pool: (query, positive document) pairs with ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rare.beir_data import BeirDataset, DataError, iter_jsonl, ranked_positives
from rare.prompt import Example


def example_id(query: str, document: str) -> str:
    """Content id, so posting the same pair twice is an idempotent upsert."""
    return "ex-" + hashlib.sha1(f"{query}\x00{document}".encode()).hexdigest()[:16]


def pool_from_beir(ds: BeirDataset, split: str) -> list[Example]:
    """One pair per query: its highest-graded document, ties in the qrels file's order (see
    `ranked_positives`)."""
    out = []
    for qid, docs in sorted(ds.split(split).items()):
        positives = ranked_positives(docs)
        if positives:
            out.append(Example(id=qid, query=ds.queries[qid], document=ds.doc_text(positives[0])))
    return out


def pool_from_jsonl(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"examples file not found: {path}")
    out = []
    for i, obj in enumerate(iter_jsonl(path), 1):
        q, d = obj.get("query"), obj.get("document")
        if not isinstance(q, str) or not isinstance(d, str) or not q.strip() or not d.strip():
            raise DataError(f"{path}: record {i} needs non-empty string fields 'query' and 'document'")
        out.append(Example(id=str(obj.get("id") or example_id(q, d)), query=q, document=d))
    return out
