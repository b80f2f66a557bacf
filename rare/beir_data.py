"""BEIR-format data: corpus.jsonl[.gz], queries.jsonl, qrels/{split}.tsv (CRLF tolerant)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad or missing input data; the message says which file and what is wrong."""


def doc_text(title: str | None, text: str) -> str:
    """Documents are embedded plain: title and text, as BEIR's dense models do."""
    return f"{title} {text}".strip() if title else text.strip()


def iter_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object")
                yield obj
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _require(obj: dict, key: str, path: Path, lineno: int) -> str:
    if key not in obj:
        raise DataError(f"{path}: record {lineno} has no '{key}' field")
    return str(obj[key])


def corpus_file(folder: Path) -> Path:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no corpus.jsonl or corpus.jsonl.gz")


def load_corpus(folder: Path) -> dict[str, dict[str, str]]:
    path = corpus_file(folder)
    corpus: dict[str, dict[str, str]] = {}
    for i, obj in enumerate(iter_jsonl(path), 1):
        corpus[_require(obj, "_id", path, i)] = {
            "title": str(obj.get("title") or ""),
            "text": str(obj.get("text") or ""),
        }
    return corpus


def load_queries(folder: Path) -> dict[str, str]:
    path = folder / "queries.jsonl"
    if not path.is_file():
        raise DataError(f"{folder}: no queries.jsonl")
    return {
        _require(o, "_id", path, i): _require(o, "text", path, i) for i, o in enumerate(iter_jsonl(path), 1)
    }


def available_splits(folder: Path) -> list[str]:
    qdir = folder / "qrels"
    return sorted(p.stem for p in qdir.glob("*.tsv")) if qdir.is_dir() else []


def load_qrels(folder: Path, split: str) -> dict[str, dict[str, int]]:
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        have = ", ".join(available_splits(folder)) or "none"
        raise DataError(f"{folder}: no qrels/{split}.tsv (splits here: {have})")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()  # CRLF and stray whitespace, as BEIR's own files have
            if not line:
                continue
            parts = line.split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if len(parts) < 3:
                raise DataError(f"{path}:{lineno}: expected query-id<TAB>corpus-id<TAB>score")
            try:
                score = int(float(parts[2]))
            except ValueError:
                raise DataError(f"{path}:{lineno}: score '{parts[2]}' is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def ranked_positives(judged: dict[str, int]) -> list[str]:
    """A query's relevant documents (grade > 0), highest grade first, ties in the qrels file's order.

    The file order is kept because it carries relevance where a split flattens its grades: NFCorpus
    lists a query's directly cited documents first (its test and dev splits: every grade-2 document
    before any grade 1), and its train split, all grade 1, keeps that order (the base model ranks a
    query's first-listed train document at median 197 of 3,633, its 21st and later at 928;
    bench/example_signal.py). `load_qrels` preserves it.
    """
    return [d for d, g in sorted(judged.items(), key=lambda x: -x[1]) if g > 0]  # stable: keeps file order


@dataclass
class BeirDataset:
    path: Path
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def split(self, name: str) -> dict[str, dict[str, int]]:
        if name not in self.qrels:
            self.qrels[name] = self._checked(name, load_qrels(self.path, name))
        return self.qrels[name]

    def has_split(self, name: str) -> bool:
        return name in self.qrels or (self.path / "qrels" / f"{name}.tsv").is_file()

    def doc_text(self, doc_id: str) -> str:
        d = self.corpus[doc_id]
        return doc_text(d["title"], d["text"])

    def _checked(self, split: str, qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        bad_q = [q for q in qrels if q not in self.queries]
        bad_d = sorted({d for docs in qrels.values() for d in docs if d not in self.corpus})
        if bad_q or bad_d:
            raise DataError(
                f"{self.path}/qrels/{split}.tsv: {len(bad_q)} query ids not in queries.jsonl "
                f"(e.g. {bad_q[:3]}), {len(bad_d)} doc ids not in the corpus (e.g. {bad_d[:3]})"
            )
        return qrels


def load_beir(folder: str | Path, splits: list[str] | None = None) -> BeirDataset:
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"BEIR folder not found: {path}")
    ds = BeirDataset(path=path, corpus=load_corpus(path), queries=load_queries(path))
    for s in splits or []:
        ds.split(s)
    return ds


def pool_split(ds: BeirDataset, preferred: str | None = None) -> str | None:
    """The split that example pools come from: the one asked for, else train, else dev."""
    if preferred:
        ds.split(preferred)  # raises a clear error if absent
        return preferred
    return next((s for s in ("train", "dev") if ds.has_split(s)), None)
