"""The augmented query: defined once here, imported by trainer, service and eval.

    Instruct: {task}\\n
    Query: {q_i}\\nPositive Document: {d_i}\\n\\n      (one block per example, the most similar LAST)
    Query: {q}

Budget rules, with the model's own tokenizer: each example document is capped to a per-example token
budget; if the whole string is still over the model's max length, whole examples are dropped starting
from the least similar. The instruction and the target query are never cut: if they alone are too long,
`QueryTooLongError` is raised instead of silently truncating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from rare.tokens import TokenCounter

FORMAT_VERSION = 1
FORMAT_DESCRIPTION = r"Instruct: {task}\n + (Query: {q_i}\nPositive Document: {d_i}\n\n)* + Query: {q}"
DEFAULT_INSTRUCTION = "Given a query, retrieve relevant documents that answer the query"


@dataclass(frozen=True)
class Example:
    """A demonstration: a pool query and its relevant document."""

    id: str
    query: str
    document: str


@dataclass(frozen=True)
class ScoredExample:
    example: Example
    score: float


def example_block(query: str, document: str) -> str:
    return f"Query: {query}\nPositive Document: {document}\n\n"


def format_query(query: str, examples: Sequence[Example], instruction: str | None) -> str:
    """`examples` come most-similar FIRST (as selectors return them); they are written most-similar LAST.

    With no examples and no instruction the query is returned as is (a plain base-model query).
    """
    return layout_query(query, examples, instruction)[0]


def layout_query(
    query: str, examples: Sequence[Example], instruction: str | None
) -> tuple[str, tuple[int, ...]]:
    """`format_query`'s string and where its blocks start: each example block, then the target's
    `Query: ` (empty for a raw query). Block attention (rare.block_attention) splits the string there."""
    if not examples and instruction is None:
        return query, ()
    parts = [f"Instruct: {instruction or DEFAULT_INSTRUCTION}\n"]
    parts += [example_block(ex.query, ex.document) for ex in reversed(examples)]
    starts, at = [], 0
    for part in parts:
        at += len(part)
        starts.append(at)
    return "".join(parts) + f"Query: {query}", tuple(starts)


class QueryTooLongError(ValueError):
    def __init__(self, tokens: int, limit: int):
        super().__init__(
            f"query is {tokens} tokens with its instruction; the model allows {limit}. "
            "Shorten the query: it is never truncated silently."
        )
        self.tokens = tokens
        self.limit = limit


@dataclass(frozen=True)
class AugmentedQuery:
    text: str
    examples: list[ScoredExample] = field(default_factory=list)  # used ones, most similar first
    tokens: int = 0
    query_start: int = 0  # character offset of the target query in `text`
    pool_from: int = 0  # where pooling starts (rare.pooling): query_start under query pooling, else 0
    block_starts: tuple[int, ...] = ()  # where each example block and the target `Query: ` start
    blocks: tuple[int, ...] = ()  # block_starts under block attention (rare.block_attention), else ()


def encode_columns(
    aug: list[AugmentedQuery],
) -> tuple[list[str], list[int], list[int], list[tuple[int, ...]]]:
    """Augmented queries as rare.encoding.encode_batch's columns: texts, token counts, pooling starts,
    block starts."""
    return [a.text for a in aug], [a.tokens for a in aug], [a.pool_from for a in aug], [a.blocks for a in aug]


class PromptBuilder:
    """Builds augmented queries within a token budget, using the model's own tokenizer (or a
    `TokenCounter` over it, to share one)."""

    def __init__(self, tokenizer, max_tokens: int, example_doc_tokens: int):
        self.counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
        self.max_tokens = max_tokens
        self.example_doc_tokens = example_doc_tokens
        # Caches: pool documents and example blocks recur across queries.
        self.cap_document = lru_cache(maxsize=65536)(self._cap_document)
        self._block_tokens = lru_cache(maxsize=65536)(self._count_plain)

    def count(self, text: str) -> int:
        """Tokens of `text` as the model will see it, special tokens included, without truncation."""
        return self.counter.count(text)

    def _count_plain(self, text: str) -> int:
        return self.counter.count(text, special=False)

    def _cap_document(self, document: str) -> str:
        """Cut at a token boundary, in the original characters (no decode round trip)."""
        offsets = self.counter.offsets(document)
        n = self.example_doc_tokens
        if len(offsets) <= n:
            return document
        # Back off to a word boundary when the cut would split a word into sub-word pieces.
        j = n
        while j > 1 and offsets[j][0] == offsets[j - 1][1]:
            j -= 1
        return document[: offsets[(j if j > 1 else n) - 1][1]]

    def build(self, query: str, examples: Sequence[ScoredExample], instruction: str | None) -> AugmentedQuery:
        """`examples` most similar first; `instruction` None with no examples means a raw query."""
        instr = instruction if instruction is not None else (DEFAULT_INSTRUCTION if examples else None)
        bare, bare_starts = layout_query(query, [], instr)
        base_tokens = self.count(bare)
        if base_tokens > self.max_tokens:
            raise QueryTooLongError(base_tokens, self.max_tokens)
        if not examples:
            return AugmentedQuery(bare, [], base_tokens, len(bare) - len(query), block_starts=bare_starts)
        capped = [
            ScoredExample(
                Example(s.example.id, s.example.query, self.cap_document(s.example.document)), s.score
            )
            for s in examples
        ]
        # Sum the blocks' cached counts: exact where tokens never span whitespace (blocks join the query
        # at newlines), sparing a count of the whole string, the larger part of a server's CPU for a
        # 5-example search; an estimate elsewhere, verified below.
        kept: list[ScoredExample] = []
        total = base_tokens
        for s in capped:
            cost = self._block_tokens(example_block(s.example.query, s.example.document))
            if total + cost > self.max_tokens:
                break
            kept.append(s)
            total += cost
        while True:
            text, starts = layout_query(query, [s.example for s in kept], instr)
            tokens = total if self.counter.splits_at_whitespace else self.count(text)
            if tokens <= self.max_tokens or not kept:
                return AugmentedQuery(text, kept, tokens, len(text) - len(query), block_starts=starts)
            kept.pop()  # least similar goes first
