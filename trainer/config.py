"""Training configuration (the `rare train` flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from rare.block_attention import Attention, check_pooling
from rare.pooling import Pooling


class TrainConfig(BaseModel):
    beir: list[Path] = Field(default_factory=list)
    jsonl: list[Path] = Field(default_factory=list)
    output: Path
    model: str | None = None
    device: str = "auto"
    # None: mixed precision on CUDA (bf16 where supported, else fp16), float32 on CPU; True on CPU is
    # bf16 autocast, measured to pay on a CPU with AMX or AVX512-BF16 (rare.model.cpu_bf16_unit).
    mixed_precision: bool | None = None
    k: int = Field(5, ge=0, le=32)
    selector: Literal["bm25", "dense", "random"] = "bm25"
    plain_fraction: float = Field(0.3, ge=0.0, le=1.0)
    random_example_fraction: float = Field(0.0, ge=0.0, le=1.0)
    max_pairs_per_query: int | None = Field(None, ge=1)
    vary_k: bool = False
    hard_negatives: int = Field(1, ge=0, le=16)
    skip_top: int = Field(3, ge=0)
    temperature: float = Field(0.05, gt=0.0)
    pooling: Pooling = "query"
    attention: Attention = "full"
    forgetting_aware: bool = False
    forgetting_temperature: float = Field(1.0, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(5e-5, gt=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    doc_tokens: int = Field(256, ge=16)
    example_doc_tokens: int = Field(64, ge=8)
    max_seq_length: int = Field(512, ge=32)
    save_steps: int = Field(100, ge=1)
    seed: int = 0
    resume: bool = True
    keep_checkpoints: bool = False
    show_progress: bool = True
    cache_dir: Path | None = Path("var/cache")

    @model_validator(mode="after")
    def _block_pools_query(self) -> TrainConfig:
        check_pooling(self.attention, self.pooling)
        return self
