"""A persisted collection: document FAISS index, id map, document texts, example pool, manifest.

On disk, under `<data_dir>/collections/<name>/`:

    CURRENT              name of the live snapshot, replaced atomically
    snap-000007/         manifest.json, docs.faiss, docs.jsonl, examples.jsonl[, pool.npy]
    wal-000007.jsonl     writes acknowledged since that snapshot, one fsync'd JSON line each
    LOCK                 held by the one process allowed to write

A write is durable once its WAL line is fsync'd; a snapshot is written to a temporary directory,
fsync'd and renamed, then CURRENT is swapped. A crash at any point leaves the last snapshot plus
its WAL loadable; a torn last WAL line was never acknowledged and is dropped.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ValidationError

from rare import faiss_index as fx
from rare.model import LoadedModel
from rare.prompt import Example, ScoredExample
from rare.selection import Selector, make_selector
from rare.storage import FileLock, atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)

COLLECTION_FORMAT = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
COMPACT_EVERY = 2000  # WAL records before the next write folds them into a snapshot


class CollectionError(RuntimeError):
    """A collection that cannot be used: missing, corrupt, locked, or built with another model."""


class InvalidNameError(ValueError):
    pass


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-', '.' (no '..', no '/')"
        )
    return name


def collections_root(data_dir: Path) -> Path:
    return Path(data_dir) / "collections"


def list_collections(data_dir: Path) -> list[str]:
    root = collections_root(data_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "CURRENT").is_file() and NAME_RE.fullmatch(p.name))


class Manifest(BaseModel):
    format_version: int = COLLECTION_FORMAT
    name: str
    model: str
    model_fingerprint: str
    dim: int
    normalized: bool = True
    metric: str = "inner_product"
    index_spec: str = "Flat"
    instruction: str | None = None
    selector: str = "bm25"
    pool_source: str | None = None
    documents: int = 0
    examples: int = 0
    next_int_id: int = 0
    created_at: str
    updated_at: str


@dataclass
class Document:
    int_id: int
    title: str
    text: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).decode()


def _unb64(s: str, dim: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=np.float32).reshape(-1, dim)


class Collection:
    def __init__(self, path: Path, manifest: Manifest, model: LoadedModel):
        self.path = path
        self.manifest = manifest
        self.model = model
        self.name = manifest.name
        self.index = fx.make_index(manifest.index_spec, manifest.dim)
        self._search_index = None  # GPU copy (or the CPU index), rebuilt after writes
        self.docs: dict[str, Document] = {}
        self.int2id: dict[int, str] = {}
        self.tombstones: set[int] = set()
        self.examples: dict[str, Example] = {}
        self.pool_emb: dict[str, np.ndarray] = {}
        self._selector: Selector | None = None
        self._lock = threading.RLock()
        self._file_lock: FileLock | None = None
        self._wal = None
        self._wal_records = 0
        self.snapshot = 0

    # ---------- creation and loading ----------
    @classmethod
    def create(
        cls,
        data_dir: Path,
        name: str,
        model: LoadedModel,
        *,
        index_spec: str = "Flat",
        instruction: str | None = None,
        selector: str | None = None,
        pool_source: str | None = None,
    ) -> Collection:
        validate_name(name)
        path = collections_root(data_dir) / name
        if (path / "CURRENT").is_file():
            raise CollectionError(f"collection '{name}' already exists at {path}")
        now = _now()
        manifest = Manifest(
            name=name,
            model=model.name,
            model_fingerprint=model.fingerprint,
            dim=model.dim,
            index_spec=index_spec,
            instruction=instruction,
            selector=selector or model.rare.selector,
            pool_source=pool_source,
            created_at=now,
            updated_at=now,
        )
        if manifest.selector not in ("bm25", "dense", "random"):
            raise CollectionError(f"unknown selector '{manifest.selector}'")
        col = cls(path, manifest, model)
        path.mkdir(parents=True, exist_ok=True)
        col._lock_for_writes()
        col.save_snapshot()
        return col

    @classmethod
    def open(cls, data_dir: Path, name: str, model: LoadedModel, *, writable: bool = True) -> Collection:
        validate_name(name)
        path = collections_root(data_dir) / name
        current = path / "CURRENT"
        if not current.is_file():
            raise CollectionError(f"collection '{name}' not found under {collections_root(data_dir)}")
        snap_name = current.read_text().strip()
        snap = path / snap_name
        if not re.fullmatch(r"snap-\d{6}", snap_name) or not snap.is_dir():
            raise CollectionError(f"collection '{name}': CURRENT names a missing snapshot '{snap_name}'")
        try:
            manifest = Manifest.model_validate_json((snap / "manifest.json").read_text())
        except (OSError, ValidationError, ValueError) as exc:
            raise CollectionError(
                f"collection '{name}': manifest.json is unreadable or corrupt ({exc})"
            ) from None
        if manifest.format_version != COLLECTION_FORMAT:
            raise CollectionError(f"collection '{name}': format {manifest.format_version} is not supported")
        if manifest.model_fingerprint != model.fingerprint:
            raise CollectionError(
                f"collection '{name}' was built with model '{manifest.model}' "
                f"(fingerprint {manifest.model_fingerprint}), but the loaded model is '{model.name}' "
                f"(fingerprint {model.fingerprint}): start with --model set to the model it was built with, "
                "or rebuild the collection"
            )
        col = cls(path, manifest, model)
        col.snapshot = int(snap_name.split("-")[1])
        if writable:
            col._lock_for_writes()
        col._load_snapshot(snap)
        col._replay_wal(truncate_torn=writable)
        if writable:
            col._cleanup()
        return col

    def _lock_for_writes(self) -> None:
        lock = FileLock(self.path / "LOCK")
        if not lock.acquire():
            raise CollectionError(
                f"collection '{self.name}' is being written by another process (pid {lock.holder()})"
            )
        self._file_lock = lock

    def _load_snapshot(self, snap: Path) -> None:
        name = self.name
        try:
            self.index = fx.deserialize((snap / "docs.faiss").read_bytes())
        except Exception as exc:
            raise CollectionError(
                f"collection '{name}': docs.faiss is corrupt or truncated ({exc})"
            ) from None
        try:
            for line in (snap / "docs.jsonl").read_text(encoding="utf-8").splitlines():
                d = json.loads(line)
                self.docs[d["id"]] = Document(int(d["int_id"]), d["title"], d["text"])
            for line in (snap / "examples.jsonl").read_text(encoding="utf-8").splitlines():
                e = json.loads(line)
                self.examples[e["id"]] = Example(e["id"], e["query"], e["document"])
            if (snap / "pool.npy").is_file():
                emb = np.load(snap / "pool.npy", allow_pickle=False)
                self.pool_emb = dict(zip(self.examples, emb, strict=True))
            self.tombstones = set(json.loads((snap / "tombstones.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CollectionError(f"collection '{name}': snapshot files are corrupt ({exc})") from None
        self.int2id = {d.int_id: did for did, d in self.docs.items()}
        live = len(self.int2id) + len(self.tombstones)
        if self.index.ntotal != live:
            raise CollectionError(
                f"collection '{name}': index holds {self.index.ntotal} vectors but the id map has {live}"
            )

    def _wal_path(self) -> Path:
        return self.path / f"wal-{self.snapshot:06d}.jsonl"

    def _replay_wal(self, truncate_torn: bool) -> None:
        path = self._wal_path()
        if not path.is_file():
            return
        data = path.read_bytes()
        good = 0
        lines = data.split(b"\n")
        for i, raw in enumerate(lines):
            if not raw.strip():
                good += len(raw) + 1
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                if i == len(lines) - 1:  # a torn tail: its write was never acknowledged
                    log.warning("collection '%s': dropping a torn WAL record at byte %d", self.name, good)
                    break
                raise CollectionError(
                    f"collection '{self.name}': WAL {path.name} is corrupt at line {i + 1}"
                ) from None
            self._apply(rec)
            self._wal_records += 1
            good += len(raw) + 1
        if truncate_torn and good < len(data):
            with open(path, "rb+") as fh:
                fh.truncate(min(good, len(data)))
                os.fsync(fh.fileno())

    def _cleanup(self) -> None:
        """Remove leftovers of interrupted snapshots and superseded files."""
        keep = {f"snap-{self.snapshot:06d}", self._wal_path().name, "CURRENT", "LOCK"}
        for p in self.path.iterdir():
            if p.name not in keep:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    # ---------- persistence ----------
    def save_snapshot(self) -> None:
        """Fold everything into a new snapshot and swap CURRENT to it, atomically."""
        with self._lock:
            nxt = self.snapshot + 1
            final = self.path / f"snap-{nxt:06d}"
            tmp = self.path / f".snap-{nxt:06d}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self._compact_tombstones()
            self.manifest.documents = len(self.docs)
            self.manifest.examples = len(self.examples)
            self.manifest.updated_at = _now()
            files = {
                "docs.faiss": fx.serialize(self.index),
                "docs.jsonl": "".join(
                    json.dumps(
                        {"id": i, "int_id": d.int_id, "title": d.title, "text": d.text}, ensure_ascii=False
                    )
                    + "\n"
                    for i, d in self.docs.items()
                ).encode(),
                "examples.jsonl": "".join(
                    json.dumps({"id": e.id, "query": e.query, "document": e.document}, ensure_ascii=False)
                    + "\n"
                    for e in self.examples.values()
                ).encode(),
                "tombstones.json": json.dumps(sorted(self.tombstones)).encode(),
                "manifest.json": self.manifest.model_dump_json(indent=2).encode(),
            }
            for fname, data in files.items():
                with open(tmp / fname, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            if self.pool_emb and len(self.pool_emb) == len(self.examples):
                with open(tmp / "pool.npy", "wb") as fh:
                    np.save(fh, np.stack([self.pool_emb[i] for i in self.examples]), allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
            os.replace(tmp, final)
            fsync_dir(self.path)
            atomic_write_bytes(self.path / "CURRENT", f"snap-{nxt:06d}\n".encode())
            old_wal = self._wal_path()
            self.snapshot = nxt
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            self._wal_records = 0
            old_wal.unlink(missing_ok=True)
            self._cleanup()

    def _compact_tombstones(self) -> None:
        if not self.tombstones:
            return
        try:
            self.index.remove_ids(np.fromiter(self.tombstones, dtype=np.int64))
            self.tombstones.clear()
            self._search_index = None
        except RuntimeError:
            pass  # index types without removal (HNSW) keep filtering tombstones at search time

    def _log(self, rec: dict) -> None:
        """Append one record and fsync: the write is durable when this returns."""
        if self._file_lock is None:
            raise CollectionError(f"collection '{self.name}' was opened read-only")
        if self._wal is None:
            self._wal = open(self._wal_path(), "ab")
        self._wal.write(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
        self._wal.flush()
        os.fsync(self._wal.fileno())
        self._wal_records += 1

    def _maybe_compact(self) -> None:
        if self._wal_records >= COMPACT_EVERY:
            self.save_snapshot()

    def close(self) -> None:
        with self._lock:
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            if self._file_lock is not None:
                self._file_lock.release()
                self._file_lock = None

    # ---------- writes ----------
    def _apply(self, rec: dict) -> None:
        op = rec["op"]
        if op == "upsert_docs":
            emb = _unb64(rec["emb"], self.manifest.dim)
            self._add_docs([(d["id"], d["title"], d["text"]) for d in rec["docs"]], emb)
        elif op == "delete_doc":
            self._delete_doc(rec["id"])
        elif op == "upsert_examples":
            exs = [Example(e["id"], e["query"], e["document"]) for e in rec["examples"]]
            emb = _unb64(rec["emb"], self.manifest.dim) if rec.get("emb") else None
            self._add_examples(exs, emb)
        elif op == "delete_example":
            self._delete_example(rec["id"])
        else:
            raise CollectionError(f"collection '{self.name}': unknown WAL op {op!r}")

    def _add_docs(self, docs: Sequence[tuple[str, str, str]], emb: np.ndarray) -> None:
        if not docs:
            return
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        fx.train_if_needed(self.index, emb)
        ids = np.arange(self.manifest.next_int_id, self.manifest.next_int_id + len(docs), dtype=np.int64)
        self.manifest.next_int_id += len(docs)
        for (doc_id, title, text), iid in zip(docs, ids, strict=True):
            self._delete_doc(doc_id)
            self.docs[doc_id] = Document(int(iid), title, text)
            self.int2id[int(iid)] = doc_id
        self.index.add_with_ids(emb, ids)
        self._search_index = None

    def _delete_doc(self, doc_id: str) -> bool:
        doc = self.docs.pop(doc_id, None)
        if doc is None:
            return False
        self.int2id.pop(doc.int_id, None)
        self.tombstones.add(doc.int_id)  # filtered at search time until the next snapshot removes it
        return True

    def _add_examples(self, exs: Sequence[Example], emb: np.ndarray | None) -> None:
        for i, ex in enumerate(exs):
            self.examples.pop(ex.id, None)
            self.examples[ex.id] = ex
            if emb is not None:
                self.pool_emb[ex.id] = emb[i]
        self._selector = None

    def _delete_example(self, ex_id: str) -> bool:
        existed = self.examples.pop(ex_id, None) is not None
        self.pool_emb.pop(ex_id, None)
        self._selector = None
        return existed

    def upsert_documents(
        self, docs: Sequence[tuple[str, str, str]], emb: np.ndarray, *, durable: bool = True
    ) -> None:
        """Add or replace documents with their embeddings. `durable=False` is for bulk builds that
        end with `save_snapshot()`."""
        with self._lock:
            if durable:
                self._log(
                    {
                        "op": "upsert_docs",
                        "docs": [{"id": i, "title": t, "text": x} for i, t, x in docs],
                        "emb": _b64(emb),
                    }
                )
            self._add_docs(docs, emb)
            if durable:
                self._maybe_compact()

    def delete_document(self, doc_id: str) -> bool:
        with self._lock:
            if doc_id not in self.docs:
                return False
            self._log({"op": "delete_doc", "id": doc_id})
            self._delete_doc(doc_id)
            self._maybe_compact()
            return True

    def upsert_examples(self, exs: Sequence[Example], *, durable: bool = True) -> None:
        emb = self._embed_pool([e.query for e in exs]) if self.manifest.selector == "dense" else None
        with self._lock:
            if durable:
                self._log(
                    {
                        "op": "upsert_examples",
                        "examples": [e.__dict__ for e in exs],
                        "emb": _b64(emb) if emb is not None else None,
                    }
                )
            self._add_examples(exs, emb)
            if durable:
                self._maybe_compact()

    def delete_example(self, ex_id: str) -> bool:
        with self._lock:
            if ex_id not in self.examples:
                return False
            self._log({"op": "delete_example", "id": ex_id})
            self._delete_example(ex_id)
            self._maybe_compact()
            return True

    # ---------- reads ----------
    def _embed_pool(self, queries: list[str]) -> np.ndarray:
        from rare.encoding import encode_texts

        return encode_texts(self.model, queries)

    @property
    def selector(self) -> Selector:
        with self._lock:
            if self._selector is None:
                exs = list(self.examples.values())
                embed: Callable | None = None
                embeddings = None
                if self.manifest.selector == "dense":
                    embed = self._embed_pool
                    missing = [e for e in exs if e.id not in self.pool_emb]
                    if missing:
                        for e, v in zip(missing, self._embed_pool([e.query for e in missing]), strict=True):
                            self.pool_emb[e.id] = v
                    embeddings = np.stack([self.pool_emb[e.id] for e in exs]) if exs else None
                self._selector = make_selector(
                    self.manifest.selector, exs, embed=embed, embeddings=embeddings
                )
            return self._selector

    def select_examples(self, queries: Sequence[str], k: int) -> list[list[ScoredExample]]:
        return self.selector.select(queries, k)

    def search(
        self, queries: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-k (doc id, score) per query embedding; deleted documents never come back."""
        with self._lock:
            if self._search_index is None:
                self._search_index = fx.to_gpu(self.index)
            ntotal = self.index.ntotal
            fetch = min(ntotal, k + len(self.tombstones))
            if fetch == 0:
                return [[] for _ in range(len(queries))]
            params = fx.search_params(self.index, nprobe, ef_search)
            with fx.search_threads(len(queries), ntotal):
                scores, ids = self._search_index.search(
                    np.ascontiguousarray(queries, dtype=np.float32), fetch, params=params
                )
            out = []
            for row_s, row_i in zip(scores, ids, strict=True):
                hits = [
                    (self.int2id[i], float(s)) for s, i in zip(row_s, row_i, strict=True) if i in self.int2id
                ]
                out.append(hits[:k])
            return out

    def document(self, doc_id: str) -> Document | None:
        return self.docs.get(doc_id)

    def stats(self) -> dict:
        m = self.manifest
        return {
            "name": self.name,
            "documents": len(self.docs),
            "examples": len(self.examples),
            "index_spec": m.index_spec,
            "selector": m.selector,
            "instruction": m.instruction,
            "model": m.model,
            "dim": m.dim,
            "pool_source": m.pool_source,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        }
