"""The `rare` console script: index, serve, train, merge, eval. Flags mirror Settings fields (RARE_* env
vars)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rare.settings import Settings, get_settings

app = typer.Typer(
    name="rare",
    help="RARe retrieval: index corpora, serve search with in-context examples, train and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _help(field: str) -> str:
    return f"{Settings.model_fields[field].description} (env RARE_{field.upper()})"


# Options shared by subcommands; None = not given, so the env var or the default applies.
DataDir = Annotated[Path | None, typer.Option("--data-dir", help=_help("data_dir"))]
Model = Annotated[str | None, typer.Option("--model", help=_help("model"))]
Device = Annotated[str | None, typer.Option("--device", help=_help("device"))]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help=_help("dtype"))]
NumExamples = Annotated[int | None, typer.Option("--num-examples", help=_help("num_examples"))]
Selector = Annotated[str | None, typer.Option("--selector", help=_help("selector"))]
ExampleDocTokens = Annotated[
    int | None, typer.Option("--example-doc-tokens", help=_help("example_doc_tokens"))
]
MaxQueryTokens = Annotated[int | None, typer.Option("--max-query-tokens", help=_help("max_query_tokens"))]
PoolingOpt = Annotated[str | None, typer.Option("--pooling", help=_help("pooling"))]
AttentionOpt = Annotated[str | None, typer.Option("--attention", help=_help("attention"))]
BatchTokens = Annotated[int | None, typer.Option("--batch-tokens", help=_help("batch_tokens"))]


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _one_line(exc: Exception) -> str:
    """A pydantic validation error as `field: message; ...`; any other error as its text."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            loc, msg = ".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)  # no field: a check across fields
        return "; ".join(parts)
    return str(exc)


def _settings(**kw) -> Settings:
    from pydantic import ValidationError

    try:
        return get_settings(**kw)
    except ValidationError as exc:
        _fail(_one_line(exc))


def _model(s: Settings):
    from rare.model import ModelNotFoundError, load_model

    try:
        return load_model(s.model, s.device, s.dtype)
    except (ModelNotFoundError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def index(
    collection: Annotated[
        str, typer.Option("--collection", help="Collection name to build or extend.")
    ] = "default",
    beir: Annotated[
        Path | None, typer.Option("--beir", help="BEIR folder: corpus + qrels for the pool.")
    ] = None,
    pool_split: Annotated[
        str | None, typer.Option("--pool-split", help="qrels split for examples; default train, else dev.")
    ] = None,
    documents: Annotated[
        Path | None, typer.Option("--documents", help='JSONL of {"id","title","text"}.')
    ] = None,
    examples: Annotated[
        Path | None, typer.Option("--examples", help='JSONL of {"query","document"} pairs.')
    ] = None,
    index_spec: Annotated[
        str, typer.Option("--index-spec", help="FAISS factory string: Flat, IVF256,Flat, HNSW32, IVF64,PQ16.")
    ] = "Flat",
    instruction: Annotated[
        str | None, typer.Option("--instruction", help="Task instruction for queries of this collection.")
    ] = None,
    selector: Selector = None,
    data_dir: DataDir = None,
    model: Model = None,
    device: Device = None,
    dtype: DtypeOpt = None,
    batch_tokens: BatchTokens = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Encode a corpus into a persisted FAISS collection (only new or changed documents are encoded)."""
    from rare.beir_data import DataError
    from rare.collection import CollectionError, InvalidNameError, validate_name
    from rare.faiss_index import IndexSpecError
    from rare.indexer import index_beir, index_jsonl

    s = _settings(
        data_dir=data_dir,
        model=model,
        device=device,
        dtype=dtype,
        batch_tokens=batch_tokens,
        selector=selector,
    )
    if (beir is None) == (documents is None and examples is None):
        _fail("give either --beir DIR or --documents/--examples JSONL files")
    # Cheap checks first: no model load for a typo.
    try:
        validate_name(collection)
    except InvalidNameError as exc:
        _fail(str(exc))
    for label, path, is_dir in (
        ("BEIR folder", beir, True),
        ("documents file", documents, False),
        ("examples file", examples, False),
    ):
        if path is not None and not (path.is_dir() if is_dir else path.is_file()):
            _fail(f"{label} not found: {path}")
    m = _model(s)
    try:
        if beir is not None:
            stats = index_beir(
                s.data_dir,
                collection,
                m,
                beir,
                split=pool_split,
                index_spec=index_spec,
                instruction=instruction,
                selector=s.selector,
                batch_tokens=s.batch_tokens,
                show_progress=not quiet,
            )
        else:
            stats = index_jsonl(
                s.data_dir,
                collection,
                m,
                documents,
                examples,
                index_spec=index_spec,
                instruction=instruction,
                selector=s.selector,
                batch_tokens=s.batch_tokens,
                show_progress=not quiet,
            )
    except (DataError, CollectionError, InvalidNameError, IndexSpecError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(stats))


@app.command()
def serve(
    data_dir: DataDir = None,
    model: Model = None,
    device: Device = None,
    dtype: DtypeOpt = None,
    host: Annotated[str | None, typer.Option("--host", help=_help("host"))] = None,
    port: Annotated[int | None, typer.Option("--port", help=_help("port"))] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help=_help("api_key"))] = None,
    auth_reads: Annotated[
        bool | None, typer.Option("--auth-reads/--open-reads", help=_help("auth_reads"))
    ] = None,
    num_examples: NumExamples = None,
    selector: Selector = None,
    example_doc_tokens: ExampleDocTokens = None,
    max_query_tokens: MaxQueryTokens = None,
    pooling: PoolingOpt = None,
    attention: AttentionOpt = None,
    example_cache_mb: Annotated[
        int | None, typer.Option("--example-cache-mb", help=_help("example_cache_mb"))
    ] = None,
    warm_example_cache: Annotated[
        bool | None,
        typer.Option("--warm-example-cache/--no-warm-example-cache", help=_help("warm_example_cache")),
    ] = None,
    gc_freeze: Annotated[
        bool | None, typer.Option("--gc-freeze/--no-gc-freeze", help=_help("gc_freeze"))
    ] = None,
    encode_workers: Annotated[
        int | None, typer.Option("--encode-workers", help=_help("encode_workers"))
    ] = None,
    batch_tokens: BatchTokens = None,
    max_queue: Annotated[int | None, typer.Option("--max-queue", help=_help("max_queue"))] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option("--max-body-bytes", help=_help("max_body_bytes"))
    ] = None,
    max_top_k: Annotated[int | None, typer.Option("--max-top-k", help=_help("max_top_k"))] = None,
    cors_origins: Annotated[
        list[str] | None, typer.Option("--cors-origins", help=_help("cors_origins"))
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help=_help("log_level"))] = None,
) -> None:
    """Serve search over the collections in the data directory (FastAPI + uvicorn)."""
    from rare.model import ModelNotFoundError, resolve_device, resolve_dtype, resolve_model_path
    from service.server import serve as run

    s = _settings(
        data_dir=data_dir,
        model=model,
        device=device,
        dtype=dtype,
        host=host,
        port=port,
        api_key=api_key,
        auth_reads=auth_reads,
        num_examples=num_examples,
        selector=selector,
        example_doc_tokens=example_doc_tokens,
        max_query_tokens=max_query_tokens,
        pooling=pooling,
        attention=attention,
        example_cache_mb=example_cache_mb,
        warm_example_cache=warm_example_cache,
        gc_freeze=gc_freeze,
        encode_workers=encode_workers,
        batch_tokens=batch_tokens,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
        max_top_k=max_top_k,
        cors_origins=cors_origins or None,
        log_level=log_level,
    )
    # Refused before anything starts: from the app's start-up, uvicorn would log a traceback instead.
    try:
        resolve_dtype(s.dtype, resolve_device(s.device))
        resolve_model_path(s.model)
    except (ModelNotFoundError, ValueError) as exc:
        _fail(str(exc))
    run(s)


@app.command()
def train(
    beir: Annotated[
        list[Path] | None, typer.Option("--beir", help="BEIR folder(s) with a train split.")
    ] = None,
    jsonl: Annotated[
        list[Path] | None, typer.Option("--jsonl", help='JSONL of {"query","positive","negatives"?}.')
    ] = None,
    output: Annotated[Path, typer.Option("--output", help="Where the trained model directory goes.")] = Path(
        "var/models/rare"
    ),
    k: Annotated[
        int, typer.Option("--k", help="In-context examples per training query (0 = instruct baseline).")
    ] = 5,
    selector: Annotated[str, typer.Option("--selector", help="bm25 | dense | random")] = "bm25",
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")
    ] = None,
    epochs: Annotated[float, typer.Option("--epochs")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    lr: Annotated[float, typer.Option("--lr")] = 5e-5,
    plain_fraction: Annotated[
        float, typer.Option("--plain-fraction", help="Share of queries trained without examples.")
    ] = 0.3,
    random_example_fraction: Annotated[
        float,
        typer.Option(
            "--random-example-fraction",
            help="Share of the queries trained with examples that get random pool examples instead of "
            "the nearest (so the model learns to discount unrelated ones).",
        ),
    ] = 0.0,
    vary_k: Annotated[bool, typer.Option("--vary-k/--fixed-k", help="Draw k per sample in 1..k.")] = False,
    max_pairs_per_query: Annotated[
        int | None,
        typer.Option(
            "--max-pairs-per-query",
            help=(
                "BEIR: at most this many (query, judged document) pairs per query, best grade first, "
                "ties in the qrels file's order."
            ),
        ),
    ] = None,
    hard_negatives: Annotated[
        int, typer.Option("--hard-negatives", help="Mined hard negatives per query.")
    ] = 1,
    skip_top: Annotated[
        int, typer.Option("--skip-top", help="Mined ranks skipped (false-negative guard).")
    ] = 3,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.05,
    pooling: Annotated[
        str,
        typer.Option(
            "--pooling",
            help="query: an augmented query is pooled over its own tokens (examples shape it through "
            "attention); full: over the whole string.",
        ),
    ] = "query",
    attention: Annotated[
        str,
        typer.Option(
            "--attention",
            help="full: every token attends to every other; block: examples attend only to themselves "
            "(and the instruction), so the server encodes each once and caches it (query pooling).",
        ),
    ] = "full",
    forgetting_aware: Annotated[bool, typer.Option("--forgetting-aware/--no-forgetting-aware")] = False,
    mixed_precision: Annotated[
        bool | None,
        typer.Option(
            "--mixed-precision/--float32",
            help="bf16 (fp16 where a GPU lacks it) autocast; default: on with CUDA, off on CPU (where it "
            "pays with AMX or AVX512-BF16; off keeps the README's recipes exact).",
        ),
    ] = None,
    forgetting_temperature: Annotated[
        float,
        typer.Option(
            "--forgetting-temperature",
            help="T in w ~ exp(-pre-trained loss / T); larger is gentler (closer to uniform weights).",
        ),
    ] = 1.0,
    doc_tokens: Annotated[int, typer.Option("--doc-tokens", help="Max tokens of training documents.")] = 256,
    example_doc_tokens: ExampleDocTokens = None,
    max_seq_length: Annotated[
        int, typer.Option("--max-seq-length", help="Token limit of augmented queries (saved with the model).")
    ] = 512,
    warmup_ratio: Annotated[float, typer.Option("--warmup-ratio")] = 0.1,
    save_steps: Annotated[
        int, typer.Option("--save-steps", help="Checkpoint every N steps (for --resume).")
    ] = 100,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints/--drop-checkpoints")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Resume from the last checkpoint in --output.")
    ] = True,
    model: Model = None,
    device: Device = None,
    data_dir: DataDir = None,
) -> None:
    """Fine-tune an embedder the RARe way (nearest-neighbour demonstrations, contrastive loss)."""
    from rare.beir_data import DataError
    from rare.model import ModelNotFoundError
    from trainer.config import TrainConfig
    from trainer.train import run_training

    s = _settings(data_dir=data_dir, model=model, device=device, example_doc_tokens=example_doc_tokens)
    if not beir and not jsonl:
        _fail("give at least one --beir DIR or --jsonl FILE")
    try:
        cfg = TrainConfig(
            beir=list(beir or []),
            jsonl=list(jsonl or []),
            output=output,
            model=s.model,
            device=s.device,
            k=k,
            selector=selector,
            max_steps=max_steps,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            plain_fraction=plain_fraction,
            random_example_fraction=random_example_fraction,
            vary_k=vary_k,
            max_pairs_per_query=max_pairs_per_query,
            hard_negatives=hard_negatives,
            skip_top=skip_top,
            temperature=temperature,
            pooling=pooling,
            attention=attention,
            forgetting_aware=forgetting_aware,
            mixed_precision=mixed_precision,
            forgetting_temperature=forgetting_temperature,
            doc_tokens=doc_tokens,
            example_doc_tokens=s.example_doc_tokens or 64,
            seed=seed,
            resume=resume,
            max_seq_length=max_seq_length,
            warmup_ratio=warmup_ratio,
            save_steps=save_steps,
            keep_checkpoints=keep_checkpoints,
            cache_dir=s.data_dir / "cache",
        )
        result = run_training(cfg)
    except (DataError, ModelNotFoundError, ValueError) as exc:  # ValueError: TrainConfig's validation too
        _fail(_one_line(exc))
    typer.echo(json.dumps(result))


@app.command()
def merge(
    first: Annotated[
        str, typer.Argument(help="The RARe model; the merge keeps its settings (k, pooling, ...).")
    ],
    second: Annotated[
        str, typer.Argument(help="A fine-tune of the same base to average with (e.g. the k=0 model).")
    ],
    weight: Annotated[
        float, typer.Option("--weight", help="Share of FIRST's weights; SECOND gets the rest.")
    ] = 0.5,
    output: Annotated[Path, typer.Option("--output", help="Where the merged model directory goes.")] = Path(
        "var/models/merged"
    ),
    device: Device = None,
) -> None:
    """Average two fine-tunes of one base model, weight by weight (a model soup)."""
    from rare.model import ModelNotFoundError
    from trainer.merge import MergeError, merge_models

    s = _settings(device=device)
    try:
        result = merge_models(first, second, weight, output, s.device)
    except (ModelNotFoundError, MergeError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result))


@app.command("eval")
def evaluate(
    beir: Annotated[list[Path], typer.Option("--beir", help="BEIR folder(s) to evaluate on.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Model(s); default the bundled one.")
    ] = None,
    num_examples: NumExamples = None,
    runs: Annotated[
        str, typer.Option("--runs", help="Comma list of plain, rare, random.")
    ] = "plain,rare,random",
    split: Annotated[str, typer.Option("--split", help="qrels split to evaluate.")] = "test",
    url: Annotated[str | None, typer.Option("--url", help="Evaluate a running `rare serve` instead.")] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", help="With --url: collection to search.")
    ] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help=_help("api_key"))] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default <data-dir>/eval).")
    ] = None,
    max_queries: Annotated[
        int | None, typer.Option("--max-queries", help="Evaluate at most this many queries.")
    ] = None,
    data_dir: DataDir = None,
    device: Device = None,
    dtype: DtypeOpt = None,
    pooling: PoolingOpt = None,
    attention: AttentionOpt = None,
    batch_tokens: BatchTokens = None,
) -> None:
    """BEIR evaluation: nDCG@10, Recall@100, MAP, MRR for base, fine-tuned and RARe runs."""
    from eval.runner import EvalConfig, ServiceError, run_eval
    from rare.beir_data import DataError
    from rare.model import ModelNotFoundError

    s = _settings(
        data_dir=data_dir,
        device=device,
        dtype=dtype,
        batch_tokens=batch_tokens,
        api_key=api_key,
        pooling=pooling,
        attention=attention,
    )
    cfg = EvalConfig(
        beir=beir,
        models=model or [None],
        num_examples=num_examples,
        runs=[r.strip() for r in runs.split(",") if r.strip()],
        split=split,
        url=url,
        collection=collection,
        api_key=s.api_key.get_secret_value() if s.api_key else None,
        out=out or s.data_dir / "eval",
        data_dir=s.data_dir,
        device=s.device,
        dtype=s.dtype,
        batch_tokens=s.batch_tokens,
        max_queries=max_queries,
        pooling=s.pooling,
        attention=s.attention,
    )
    try:
        table = run_eval(cfg)
    except (DataError, ModelNotFoundError, ServiceError, ValueError) as exc:
        _fail(str(exc))
    sys.stdout.write(table + "\n")


if __name__ == "__main__":
    app()
