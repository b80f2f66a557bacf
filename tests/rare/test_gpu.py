"""CPU/GPU parity of FAISS search. Skips cleanly where CUDA FAISS is absent (always, in CI)."""

import numpy as np
import pytest

from rare import faiss_index as fx

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_gpu():
    if not fx.gpu_available():
        pytest.skip("no CUDA-enabled FAISS on this machine")


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat"])
def test_gpu_search_matches_cpu_and_converts_back(spec):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = fx.make_index(spec, 64)
    fx.train_if_needed(index, x)
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64) * 3)
    q = x[:50]
    params = fx.search_params(index, nprobe=16)
    cpu_d, cpu_i = index.search(q, 10, params=params)
    gpu = fx.to_gpu(index)
    assert "Gpu" in type(gpu).__name__ or "Gpu" in type(fx.inner(gpu)).__name__
    gpu_d, gpu_i = gpu.search(q, 10)
    np.testing.assert_allclose(gpu_d, cpu_d, atol=1e-4)
    assert (gpu_i[:, 0] == cpu_i[:, 0]).all()
    restored = fx.deserialize(fx.serialize(gpu))
    np.testing.assert_allclose(restored.search(q, 10, params=params)[0], cpu_d, atol=1e-5)
