"""FastAPI app: routes, auth, limits, metrics and error mapping around the Engine."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import secrets
import time
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from rare.collection import CollectionError, InvalidNameError
from rare.prompt import Example, QueryTooLongError
from rare.settings import Settings
from service import schemas as S
from service.batching import QueueFullError
from service.encode_pool import EncodeWorkerError
from service.engine import BadRequestError, Engine, NotFoundError, QueryResult, UnavailableError
from service.heap import freeze_startup_heap

log = logging.getLogger("rare.service")
access = logging.getLogger("rare.access")


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers


ERRORS: list[tuple[type[Exception], int]] = [
    (InvalidNameError, 422),
    (QueryTooLongError, 422),
    (BadRequestError, 422),
    (NotFoundError, 404),
    (UnavailableError, 503),
    (EncodeWorkerError, 503),
    (CollectionError, 503),
    (QueueFullError, 429),
]


class BodyLimitMiddleware:
    """413 for bodies over the limit, by Content-Length or by counting a streamed body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(413, f"request body over {self.max_bytes} bytes")
            return msg

        return await self.app(scope, limited, send)


class ObserveMiddleware:
    """Metrics and one structured access line per request (pure ASGI: no per-request task or stream)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500  # stays 500 if the app dies before answering

        async def send_status(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            dt = time.perf_counter() - t0
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(dt)
            if access.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access.info(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "endpoint": endpoint,
                        "status": status,
                        "ms": round(dt * 1000, 2),
                        "client": client[0] if client else None,
                    }
                )


# Async so FastAPI runs them on the event loop, not via a thread-pool hop per request.
async def check_key(request: Request) -> None:
    """Bearer key, compared in constant time; a no-op when no key is configured."""
    settings: Settings = request.app.state.settings
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})


async def read_auth(request: Request) -> None:
    if request.app.state.settings.auth_reads:
        await check_key(request)


class ErrorBody(BaseModel):
    detail: str | list


def _errors(*codes: int) -> dict:
    return {c: {"model": ErrorBody, "description": HTTPStatus(c).phrase} for c in codes}


# Every route may answer these; schema-valid input can still be refused (token limits, unknown collection).
COMMON = _errors(400, 401, 413, 415, 422, 429, 503)
WITH_404 = {**COMMON, **_errors(404)}  # routes that name a collection, document or example
Write = Annotated[None, Depends(check_key)]
Read = Annotated[None, Depends(read_auth)]


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = engine or Engine(settings)
    metrics = engine.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine.model is None:
            engine.load()
        await engine.start()
        if settings.gc_freeze:
            metrics.frozen.set(freeze_startup_heap())
        app.state.ready = True
        log.info("ready: model %s, collections %s", engine.model.name, sorted(engine.collections))
        yield
        app.state.ready = False
        await engine.stop()

    app = FastAPI(
        title="RARe retrieval service",
        version="0.1.0",
        description="Search with query embeddings augmented by in-context examples (RARe).",
        lifespan=lifespan,
    )
    app.state.ready = False
    app.state.engine = engine
    app.state.settings = settings
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObserveMiddleware, metrics=metrics)

    # ---------- errors: 4xx with a message, never a traceback ----------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    for exc_type, status in ERRORS:

        def handler(_: Request, exc: Exception, status: int = status):
            if status == 429:
                metrics.rejected.inc()
            headers = {"Retry-After": "1"} if status == 429 else None
            return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        ctype = request.headers.get("content-type", "")
        if ctype and "json" not in ctype.split(";")[0]:
            # `curl -d` without a JSON content type: FastAPI reads no JSON, and its error would not say why.
            return JSONResponse(
                {"detail": f"send the body as JSON with Content-Type: application/json (got '{ctype}')"},
                status_code=415,
            )
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    # ---------- search ----------
    def _json(body: BaseModel) -> Response:
        # The hot endpoints build their response model themselves; returned as a model, FastAPI would
        # validate it against response_model again and encode it through jsonable_encoder (~0.2 ms a
        # search of 10 abstracts). response_model still documents them.
        return Response(body.model_dump_json(), media_type="application/json")

    def _response(r: QueryResult, took_ms: float) -> S.SearchResponse:
        hits = []
        for doc_id, score in r.hits:
            d = r.collection.document(doc_id)
            if d is not None:  # deleted between search and lookup
                hits.append(S.Hit(id=doc_id, score=score, title=d.title, text=d.text))
        used = [
            S.UsedExample(
                id=s.example.id,
                query=s.example.query,
                document=s.example.document,
                score=None if math.isnan(s.score) else s.score,
            )
            for s in r.augmented.examples
        ]
        return S.SearchResponse(
            results=hits,
            examples=used,
            num_examples=len(used),
            query_tokens=r.augmented.tokens,
            took_ms=took_ms,
        )

    async def _run_searches(reqs: list[S.SearchRequest]) -> list[QueryResult]:
        # One engine call per (collection, top_k, k, caller examples?) group; groups run concurrently so
        # their texts share encode batches.
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            key = (r.collection, r.top_k, engine.resolve_k(r.num_examples), r.examples is not None)
            groups.setdefault(key, []).append(i)

        async def run(key: tuple, idxs: list[int]) -> list[QueryResult]:
            name, top_k, k, has_given = key
            given = (
                [[Example(None, e.query, e.document) for e in reqs[i].examples] for i in idxs]
                if has_given
                else None
            )
            return await engine.search(
                [reqs[i].query for i in idxs], engine.collection(name), top_k, k, given
            )

        out: list = [None] * len(reqs)
        done = await asyncio.gather(*(run(key, idxs) for key, idxs in groups.items()))
        for idxs, results in zip(groups.values(), done, strict=True):
            for i, res in zip(idxs, results, strict=True):
                out[i] = res
        return out

    @app.post("/search", response_model=S.SearchResponse, tags=["search"], responses=WITH_404)
    async def search(body: S.SearchRequest, _: Read) -> Response:
        t0 = time.perf_counter()
        (r,) = await _run_searches([body])
        return _json(_response(r, (time.perf_counter() - t0) * 1000))

    @app.post(
        "/search/batch",
        response_model=S.SearchBatchResponse,
        tags=["search"],
        responses=WITH_404,
    )
    async def search_batch(body: S.SearchBatchRequest, _: Read) -> Response:
        t0 = time.perf_counter()
        rs = await _run_searches(body.queries)
        took = (time.perf_counter() - t0) * 1000
        return _json(S.SearchBatchResponse(responses=[_response(r, took) for r in rs], took_ms=took))

    # ---------- embeddings ----------
    @app.post("/embed", response_model=S.EmbedResponse, tags=["embeddings"], responses=WITH_404)
    async def embed(body: S.EmbedRequest, _: Read) -> Response:
        if body.type == "document":
            vecs, tokens = await engine.encode_documents(body.texts)
        else:
            k = engine.resolve_k(body.num_examples)
            col = engine.collection(body.collection) if k > 0 else None
            aug = await engine.augment(body.texts, col, k)
            vecs = await engine.encode_queries(aug)
            tokens = sum(a.tokens for a in aug)
        return _json(
            S.EmbedResponse(
                embeddings=vecs.tolist(), dim=vecs.shape[1], model=engine.model.name, tokens=tokens
            )
        )

    @app.post(
        "/v1/embeddings", response_model=S.OpenAIEmbeddingResponse, tags=["embeddings"], responses=COMMON
    )
    async def openai_embeddings(body: S.OpenAIEmbeddingRequest, _: Read) -> Response:
        dim = engine.model.dim
        if body.dimensions not in (None, dim):
            # Cutting an embedding short is only sound for models trained for it (Matryoshka).
            raise ApiError(
                422, f"this model's embeddings have {dim} dimensions: omit `dimensions` or send {dim}"
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        vecs, tokens = await engine.encode_documents(texts)
        data = []
        for i, v in enumerate(vecs):
            emb = (
                base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else v.tolist()
            )
            data.append(S.OpenAIEmbedding(index=i, embedding=emb))
        return _json(
            S.OpenAIEmbeddingResponse(
                data=data,
                model=body.model or engine.model.name,
                usage=S.OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens),
            )
        )

    # ---------- collection writes ----------
    @app.get("/collections", response_model=S.CollectionsResponse, tags=["collections"], responses=COMMON)
    async def collections(_: Read) -> S.CollectionsResponse:
        return S.CollectionsResponse(
            collections=[S.CollectionInfo(**c.stats()) for c in engine.collections.values()],
            unavailable=engine.unavailable,
        )

    @app.post(
        "/collections/{name}/documents",
        response_model=S.DocumentsUpsert,
        tags=["collections"],
        responses=WITH_404,
    )
    async def upsert_documents(name: str, docs: list[S.DocumentIn], _: Write) -> S.DocumentsUpsert:
        if not 1 <= len(docs) <= 1024:
            raise ApiError(422, "send 1 to 1024 documents per call")
        if len({d.id for d in docs}) != len(docs):
            raise ApiError(422, "duplicate document ids in one call")
        col = await engine.upsert_documents(name, [(d.id, d.title, d.text) for d in docs])
        return S.DocumentsUpsert(upserted=len(docs), documents=len(col.docs))

    @app.delete(
        "/collections/{name}/documents/{doc_id}",
        response_model=S.Deleted,
        tags=["collections"],
        responses=WITH_404,
    )
    async def delete_document(name: str, doc_id: str, _: Write) -> S.Deleted:
        if not await engine.delete_document(name, doc_id):
            raise ApiError(404, f"document '{doc_id}' not found in collection '{name}'")
        return S.Deleted(deleted=True, id=doc_id)

    @app.post(
        "/collections/{name}/examples",
        response_model=S.ExamplesUpsert,
        tags=["collections"],
        responses=WITH_404,
    )
    async def upsert_examples(name: str, examples: list[S.ExampleIn], _: Write) -> S.ExamplesUpsert:
        if not 1 <= len(examples) <= 1024:
            raise ApiError(422, "send 1 to 1024 examples per call")
        col, ids = await engine.upsert_examples(name, [(e.query, e.document) for e in examples])
        return S.ExamplesUpsert(ids=ids, examples=len(col.examples))

    @app.delete(
        "/collections/{name}/examples/{ex_id}",
        response_model=S.Deleted,
        tags=["collections"],
        responses=WITH_404,
    )
    async def delete_example(name: str, ex_id: str, _: Write) -> S.Deleted:
        if not await engine.delete_example(name, ex_id):
            raise ApiError(404, f"example '{ex_id}' not found in collection '{name}'")
        return S.Deleted(deleted=True, id=ex_id)

    # ---------- operations ----------
    @app.get("/health", response_model=S.Status, tags=["ops"], responses=_errors(503))
    async def health() -> JSONResponse:
        try:
            await engine.check()
        except Exception as exc:
            return JSONResponse({"status": "unhealthy", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", response_model=S.Status, tags=["ops"], responses=_errors(503))
    async def ready() -> JSONResponse:
        if not app.state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        if engine.unavailable:
            detail = "; ".join(f"{n}: {m}" for n, m in engine.unavailable.items())
            return JSONResponse({"status": "degraded", "detail": detail}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        for b in (engine.encoder, engine.searcher, engine.selector):
            if b is not None:
                metrics.queue.labels(b.name).set(b.pending)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", tags=["ops"], responses=COMMON)
    async def info(_: Read) -> dict:
        return engine.info()

    return app
