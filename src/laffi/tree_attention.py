"""Attention over a packed row (`laffi.packing`) segment by segment, instead of one block-masked matrix.

A packed row's block mask is mostly empty: a sequence's own rest never sees another's. SDPA's CPU
kernel still computes every block of a masked row. Here each segment's queries attend to its
ancestors' keys (all of them) and to its own (causally), one small attention per segment (per block
of a segment's queries in the bf16 kernel), so only the blocks the mask allows are computed.

Which kernel runs a segment, measured on the embedded model's shapes (9 query and 3 key/value heads
of 64, rows of 1,200-1,400 tokens in 5-11 segments: SFT, LaFFi and auxiliary batches; one layer's
forward and backward, 2 cores, AMD EPYC with AVX512-BF16, 2026-12-05, before the query blocks below):
- training in bf16 on a CPU: three batched bf16 matmuls per segment (the query heads of one key/value
  head batched together, the causal mask added from `TreeSpans.causal`, cached for all layers), 11-17 ms a
  layer, against 33-45 ms for SDPA's flash kernel in fp32 (what ran until 2026-12-05: the CPU flash
  kernel's bf16 backward is slower still, 39-53 ms). The scores are rounded to bf16 before the
  softmax, as in transformers' eager attention under bf16: the output and gradients differ from
  fp64 by about 1% (relative norm) against 0.2-0.6% for the bf16 flash kernel. Since 2026-12-06 a
  segment's queries run in blocks of `QUERY_BLOCK` (128), each seeing its own keys only up to its
  last query, so most of the causal half that a long segment's mask hides is never computed, and the
  queries are scaled before their matmul instead of the scores after it. The attention's forward and
  backward over the bench's rows (3 layers each) took 0.58 s against 0.90 s on the LaFFi set and
  0.37 s against 0.56 s on the SFT set (blocks of 192 and 256 about as fast, 64 and 384 slower);
- otherwise (fp32, no gradients, CUDA): SDPA, whose kernels win there.

    with tree_attention(model):
        loss = model(input_ids=row.input_ids(), position_ids=row.position_ids(),
                     packed_tree=TreeSpans.of(row)).logits...
        loss.backward()   # inside too: gradient checkpointing runs the forward again here

Outside the switch the model keeps its own attention; inside it, a forward without `packed_tree`
(a padded batch) runs transformers' SDPA attention.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from laffi.packing import PackedRow

NAME = "laffi_tree"


QUERY_BLOCK = 128  # own query rows per block in the bf16 kernel (see `Segment.blocks`)


@dataclass
class Segment:
    start: int
    stop: int
    ancestors: torch.Tensor | None  # row indices of the tokens of the segments above this one, in order
    # (own tokens, ancestor + own tokens): all ancestors, own ones causally; SDPA's (the bf16 kernel adds
    # `TreeSpans.causal` per block instead)
    mask: torch.Tensor | None
    # the row indices of the keys its queries see, ancestors' then own: a slice where they are one run of rows
    # (a root, a first child), which costs no copy, else an index for index_select (one copy, no concatenation)
    sees: slice | torch.Tensor
    # the bf16 kernel's blocks of own query rows, (first, stop) offsets: a block's queries see the ancestors and
    # the own keys up to its last query only, so the causal half of a long segment is mostly not computed
    blocks: list[tuple[int, int]]

    @property
    def ancestor_count(self) -> int:
        return 0 if self.ancestors is None else len(self.ancestors)

    def seen_by(self, block: tuple[int, int]) -> slice | torch.Tensor:
        """The row indices of the keys a block's queries see: every ancestor's, and its own up to the block's end."""
        count = self.ancestor_count + block[1]
        if isinstance(self.sees, slice):
            return slice(self.sees.start, self.sees.start + count)
        return self.sees[:count]


@dataclass
class TreeSpans:
    """What the segment-wise attention needs of a packed row, built once and shared by every layer."""

    segments: list[Segment]
    _causal: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, row: PackedRow, device=None, query_block: int = QUERY_BLOCK) -> TreeSpans:
        spans: dict[int, tuple[int, int]] = {}
        for index, segment in enumerate(row.segments):  # a segment's tokens are contiguous in the row
            start, _ = spans.get(segment, (index, index))
            spans[segment] = (start, index + 1)
        segments = []
        for segment, (start, stop) in sorted(spans.items(), key=lambda item: item[1]):
            own = stop - start
            blocks = [(first, min(first + query_block, own)) for first in range(0, own, query_block)]
            above = [a for a in spans if a != segment and row.enter[a] <= row.enter[segment] < row.leave[a]]
            ancestors = [i for a in sorted(above, key=lambda a: spans[a]) for i in range(*spans[a])]
            if not ancestors:
                segments.append(Segment(start, stop, None, None, slice(start, stop), blocks))
                continue
            mask = torch.ones(own, len(ancestors) + own, dtype=torch.bool, device=device)
            mask[:, len(ancestors):] = torch.ones(own, own, dtype=torch.bool, device=device).tril()
            sees = slice(ancestors[0], stop) if ancestors == list(range(ancestors[0], start)) else \
                torch.tensor(ancestors + list(range(start, stop)), device=device)
            segments.append(Segment(start, stop, torch.tensor(ancestors, device=device), mask, sees, blocks))
        return cls(segments)

    def causal(self, size: int, groups: int, dtype: torch.dtype, device) -> torch.Tensor:
        """What a block's scores over its own keys add (0 on and below the diagonal, -inf above), the query
        heads of one key/value head stacked: (groups x size, size); made once per row, shared by every layer."""
        key = (size, groups, dtype)
        if key not in self._causal:
            allowed = torch.ones(size, size, dtype=torch.bool, device=device).tril()
            bias = torch.zeros(size, size, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
            self._causal[key] = bias.repeat(groups, 1)
        return self._causal[key]


# kernels_as_in_training(): a forward without gradients that must give training's numbers bit for bit
_AS_IN_TRAINING: ContextVar[bool] = ContextVar("laffi_tree_attention_as_in_training", default=False)


@contextmanager
def kernels_as_in_training():
    """Inside, a forward without gradients (torch.no_grad) runs the kernels a training forward runs (on a
    CPU: the bf16 matmul kernel, or fp32 SDPA), so its outputs are training's to the bit, without keeping
    what a backward would need: the reference log-probs of a preference term (laffi.stages.preference)."""
    token = _AS_IN_TRAINING.set(True)
    try:
        yield
    finally:
        _AS_IN_TRAINING.reset(token)


def _as_in_training() -> bool:
    return torch.is_grad_enabled() or _AS_IN_TRAINING.get()


def _segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: float | None = None, packed_tree: TreeSpans | None = None, **kwargs):
    if packed_tree is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("tree attention: a packed row is a batch of one")
    if query.device.type == "cpu" and _as_in_training() and query.dtype == torch.bfloat16 and not dropout:
        scale = query.shape[3] ** -0.5 if scaling is None else scaling
        return _Bf16MatmulSegments.apply(query, key, value, packed_tree, scale), None
    return _sdpa_segments(query, key, value, packed_tree, dropout, scaling), None


class _Bf16MatmulSegments(torch.autograd.Function):
    """Segment attention by batched bf16 matmuls: (1, heads, tokens, dim) queries and (1, kv heads, tokens,
    dim) keys and values in, (1, tokens, heads, dim) out, one block of a segment's queries at a time. The
    backward recomputes each block's probabilities instead of keeping them (they were 13 MB a layer on a
    1,400-token LaFFi row, 0.4 GB a step), so it keeps only its three inputs. Key and value gradients add
    up over blocks in fp32, each block's part rounded to bf16 by its matmul first (so they round a little
    differently from one matmul per segment: 0.26% relative on 9/3 heads of 64, both about 0.45% from fp64)."""

    @staticmethod
    def forward(ctx, query, key, value, tree: TreeSpans, scale: float):
        ctx.save_for_backward(query, key, value)
        ctx.tree, ctx.scale = tree, scale
        heads, dim = query.shape[1], query.shape[3]
        out = query.new_empty(query.shape[2], heads, dim)  # written in place: no list of parts to concatenate
        for rows, _, _, values, probabilities, _ in _blocks(query * scale, key, value, tree):
            out[rows] = torch.bmm(probabilities, values).view(heads, -1, dim).transpose(0, 1)
        return out.unsqueeze(0)

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value = ctx.saved_tensors
        heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
        grad_query = torch.empty_like(query)
        grad_key = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        grad_heads = grad_output[0].transpose(0, 1).to(query.dtype)  # (heads, tokens, dim)
        for rows, queries, keys, values, probabilities, seen in _blocks(query * ctx.scale, key, value, ctx.tree):
            grad_out = grad_heads[:, rows].reshape(kv_heads, -1, dim)
            grad_values = torch.bmm(probabilities.transpose(1, 2), grad_out)
            grad_probabilities = torch.bmm(grad_out, values.transpose(1, 2))
            grad_scores = torch._softmax_backward_data(grad_probabilities, probabilities, -1, probabilities.dtype)
            grad_query[0, :, rows] = torch.bmm(grad_scores, keys).mul_(ctx.scale).view(heads, -1, dim)
            grad_keys = torch.bmm(grad_scores.transpose(1, 2), queries)  # the queries come scaled
            for grad, part in ((grad_key, grad_keys), (grad_value, grad_values)):
                if isinstance(seen, slice):
                    grad[0, :, seen] += part
                else:
                    grad[0].index_add_(1, seen, part.float())
        return grad_query, grad_key.to(key.dtype), grad_value.to(value.dtype), None, None


def _blocks(scaled_query, key, value, tree: TreeSpans):
    """Per block of a segment's queries: its rows of the packed row, its queries (the query heads of one
    key/value head stacked: kv heads, groups x rows, dim), the keys and values they see (kv heads, keys, dim),
    the attention probabilities, and the keys' row indices. The queries come multiplied by the attention's
    scale, which rounds nothing where the scale is a power of two (1/8 for heads of 64): then the scores are
    those of scaling inside the matmul, bit for bit, for one pass over the queries instead of the scores."""
    heads, kv_heads, dim = scaled_query.shape[1], key.shape[1], scaled_query.shape[3]
    groups = heads // kv_heads
    for segment in tree.segments:
        all_keys, all_values = _take(key[0], segment.sees, 1), _take(value[0], segment.sees, 1)
        for first, stop in segment.blocks:
            rows = slice(segment.start + first, segment.start + stop)
            # query head h reads key/value head h // groups, as repeat_interleave would pair them
            queries = scaled_query[0, :, rows].reshape(kv_heads, -1, dim)
            count = segment.ancestor_count + stop  # the keys it sees: every ancestor's, own ones up to its last
            keys, values = all_keys[:, :count], all_values[:, :count]
            scores = torch.bmm(queries, keys.transpose(1, 2))
            # own keys before the block's first query are all seen; from there on, causally (a square)
            diagonal = segment.ancestor_count + first
            scores[:, :, diagonal:] += tree.causal(stop - first, groups, scores.dtype, scores.device)
            probabilities = torch.softmax(scores, dim=-1)
            yield rows, queries, keys, values, probabilities, segment.seen_by((first, stop))


def _take(tensor: torch.Tensor, seen: slice | torch.Tensor, dim: int) -> torch.Tensor:
    """The keys (or values) at row indices `seen` along `dim` (the tokens'): a view for a slice, one copy for
    an index."""
    if isinstance(seen, slice):
        return tensor.narrow(dim, seen.start, seen.stop - seen.start)
    return tensor.index_select(dim, seen)


def _sdpa_segments(query, key, value, tree: TreeSpans, dropout: float, scaling: float | None) -> torch.Tensor:
    """(1, tokens, heads, dim) by SDPA, a call per segment; a backward to come on a CPU runs it in fp32
    (the CPU flash kernel's bf16 backward is the slower one)."""
    dtype = query.dtype
    upcast = query.device.type == "cpu" and _as_in_training()
    if upcast:
        query, key, value = query.float(), key.float(), value.float()
    gqa = query.shape[1] != key.shape[1]
    if gqa and query.device.type != "cpu":  # CUDA kernels take a mask or grouped heads, not both
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        gqa = False
    outputs = []
    with torch.autocast("cpu", enabled=False) if upcast else nullcontext():  # autocast would undo the upcast
        for segment in tree.segments:
            outputs.append(torch.nn.functional.scaled_dot_product_attention(
                query[:, :, segment.start:segment.stop], _take(key, segment.sees, 2), _take(value, segment.sees, 2),
                attn_mask=segment.mask, dropout_p=dropout, scale=scaling, is_causal=segment.mask is None,
                enable_gqa=gqa))
    return torch.cat(outputs, dim=2).to(dtype).transpose(1, 2).contiguous()


AttentionInterface.register(NAME, _segment_attention)
# a padded batch needs SDPA's mask; a packed row's (built from its position ids) goes unused
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def tree_attention(model):
    """Run `model`'s forwards inside with the segment-wise attention (a config switch, undone after)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
