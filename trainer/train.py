"""`rare train`: RARe fine-tuning with the sentence-transformers trainer."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from rare.model import RareConfig, load_model
from rare.prompt import FORMAT_VERSION
from trainer.collator import TrainingCollator
from trainer.config import TrainConfig
from trainer.data import build_samples, load_sources, to_dataset
from trainer.loss import WeightedInfoNCE
from trainer.output import write_model_dir
from trainer.weighting import easy_sample_weights, pretrained_losses

log = logging.getLogger(__name__)


def checkpoint_dir(output: Path) -> Path:
    return output.with_name(f"{output.name}-checkpoints")


def last_checkpoint(ckpt: Path) -> str | None:
    found = (
        sorted(ckpt.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if ckpt.is_dir() else []
    )
    return str(found[-1]) if found else None


def run_training(cfg: TrainConfig) -> dict:
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from trainer.sampler import TextNoDuplicatesBatchSampler

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    # A private copy: training changes the weights, and the shared cache must keep the base model.
    model = load_model(cfg.model, cfg.device, cache=False)
    base_name = model.name
    model.st.max_seq_length = cfg.max_seq_length
    sources = load_sources(cfg, model)
    samples = build_samples(cfg, model, sources)
    weights_info = None
    if cfg.forgetting_aware:
        losses = pretrained_losses(model, samples, cfg.temperature, group=cfg.batch_size, seed=cfg.seed)
        for s, w in zip(samples, easy_sample_weights(losses, cfg.forgetting_temperature), strict=True):
            s.weight = float(w)
        weights_info = {
            "loss_mean": float(losses.mean()),
            "weight_min": min(s.weight for s in samples),
            "weight_max": max(s.weight for s in samples),
        }
    dataset = to_dataset(samples, cfg.pooling, cfg.attention)

    ckpt = checkpoint_dir(cfg.output)
    cuda = model.device.startswith("cuda")
    mixed = cuda if cfg.mixed_precision is None else cfg.mixed_precision
    args = SentenceTransformerTrainingArguments(
        output_dir=str(ckpt),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio in transformers v5
        seed=cfg.seed,
        # Duplicate positives in a batch would be false in-batch negatives.
        batch_sampler=TextNoDuplicatesBatchSampler,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=max(1, min(10, cfg.save_steps)),
        report_to="none",
        bf16=mixed and (not cuda or torch.cuda.is_bf16_supported()),
        fp16=mixed and cuda and not torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        disable_tqdm=not cfg.show_progress,
        dataloader_num_workers=0,
    )
    collator = TrainingCollator(
        preprocess_fn=model.st.preprocess, tokenizer=model.tokenizer, max_seq_length=cfg.max_seq_length
    )
    trainer = SentenceTransformerTrainer(
        model=model.st,
        args=args,
        train_dataset=dataset,
        loss=WeightedInfoNCE(model.st, cfg.temperature),
        data_collator=collator,
    )
    resume_from = last_checkpoint(ckpt) if cfg.resume else None
    result = trainer.train(resume_from_checkpoint=resume_from)

    first = sources[0]
    rare = RareConfig(
        format_version=FORMAT_VERSION,
        k=cfg.k,
        selector=cfg.selector,
        instruction=first.instruction if len(sources) == 1 else None,
        example_doc_tokens=cfg.example_doc_tokens,
        max_query_tokens=cfg.max_seq_length,
        pooling=cfg.pooling,
        attention=cfg.attention,
        trained=True,
        base_model=base_name,
        training={
            "datasets": [s.name for s in sources],
            "samples": len(samples),
            "plain_fraction": cfg.plain_fraction,
            "random_example_fraction": cfg.random_example_fraction,
            "vary_k": cfg.vary_k,
            "max_pairs_per_query": cfg.max_pairs_per_query,
            "judged_negatives_masked": True,  # in-batch candidates judged relevant (trainer.negatives)
            "hard_negatives": len(samples[0].negatives) if samples else 0,
            "temperature": cfg.temperature,
            "forgetting_aware": cfg.forgetting_aware,
            "forgetting_temperature": cfg.forgetting_temperature if cfg.forgetting_aware else None,
            "epochs": cfg.epochs,
            "max_steps": cfg.max_steps,
            "global_step": result.global_step,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "doc_tokens": cfg.doc_tokens,
            "seed": cfg.seed,
            "precision": ("bf16" if args.bf16 else "fp16") if mixed else "float32",
        },
    )
    write_model_dir(model.st, rare, cfg.output)
    summary = {
        "output": str(cfg.output),
        "samples": len(samples),
        "global_step": result.global_step,
        "train_loss": round(float(result.training_loss), 4),
        "resumed_from": resume_from,
        "seconds": round(time.perf_counter() - t0, 1),
        "forgetting_aware": weights_info,
    }
    (cfg.output / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not cfg.keep_checkpoints:
        shutil.rmtree(ckpt, ignore_errors=True)
    return summary
