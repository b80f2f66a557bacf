"""Request and response models: the API's edge."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
DocId = Annotated[str, StringConstraints(min_length=1, max_length=512)]
CollectionName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Strict(BaseModel):
    # Unknown fields are rejected everywhere, so a typo ("topk") is an error rather than ignored.
    model_config = ConfigDict(extra="forbid")


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty or whitespace")
    return v


class ExampleIn(Strict):
    query: NonEmpty
    document: NonEmpty

    _q = field_validator("query", "document")(_not_blank)


class SearchRequest(Strict):
    query: NonEmpty
    collection: CollectionName = "default"
    top_k: int = Field(10, ge=1, le=10_000)
    num_examples: int | None = Field(None, ge=0, le=32, description="None = the collection/model default")
    examples: list[ExampleIn] | None = Field(
        None, max_length=32, description="Caller-supplied pairs, most similar first; override retrieval."
    )

    _q = field_validator("query")(_not_blank)


class SearchBatchRequest(Strict):
    queries: list[SearchRequest] = Field(..., min_length=1, max_length=256)


class Hit(BaseModel):
    id: str
    score: float
    title: str
    text: str


class UsedExample(BaseModel):
    id: str | None
    query: str
    document: str
    score: float | None


class SearchResponse(BaseModel):
    results: list[Hit]
    examples: list[UsedExample]
    num_examples: int
    query_tokens: int
    took_ms: float


class SearchBatchResponse(BaseModel):
    responses: list[SearchResponse]
    took_ms: float


class EmbedRequest(Strict):
    texts: list[NonEmpty] = Field(..., min_length=1, max_length=512)
    type: Literal["query", "document"] = "query"
    num_examples: int | None = Field(None, ge=0, le=32)
    collection: CollectionName = "default"


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
    model: str
    tokens: int


class OpenAIEmbeddingRequest(BaseModel):
    # The OpenAI client may send fields this service has no use for (user): accept, ignore.
    model_config = ConfigDict(extra="ignore")
    input: NonEmpty | list[NonEmpty] = Field(...)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="The model's own size or omitted: none other")

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_arrays(cls, v):
        # OpenAI also takes token ids; they would fail the string checks with a message naming neither.
        if isinstance(v, int) or (isinstance(v, list) and v and not isinstance(v[0], str)):
            raise ValueError("token arrays are not supported: send a string or a list of strings")
        return v

    @field_validator("input")
    @classmethod
    def _nonempty_list(cls, v):
        if isinstance(v, list) and not 1 <= len(v) <= 2048:
            raise ValueError("input must hold 1 to 2048 strings")
        return v


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class DocumentIn(Strict):
    id: DocId
    title: str = Field("", max_length=2_000)
    text: NonEmpty

    _t = field_validator("text")(_not_blank)


class DocumentsUpsert(BaseModel):
    upserted: int
    documents: int


class ExamplesUpsert(BaseModel):
    ids: list[str]
    examples: int


class Deleted(BaseModel):
    deleted: bool
    id: str


class CollectionInfo(BaseModel):
    name: str
    documents: int
    examples: int
    index_spec: str
    selector: str
    instruction: str | None
    model: str
    dim: int
    pool_source: str | None
    created_at: str
    updated_at: str


class CollectionsResponse(BaseModel):
    collections: list[CollectionInfo]
    unavailable: dict[str, str]


class Status(BaseModel):
    status: str
    detail: str | None = None
