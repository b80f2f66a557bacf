"""Block attention: an augmented query whose examples are encoded once and reused.

Under full attention every token of `Instruct … Query: q` sees every other, so each query pays for all
~200 example tokens again (5 examples make a 23-token SciFact query ~215 tokens; on CPU encode cost
is linear in tokens). Under block attention:

- the prefix ([CLS] + instruction) attends to itself;
- each example block attends to the prefix and to itself, at positions that restart after the prefix,
  so its states do not depend on the query, its slot or the other examples;
- the target query block (`Query: q` + [SEP]) attends to everything and is pooled (query pooling).

An example's keys and values at every layer are therefore a function of (instruction, example) only:
`BlockEncoder` computes them once, keeps them in a byte-bounded LRU, and a query then runs just its
own ~25 tokens through the model, attending to the cached keys. Training (`rare train --attention
block`) runs the same masks and positions over the whole string (`block_forward`), so served and
trained embeddings agree to float error (tests/rare/test_block_attention.py). BERT-architecture
encoders only (all-MiniLM-L6-v2, BGE, E5, ...): the forward pass below is written against their modules.

The query pass runs packed: the batch's tokens in one (tokens, D) matrix for the dense layers (most of
the work), padded only for attention, which runs per group of rows of similar size (`attention_groups`:
a plain query padded to a 5-example one's keys would cost ten times its attention). A serving batch in
arrival order then costs about its real tokens, not its size times its longest text, so
`rare.encoding.encode_batch` sends every text of a mean-pooling BERT model this way
(`LoadedModel.packable`), structured or not.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

    from rare.tokens import TokenCounter

Attention = Literal["full", "block"]

PREFIX = 0  # segment id of [CLS] + instruction; examples are 1..n
QUERY = 1 << 20  # segment id of the target query block (and of every token of an unstructured text)
PAD = -1


class BlockAttentionError(ValueError):
    pass


def check_pooling(attention: str | None, pooling: str | None) -> None:
    """Block attention pools the target query (its examples never see it): refuse it with `full`."""
    if attention == "block" and pooling == "full":
        raise BlockAttentionError(
            "attention 'block' pools the target query: use pooling 'query' or attention 'full'"
        )


def bert_of(st):
    """The BERT encoder inside a sentence-transformers model, or a clear error."""
    auto = getattr(st[0], "auto_model", None)
    cfg = getattr(auto, "config", None)
    if getattr(cfg, "model_type", None) != "bert" or getattr(cfg, "is_decoder", False):
        raise BlockAttentionError(
            f"block attention needs a BERT-architecture encoder; this model is "
            f"'{getattr(cfg, 'model_type', type(auto).__name__)}'. Use attention 'full'."
        )
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise BlockAttentionError("block attention needs absolute position embeddings")
    return auto


def segment_ids(offsets: torch.Tensor, attention_mask: torch.Tensor, blocks: Sequence[Sequence[int]]):
    """Per token: PREFIX, an example's number (1..n), QUERY or PAD.

    `blocks[i]` holds the character offsets where text i's example blocks start, then where its target
    `Query: ` starts; empty means an unstructured text (a document, a raw query): all QUERY, i.e. full
    attention. Special tokens (empty offsets) go with their neighbours: [CLS] to the prefix, [SEP] to
    the query.
    """
    import torch

    B, S = attention_mask.shape
    seg = torch.full((B, S), QUERY, dtype=torch.long)
    starts = offsets[..., 0]
    special = offsets[..., 1] <= offsets[..., 0]
    for i, b in enumerate(blocks):
        if not b:
            continue
        bounds = torch.as_tensor(list(b), dtype=starts.dtype)
        # Blocks started at or before each token.
        n = torch.bucketize(starts[i].contiguous(), bounds, right=True)
        row = torch.where(n == len(b), torch.full_like(n, QUERY), n)
        first_real = int((~special[i]).nonzero()[0]) if (~special[i]).any() else S
        row[:first_real] = PREFIX  # [CLS]
        row[special[i] & (torch.arange(S) >= first_real)] = QUERY  # [SEP]
        seg[i] = row
    seg[~attention_mask.bool()] = PAD
    return seg


def positions(seg: torch.Tensor) -> torch.Tensor:
    """Natural positions, except that every example block restarts right after the prefix."""
    import torch

    B, S = seg.shape
    pos = torch.arange(S).expand(B, S).clone()
    prefix_len = (seg == PREFIX).sum(dim=1, keepdim=True)
    is_ex = (seg > PREFIX) & (seg != QUERY)
    for i in range(B):
        if not is_ex[i].any():
            continue
        for s in torch.unique(seg[i][is_ex[i]]).tolist():
            idx = (seg[i] == s).nonzero().squeeze(1)
            pos[i, idx] = prefix_len[i, 0] + torch.arange(len(idx))
    return pos


def allowed(seg: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) boolean: may token i attend to token j."""
    si, sj = seg.unsqueeze(2), seg.unsqueeze(1)
    ok = (sj != PAD) & ((si == QUERY) | (sj == PREFIX) | (si == sj))
    ok = ok | ((si == PAD) & (sj != PAD))  # padding rows: anything valid (their output is unused)
    return ok.unsqueeze(1)


def plain_linear(linear, x):
    return linear(x)


def prepacked_linears(bert):
    """A `linear(module, x)` for inference: on a CPU running bfloat16, each encoder Linear's weight
    reordered once into oneDNN's blocked layout, which a plain bf16 linear redoes on every call (one
    thread, 42 tokens: 384->1536 in 66 us against 114 us, 1536->384 in 66 against 125; equal but for
    bf16 rounding). Elsewhere (float32 gains nothing; GPUs) the modules themselves. Weights changed later are
    not seen: for serving only."""
    import torch

    param = next(bert.parameters())
    if param.dtype != torch.bfloat16 or param.device.type != "cpu":
        return plain_linear
    try:
        reorder, op = torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise
        with torch.inference_mode():
            packed = {
                id(m): (reorder(m.weight.detach(), 64), None if m.bias is None else m.bias.detach())
                for m in bert.encoder.modules()
                if isinstance(m, torch.nn.Linear)
            }
    except (AttributeError, RuntimeError):  # a torch build without these oneDNN ops
        return plain_linear

    def linear(module, x):
        w = packed.get(id(module))
        return module(x) if w is None else op(x, w[0], w[1], "none", [], "")

    return linear


def _layer(layer, h, mask, ctx_k=None, ctx_v=None, linear=plain_linear):
    """One BERT layer with an explicit boolean mask over [context keys; own keys]; returns its output
    and its own keys and values (heads layout)."""
    a = layer.attention.self
    H = a.num_attention_heads
    q, k, v = (_heads(linear(m, h), H) for m in (a.query, a.key, a.value))
    return _ffn(layer, _attend(a, q, k, v, mask, ctx_k, ctx_v), h, linear), k, v


def _packed_layer(layer, h, groups: list[_Group], li: int, linear=plain_linear):
    """One BERT layer over packed tokens (tokens, D): the dense layers, most of the work, run on real
    tokens only; attention runs per group of similar rows, padded within the group only."""
    import torch

    a = layer.attention.self
    H = a.num_attention_heads
    qkv = [linear(m, h) for m in (a.query, a.key, a.value)]
    parts, at = [], 0
    for g in groups:
        end = at + g.tokens
        q, k, v = (_heads(_unpack(x[at:end], g.own), H) for x in qkv)
        ck, cv = g.ctx[li] if g.ctx is not None else (None, None)
        parts.append(_attend(a, q, k, v, g.mask, ck, cv)[g.own])
        at = end
    return _ffn(layer, parts[0] if len(parts) == 1 else torch.cat(parts), h, linear)


def _heads(x, H: int):
    B, S, D = x.shape
    return x.view(B, S, H, D // H).transpose(1, 2)


def _attend(a, q, k, v, mask, ctx_k, ctx_v):
    """Scaled dot-product attention over [context keys; own keys], back to (B, S, D)."""
    import torch
    from torch.nn import functional as F

    kk = k if ctx_k is None else torch.cat([ctx_k, k], dim=2)
    vv = v if ctx_v is None else torch.cat([ctx_v, v], dim=2)
    p = a.dropout.p if a.training else 0.0
    ctx = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, dropout_p=p)
    B, H, S, d = ctx.shape
    return ctx.transpose(1, 2).reshape(B, S, H * d)


def _ffn(layer, ctx, h, linear=plain_linear):
    so = layer.attention.output
    h1 = so.LayerNorm(so.dropout(linear(so.dense, ctx)) + h)
    inter, out = layer.intermediate, layer.output
    x = inter.intermediate_act_fn(linear(inter.dense, h1))
    return out.LayerNorm(out.dropout(linear(out.dense, x)) + h1)


def _unpack(x, valid):
    out = x.new_zeros((*valid.shape, x.shape[-1]))
    out[valid] = x
    return out


@dataclass
class _Group:
    """Rows of a packed batch that attend together: their own tokens' layout `own` (rows, Sq), the
    attention mask over [context; own] keys, per layer the context keys and values (or None), and how
    many real tokens they hold (a contiguous run of the packed tokens)."""

    own: torch.Tensor
    mask: torch.Tensor
    ctx: list | None
    tokens: int


# What one more attention call costs, in padded (query token, key) pairs: a profile of all-MiniLM-L6-v2
# serving batches on one CPU thread put a pair at ~40 ns and a call (SDPA, unpack, concat) at ~80 us.
ATTENTION_CALL_PAIRS = 2048


def attention_groups(
    queries: Sequence[int], keys: Sequence[int], call_pairs: int = ATTENTION_CALL_PAIRS
) -> list[np.ndarray]:
    """Rows grouped for attention, minimizing padded (query token, key) pairs plus a per-call cost.

    Row i has `queries[i]` own tokens and `keys[i]` keys (context + own). A group pads every row to its
    longest query and most keys, so an arrival-order batch of short and long rows wastes most of its
    attention work; an exact dynamic programme over the rows sorted by keys finds the cheapest cuts.
    """
    import numpy as np

    from rare.partition import cheapest_runs

    order = np.argsort(np.asarray(keys), kind="stable")
    kq = np.asarray(queries, dtype=np.float64)[order]
    kk = np.asarray(keys, dtype=np.float64)[order]

    def run_costs(j: int) -> np.ndarray:
        # Run order[i:j] pads to kk[j-1] keys and to its longest query, max(kq[i:j]).
        longest = np.maximum.accumulate(kq[:j][::-1])[::-1]
        return call_pairs + (j - np.arange(j)) * longest * kk[j - 1]

    return [order[i:j] for i, j in cheapest_runs(len(keys), run_costs)]


def _run(
    bert, input_ids, position_ids, mask=None, ctx=None, keep: bool = False, groups=None, linear=plain_linear
):
    """Embeddings + layers. `ctx[l]` = (keys, values) prepended at layer l; with `keep`, every layer's
    own keys and values are returned too; with `groups`, ids and positions are packed (see
    `_packed_layer`); `linear` runs the dense layers (`prepacked_linears`)."""
    import torch

    h = bert.embeddings(
        input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids), position_ids=position_ids
    )
    kept = []
    if groups is not None:
        h = h[0]  # (1, tokens, D) -> (tokens, D)
        for li, layer in enumerate(bert.encoder.layer):
            h = _packed_layer(layer, h, groups, li, linear)
        return h, kept
    for li, layer in enumerate(bert.encoder.layer):
        ck, cv = ctx[li] if ctx is not None else (None, None)
        h, k, v = _layer(layer, h, mask, ck, cv, linear)
        if keep:
            kept.append((k, v))
    return h, kept


def block_forward(bert, input_ids: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Token states of whole strings under block attention (training, and the uncached reference)."""
    return _run(bert, input_ids, positions(seg), allowed(seg))[0]


class BlockEncoder:
    """Serves block-attention queries (examples' per-layer keys and values cached, query tokens run)
    and, packed, any other text of the model (no blocks: full attention over the text).

    Not thread-safe by itself: `LoadedModel.encode` calls it under the model's encode lock.
    """

    def __init__(self, st, cache_bytes: int = 1 << 30, counter: TokenCounter | None = None):
        self.st = st
        self.bert = bert_of(st)
        self.linear = prepacked_linears(self.bert)
        self.cache_bytes = cache_bytes
        self._specials = _bert_specials(counter)
        self._counter = counter if self._specials else None
        # Prefix and example texts -> their token ids (bounded like PromptBuilder's block counts).
        self._ids_of_block = lru_cache(maxsize=BLOCK_IDS_CACHED)(self._block_token_ids)
        # key -> (layers, 2, heads, tokens, head dim): keys and values of one prefix or example.
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def _put(self, key: tuple, kv: torch.Tensor) -> None:
        size = kv.numel() * kv.element_size()
        if size > self.cache_bytes:
            return
        self._cache[key] = kv
        self._bytes += size
        while self._bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def stats(self) -> dict:
        return {"entries": len(self._cache), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}

    def token_bytes(self) -> int:
        """Cache bytes one context token takes: its keys and values at every layer."""
        c = self.bert.config
        return c.num_hidden_layers * 2 * c.hidden_size * next(self.bert.parameters()).element_size()

    def encode(
        self, texts: list[str], pool_from: Sequence[int], blocks: Sequence[Sequence[int]], max_length: int
    ) -> np.ndarray:
        import torch

        with torch.inference_mode():
            rows = self._rows(texts, pool_from, blocks, max_length)
            kv = self._context([r[0] for r in rows])
            states, pool_tokens, row_of = self._query_pass(rows, kv)
            states = states.float()  # pooled and normalized in float32 whatever the model runs in
            sums = states.new_zeros((len(rows), states.shape[-1]))
            sums.index_add_(0, row_of[pool_tokens], states[pool_tokens])
            counts = torch.bincount(row_of[pool_tokens], minlength=len(rows)).clamp_min(1)
            emb = torch.nn.functional.normalize(sums / counts[:, None].to(sums.dtype), dim=-1)
        return emb.float().cpu().numpy()

    def _rows(self, texts: list[str], pool_from, blocks, max_length: int) -> list[tuple]:
        """Per text: (context keys, query ids, query pool mask, context length), see `_split`.

        A structured text's blocks are tokenized one by one where the tokenizer allows it (`_block_row`):
        its examples' ids come from a cache, and only the target query is tokenized, where the whole
        ~1,000-character string took 13% of a worker's time for a 5-example query."""
        rows: list = [None] * len(texts)
        if self._counter is not None:
            for i, b in enumerate(blocks):
                if b:
                    rows[i] = self._block_row(texts[i], pool_from[i], b, max_length)
        rest = [i for i, r in enumerate(rows) if r is None]
        if rest:
            tokenized = self._tokenized_rows(
                [texts[i] for i in rest], [pool_from[i] for i in rest], [blocks[i] for i in rest], max_length
            )
            for i, r in zip(rest, tokenized, strict=True):
                rows[i] = r
        return rows

    def _tokenized_rows(self, texts: list[str], pool_from, blocks, max_length: int) -> list[tuple]:
        """`_rows` from one tokenization of the whole texts, cut into blocks by their offsets."""
        from rare.pooling import tokenize_with_query_mask

        enc, pool = tokenize_with_query_mask(
            self.st.tokenizer, texts, pool_from, max_length, keep_offsets=True
        )
        seg = segment_ids(enc.pop("offset_mapping"), enc["attention_mask"], blocks)
        return [self._split(enc["input_ids"][i], seg[i], pool[i]) for i in range(len(texts))]

    def _block_token_ids(self, text: str) -> tuple[int, ...]:
        return tuple(self._counter.ids(text, special=False))

    def _block_row(self, text: str, start: int, blocks: Sequence[int], max_length: int) -> tuple | None:
        """`_split`'s row for one structured text, its blocks tokenized apart: the same ids, since the
        tokenizer splits at whitespace first and blocks meet at newlines (rare.prompt relies on the same
        for its counts). None where the whole-string path must decide: over `max_length` (truncated), or
        a pooling start before the target query block."""
        import torch

        if start == 0 or start < blocks[-1]:  # start 0: the whole row pooled
            return None
        cls, sep = self._specials
        prefix = (cls, *self._ids_of_block(text[: blocks[0]]))
        keys: list[tuple] = [("p", prefix)]
        # An example block always has tokens ("Query: ..."), so each is a segment of the whole string too.
        keys += [
            ("e", prefix, self._ids_of_block(text[lo:hi])) for lo, hi in zip(blocks, blocks[1:], strict=False)
        ]
        ctx_len = sum(len(k[-1]) for k in keys)
        at = blocks[-1]
        q_ids, offsets = self._counter.ids_and_offsets(text[at:])
        if ctx_len + len(q_ids) + 1 > max_length:
            return None
        span = [e > s and at + s >= start for s, e in offsets]
        pool = span + [False] if any(span) else [True] * (len(q_ids) + 1)  # [SEP]: pooled only when all are
        return keys, torch.tensor([*q_ids, sep]), torch.tensor(pool), ctx_len

    @staticmethod
    def _attention_groups(rows) -> list[np.ndarray]:
        """`attention_groups` of the rows: each row's own query tokens, and its keys (context + own)."""
        return attention_groups([len(r[1]) for r in rows], [r[3] + len(r[1]) for r in rows])

    @staticmethod
    def _split(ids, seg, pool):
        """(context keys, query ids, query pool mask, context length) of one text."""
        prefix = tuple(ids[seg == PREFIX].tolist())
        keys: list[tuple] = [("p", prefix)] if prefix else []
        for s in _example_segments(seg):
            keys.append(("e", prefix, tuple(ids[seg == s].tolist())))
        ctx_len = sum(len(k[-1]) for k in keys)
        q = seg == QUERY
        return keys, ids[q], pool[q], ctx_len

    def _context(self, row_keys: list[list[tuple]]) -> dict:
        """Keys and values of every prefix and example the batch needs: cached, or computed in one
        forward per kind (prefixes first: an example's states attend to its prefix)."""
        import torch

        out: dict[tuple, torch.Tensor] = {}
        for kind in ("p", "e"):
            todo = []
            for k in dict.fromkeys(k for keys in row_keys for k in keys if k[0] == kind):
                kv = self._cache.get(k)
                if kv is None:
                    todo.append(k)
                else:
                    self._cache.move_to_end(k)
                    self.hits += 1
                    out[k] = kv
            if not todo:
                continue
            self.misses += len(todo)
            seqs = [list(k[1]) + (list(k[2]) if kind == "e" else []) for k in todo]
            S = max(len(s) for s in seqs)
            ids = torch.zeros((len(seqs), S), dtype=torch.long)
            seg = torch.full((len(seqs), S), PAD, dtype=torch.long)
            for i, (k, s) in enumerate(zip(todo, seqs, strict=True)):
                ids[i, : len(s)] = torch.as_tensor(s)
                seg[i, : len(k[1])] = PREFIX
                seg[i, len(k[1]) : len(s)] = 1
            _, layers = _run(self.bert, ids, positions(seg), allowed(seg), keep=True, linear=self.linear)
            for i, (k, s) in enumerate(zip(todo, seqs, strict=True)):
                lo = 0 if kind == "p" else len(k[1])
                kv = torch.stack(
                    [torch.stack([kk[i, :, lo : len(s)], vv[i, :, lo : len(s)]]) for kk, vv in layers]
                )
                out[k] = kv
                self._put(k, kv)
        return out

    def _query_pass(self, rows, kv: dict):
        """Token states of every row's query block, packed in group order; with the pool mask and the
        row of each token."""
        import torch

        groups = self._attention_groups(rows)
        ids, pos, qmask, row_of = [], [], [], []
        plan = [self._group(rows, idx.tolist(), kv, ids, pos, qmask, row_of) for idx in groups]
        states, _ = _run(
            self.bert, torch.cat(ids)[None], torch.cat(pos)[None], groups=plan, linear=self.linear
        )
        return states, torch.cat(qmask), torch.cat(row_of)

    @staticmethod
    def _group(rows, idx: list[int], kv: dict, ids, pos, qmask, row_of) -> _Group:
        """One attention group's layout and context; its packed ids, positions, pool mask and rows are
        appended to the lists given."""
        import torch

        B = len(idx)
        Sq = max(len(rows[i][1]) for i in idx)
        L = max(rows[i][3] for i in idx)
        valid = torch.zeros((B, L + Sq), dtype=torch.bool)
        for j, i in enumerate(idx):
            _, q_ids, q_pool, ctx_len = rows[i]
            n = len(q_ids)
            valid[j, :ctx_len] = True
            valid[j, L : L + n] = True
            ids.append(q_ids)
            # The query block sits after all example tokens in the string: its natural positions.
            pos.append(torch.arange(n) + ctx_len)
            qmask.append(q_pool)
            row_of.append(torch.full((n,), i, dtype=torch.long))
        ctx = None
        if L:
            ref = next(iter(kv.values()))
            n_layers, _, H, _, d = ref.shape
            # ~2 MB a query for all-MiniLM-L6-v2 with 5 examples: filled once, padding zeroed only.
            full = torch.empty((n_layers, 2, B, H, L, d), dtype=ref.dtype)
            for j, i in enumerate(idx):
                at = 0
                for k in rows[i][0]:
                    part = kv[k]
                    full[:, :, j, :, at : at + part.shape[3]] = part
                    at += part.shape[3]
                full[:, :, j, :, at:] = 0
            ctx = [(full[li, 0], full[li, 1]) for li in range(n_layers)]
        else:
            valid = valid[:, L:]
        own = valid[:, -Sq:]
        mask = valid[:, None, None, :].expand(B, 1, Sq, valid.shape[1])
        return _Group(own, mask, ctx, int(own.sum()))


# Prefix and example texts whose token ids a BlockEncoder keeps: ~3 KB each with 64-token example
# documents, ~25 MB in all; more than the example cache's keys and values hold (1 GB: ~700 examples).
BLOCK_IDS_CACHED = 8192


def _bert_specials(counter: TokenCounter | None) -> tuple[int, int] | None:
    """([CLS], [SEP]) ids where `counter` allows tokenizing blocks apart: a tokenizer that splits at
    whitespace first and wraps a text as [CLS] text [SEP]; else None."""
    if counter is None or not counter.splits_at_whitespace:
        return None
    bare, wrapped = counter.ids("a", special=False), counter.ids("a")
    if len(wrapped) != len(bare) + 2 or wrapped[1:-1] != bare:
        return None
    return wrapped[0], wrapped[-1]


def _example_segments(seg) -> list[int]:
    """Example segment ids present in one row, in order."""
    ex = seg[(seg != PREFIX) & (seg != QUERY) & (seg != PAD)]
    return sorted(set(ex.tolist()))
