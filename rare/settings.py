"""The one settings object. Every field is a `RARE_<NAME>` env var and a `--<name>` CLI flag."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rare.block_attention import Attention, check_pooling
from rare.encoding import DEFAULT_BATCH_TOKENS
from rare.model import Dtype
from rare.pooling import Pooling

SelectorName = Literal["bm25", "dense", "random"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RARE_", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="Where collections, caches and outputs live.")
    model: str | None = Field(
        None, description="sentence-transformers model directory or id; unset = bundled all-MiniLM-L6-v2."
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N; auto picks CUDA when torch sees it.")
    dtype: Dtype = Field(
        "auto",
        description="Number format the model runs in to index, serve and evaluate: auto | float32 | "
        "bfloat16 | float16 (GPU only); auto = bfloat16 on a CPU with native bf16 (AMX or AVX512-BF16), "
        "float32 elsewhere.",
    )
    host: str = Field("127.0.0.1", description="Address the server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the server listens on.")
    api_key: SecretStr | None = Field(None, description="Bearer key required for writes (and reads if set).")
    auth_reads: bool = Field(False, description="Require the API key for read endpoints too.")
    num_examples: int | None = Field(
        None, ge=0, le=32, description="Default in-context examples per query; unset = the model's own k."
    )
    selector: SelectorName | None = Field(
        None, description="Example selector: bm25 | dense | random; unset = the model's own (bm25)."
    )
    example_doc_tokens: int | None = Field(
        None, ge=8, le=512, description="Token cap for each example document; unset = the model's own (64)."
    )
    max_query_tokens: int | None = Field(
        None, ge=16, description="Token budget of a whole augmented query; unset = the model's max length."
    )
    pooling: Pooling | None = Field(
        None,
        description="How a query with examples is pooled: query (its own tokens) | full (the whole "
        "string, under full attention); unset = the model's own (query for a base model).",
    )
    attention: Attention | None = Field(
        None,
        description="How a query's tokens meet its examples: block (each example encoded apart and "
        "cached; BERT encoders) | full (one pass over the whole string); unset = the model's own (block "
        "for a base BERT model with mean pooling, such as the bundled one).",
    )
    example_cache_mb: int = Field(
        1024,
        ge=0,
        description="Memory for cached example blocks of a block-attention model, per encode worker "
        "(keys and values of each example at every layer: 1.2-1.6 MB an example for all-MiniLM-L6-v2).",
    )
    warm_example_cache: bool = Field(
        True,
        description="Block attention, with examples by default (a RARe model, or num_examples > 0): "
        "before the server reports ready, put every collection's pool examples into each encode "
        "worker's example cache (as many as 90% of it holds), so no search pays for a first use.",
    )
    gc_freeze: bool = Field(
        True,
        description="Once started, move the server's and each encode worker's start-up heap out of "
        "Python's full garbage collections (gc.freeze): they otherwise stop a process for 0.2-0.4 s "
        "under load. Off only if reference cycles among start-up objects must still be collected.",
    )
    encode_workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Processes that run the server's model, sharing the CPU cores; 1 runs it in the "
        "server's own process; unset = one per CPU core up to 4 on CPU, 1 on a GPU.",
    )
    batch_tokens: int = Field(
        DEFAULT_BATCH_TOKENS, ge=256, description="Padded-token budget of one encode batch."
    )
    max_queue: int = Field(512, ge=1, description="Queued texts past which the server answers 429.")
    max_body_bytes: int = Field(
        4_000_000, ge=1024, description="Largest request body accepted (413 past it)."
    )
    max_top_k: int = Field(1000, ge=1, description="Largest top_k a search may ask for.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Allowed CORS origins (none by default)."
    )
    log_level: str = Field("info", description="Log level of the server.")

    @model_validator(mode="after")
    def _block_pools_the_query(self) -> Settings:
        check_pooling(self.attention, self.pooling)
        return self


def get_settings(**overrides: object) -> Settings:
    """Settings from env vars, with explicit (CLI) values on top; None means "not given"."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
