import faiss
import numpy as np

from rare import faiss_index as fx


def test_blas_switch_is_lowered_from_faiss_1_15s_default_only():
    before = faiss.cvar.distance_compute_blas_threshold
    try:
        faiss.cvar.distance_compute_blas_threshold = fx.FAISS_1_15_BLAS_THRESHOLD
        fx.tune_blas_threshold()
        tuned = fx.BLAS_WORK_PER_THREAD * faiss.omp_get_max_threads()
        assert faiss.cvar.distance_compute_blas_threshold == tuned
        faiss.cvar.distance_compute_blas_threshold = 20  # older faiss counts queries; a user's value stands
        fx.tune_blas_threshold()
        assert faiss.cvar.distance_compute_blas_threshold == 20
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def test_batched_flat_search_through_blas_is_exact():
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1  # BLAS for any batch
    try:
        rng = np.random.default_rng(0)
        docs = rng.standard_normal((3000, 384), dtype=np.float32)
        queries = rng.standard_normal((16, 384), dtype=np.float32)
        scores, ids = fx.flat_ip(docs).search(queries, 10)
    finally:
        faiss.cvar.distance_compute_blas_threshold = before
    exact = queries.astype(np.float64) @ docs.T.astype(np.float64)
    np.testing.assert_array_equal(ids, np.argsort(-exact, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, 1), rtol=1e-4)
