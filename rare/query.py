"""Query side, shared by trainer, service and eval: examples in, the model's input string out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rare.block_attention import Attention, bert_of, check_pooling
from rare.model import LoadedModel
from rare.pooling import Pooling
from rare.prompt import DEFAULT_INSTRUCTION, AugmentedQuery, PromptBuilder, ScoredExample


class QueryAugmenter:
    """Applies a model's RARe settings: its instruction, example budget, length limit and pooling.

    A RARe-trained model always sees the instruction (it was trained that way, also for plain
    queries); a base model sees a raw query unless examples are added (naive in-context examples).
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        example_doc_tokens: int | None = None,
        max_query_tokens: int | None = None,
        always_instruct: bool | None = None,
        pooling: Pooling | None = None,
        attention: Attention | None = None,
    ):
        self.model = model
        limit = min(max_query_tokens or model.rare.max_query_tokens or model.max_tokens, model.max_tokens)
        self.builder = PromptBuilder(
            model.token_counter, limit, example_doc_tokens or model.rare.example_doc_tokens
        )
        self.always_instruct = model.rare.trained if always_instruct is None else always_instruct
        self.attention, self.pooling = resolve_attention(model, attention, pooling)
        if self.attention == "block":
            bert_of(model.st)  # refuse an architecture the block forward does not cover, up front

    def instruction_for(self, instruction: str | None, with_examples: bool) -> str | None:
        if with_examples or self.always_instruct:
            return instruction or self.model.rare.instruction or DEFAULT_INSTRUCTION
        return None

    def build(
        self, query: str, examples: Sequence[ScoredExample], instruction: str | None = None
    ) -> AugmentedQuery:
        """`examples` most similar first, already selected; budget rules of rare.prompt apply."""
        a = self.builder.build(query, examples, self.instruction_for(instruction, bool(examples)))
        return dataclasses.replace(
            a,
            pool_from=a.query_start if self.pooling == "query" else 0,
            blocks=a.block_starts if self.attention == "block" else (),
        )


def resolve_attention(
    model: LoadedModel, attention: Attention | None = None, pooling: Pooling | None = None
) -> tuple[Attention, Pooling]:
    """(attention, pooling) in force: what is asked, else the model's own. Block attention pools the
    target query (its examples never see it), so asking for `full` pooling alone means full attention,
    and asking for both block and full is refused."""
    check_pooling(attention, pooling)
    attention = attention or ("full" if pooling == "full" else model.rare.attention)
    return attention, ("query" if attention == "block" else pooling or model.rare.pooling)


def default_k(model: LoadedModel, configured: int | None = None) -> int:
    """Configured k wins; else the model's trained k (0, plain search, for a base model)."""
    return configured if configured is not None else model.rare.k
