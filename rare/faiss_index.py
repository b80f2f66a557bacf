"""FAISS helpers: index-factory specs, per-search parameters, GPU copies with a CPU fallback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import faiss
import numpy as np

log = logging.getLogger(__name__)


# faiss 1.15 moved its switch from its own scan to BLAS from 20 queries to nq x d >= 128000 (334 queries of
# 384 dims), tuned for tens of OpenMP threads; here (1-2 threads) BLAS wins from nq x d ~1000: a SciFact
# batch of 16 queries on one thread takes 0.07 ms a query against 0.28 (bench/search.py; faiss PR #5109
# proposes 800 a thread). Lowered only from that default: older faiss counts queries, and a user's own
# setting stands.
FAISS_1_15_BLAS_THRESHOLD = 128_000
BLAS_WORK_PER_THREAD = 1024


def tune_blas_threshold() -> None:
    if faiss.cvar.distance_compute_blas_threshold == FAISS_1_15_BLAS_THRESHOLD:
        faiss.cvar.distance_compute_blas_threshold = BLAS_WORK_PER_THREAD * faiss.omp_get_max_threads()


tune_blas_threshold()


class IndexSpecError(ValueError):
    pass


def flat_ip(vectors: np.ndarray) -> faiss.Index:
    """An exact inner-product index over `vectors` (positions as ids)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def make_index(spec: str, dim: int) -> faiss.Index:
    """An id-mapped inner-product index from a factory string: Flat, IVF256,Flat, HNSW32, IVF64,PQ16."""
    try:
        base = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexSpecError(f"invalid FAISS index spec '{spec}': {str(exc).splitlines()[-1]}") from None
    return faiss.IndexIDMap2(base)


# Below this many (query, vector) pairs a search is a few milliseconds on one core, and waking FAISS's
# OpenMP pool costs more than it saves: its spinning threads take the cores from the model encoding
# next to it (served plain search at concurrency 1 ran ~35% faster on one thread).
SMALL_SEARCH_PAIRS = 1 << 22


@contextlib.contextmanager
def search_threads(n_queries: int, n_vectors: int) -> Iterator[None]:
    """One OpenMP thread for small searches. The setting is per calling thread, and restored."""
    if n_queries * n_vectors > SMALL_SEARCH_PAIRS:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def inner(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def train_if_needed(index: faiss.Index, vectors: np.ndarray, max_train: int = 100_000, seed: int = 0) -> None:
    if index.is_trained:
        return
    base = inner(index)
    need = getattr(base, "nlist", 1)
    if len(vectors) < need:
        raise IndexSpecError(
            f"index needs at least {need} vectors to train, got {len(vectors)}: "
            "add more documents or use Flat"
        )
    if len(vectors) > max_train:  # train on a sample: training cost grows with the corpus
        rng = np.random.default_rng(seed)
        vectors = vectors[rng.choice(len(vectors), max_train, replace=False)]
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))


def search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None):
    """Per-call parameters, so concurrent searches never share mutable index state."""
    base = inner(index)
    if nprobe and isinstance(base, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=nprobe)
    if ef_search and isinstance(base, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=ef_search)
    return None


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_gpu_resources = None


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A GPU copy for searching when CUDA FAISS is present; otherwise the index itself."""
    global _gpu_resources
    if not gpu_available():
        return index
    try:
        if _gpu_resources is None:
            _gpu_resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(_gpu_resources, 0, index)
    except Exception as exc:  # an index type without a GPU version stays on the CPU
        log.warning("FAISS GPU copy failed (%s); searching on the CPU", exc)
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    """Always convert back before writing: GPU indices cannot be serialized."""
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(to_cpu(index)).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
