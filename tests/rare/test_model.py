import os
import subprocess
import sys

import numpy as np
import pytest

from rare.encoding import encode_batch, encode_texts, plan_batches, split_by_length, token_lengths
from rare.model import (
    ModelNotFoundError,
    RareConfig,
    cpu_bf16_unit,
    load_model,
    resolve_dtype,
    resolve_model_path,
)


def test_default_model_loads_offline_384_dims_normalized(model):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert model.dim == 384 and model.max_tokens == 256
    emb = encode_texts(model, ["a cat on a mat", "stock markets"])
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert not model.rare.trained and model.rare.k == 0  # base model: plain search by default


def test_token_budget_batching_matches_plain_encode(model):
    texts = ["short", "a somewhat longer sentence about retrieval", "x " * 300, "medium length text here"]
    ours = encode_texts(model, texts, batch_tokens=300)
    ref = model.st.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_plan_batches_respects_budget():
    lengths = np.array([5, 100, 20, 100, 50])
    batches = plan_batches(lengths, 200)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 200


def _cost(groups, lengths, overhead):
    return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)


def test_split_by_length_is_the_cheapest_partition():
    rng = np.random.default_rng(0)
    for _ in range(30):
        lengths = rng.integers(4, 120, size=int(rng.integers(1, 9))).tolist()
        groups = split_by_length(lengths, overhead_tokens=48)
        assert sorted(int(i) for g in groups for i in g) == list(range(len(lengths)))
        # Brute force over every contiguous cut of the sorted order (the optimum is contiguous in it).
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(
            _cost(
                [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True) if a < b],
                lengths,
                48,
            )
            for mask in range(2 ** max(len(order) - 1, 0))
            for cuts in [tuple(i + 1 for i in range(len(order) - 1) if mask >> i & 1)]
        )
        assert _cost(groups, lengths, 48) == pytest.approx(best)
    # Mixed short and long texts are not padded together; equal ones stay in one call.
    assert len(split_by_length([20] * 16 + [250] * 16)) == 2
    assert len(split_by_length([30] * 32)) == 1


def test_encode_batch_keeps_input_order(model):
    texts = ["x " * 200, "short query", "a middle sized sentence about proteins", "tiny"]
    lengths = [int(n) for n in token_lengths(model, texts)]
    np.testing.assert_allclose(encode_batch(model, texts, lengths), encode_texts(model, texts), atol=1e-5)


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no directory at"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="neither a local directory nor in the offline"):
        resolve_model_path("some-org/not-a-cached-model")
    docs = tmp_path / "x.jsonl"
    docs.write_text('{"id": "a", "text": "t"}\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rare_cli.main",
            "index",
            "--documents",
            str(docs),
            "--model",
            str(tmp_path / "nope"),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: model not found: no directory at {tmp_path / 'nope'}"


def test_rare_config_roundtrip(tmp_path):
    assert RareConfig.load(tmp_path) == RareConfig()
    RareConfig(k=5, trained=True, instruction="t").save(tmp_path)
    cfg = RareConfig.load(tmp_path)
    assert cfg.k == 5 and cfg.trained and cfg.instruction == "t"


def test_token_counting_in_threads_does_not_corrupt_concurrent_batches(model):
    """Regression: fast tokenizers share padding/truncation state; counting (no padding) in request threads
    while the encoder pads a batch used to fail with 'Unable to create tensor' under load."""
    from concurrent.futures import ThreadPoolExecutor

    from rare.prompt import Example, ScoredExample
    from rare.query import QueryAugmenter

    texts = ["short", "a much longer text " * 12, "medium length sentence here", "x " * 40]
    ref = encode_texts(model, texts)
    aug = QueryAugmenter(model)
    ex = [ScoredExample(Example("e", "what is it", "a document " * 30), 1.0)]

    def count(i: int) -> int:
        return sum(aug.build(f"query number {i} " * (i % 7 + 1), ex, "task").tokens for _ in range(20))

    def encode(_: int):
        return model.encode(texts)

    with ThreadPoolExecutor(6) as pool:
        counts = [pool.submit(count, i) for i in range(12)]
        encs = [pool.submit(encode, i) for i in range(12)]
        for f in counts:
            assert f.result() > 0
        for f in encs:
            np.testing.assert_allclose(f.result(), ref, atol=1e-5)


def test_cpu_bf16_unit_reads_the_flags_line(tmp_path):
    def unit(text: str) -> str | None:
        (tmp_path / "cpuinfo").write_text(text)
        return cpu_bf16_unit(str(tmp_path / "cpuinfo"))

    base = "processor\t: 0\nmodel name\t: x\nflags\t\t: fpu sse avx2 avx512f"
    assert unit(base + "\n") is None
    assert unit(base + " avx512_bf16 avx512_vnni\n") == "avx512_bf16"
    assert unit(base + " avx512_bf16 amx_bf16 amx_tile\n") == "amx_bf16"
    assert unit("model name\t: has avx512_bf16 in its name\nflags\t: fpu\n") is None  # flags only
    assert unit("") is None and cpu_bf16_unit(str(tmp_path / "missing")) is None


def test_dtype_auto_is_bfloat16_only_on_a_cpu_with_native_bf16():
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_bf16_unit() else "float32")
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16" and resolve_dtype("float16", "cuda") == "float16"
    with pytest.raises(ValueError, match="GPU only"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int4", "cpu")


def test_a_bfloat16_model_keeps_its_fingerprint_and_gives_unit_cosine_vectors(model):
    half = load_model(None, "cpu", "bfloat16")
    assert half is not model and half.dtype == "bfloat16" and model.dtype == "float32"
    assert {str(p.dtype) for p in half.st.parameters()} == {"torch.bfloat16"}
    assert {str(p.dtype) for p in model.st.parameters()} == {"torch.float32"}  # the shared one: untouched
    # A collection indexed in one format opens with the model in another: the same weights.
    assert half.fingerprint == model.fingerprint and half.info()["dtype"] == "bfloat16"
    texts = ["insulin is made in the pancreas", "glaciers carve valleys", "x " * 300]
    got, ref = encode_texts(half, texts), encode_texts(model, texts)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert (got * ref).sum(1).min() > 0.99
    assert (got[0] @ ref.T).argmax() == 0 and (got[1] @ ref.T).argmax() == 1
