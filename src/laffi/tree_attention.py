"""Attention over a packed row (`laffi.packing`) segment by segment, instead of one block-masked matrix.

A packed row's block mask is mostly empty: a sequence's own rest never sees another's. SDPA's CPU
kernel still computes every block of a masked row. Here each segment's queries attend to its
ancestors' keys (all of them) and to its own (causally), one small attention per segment, so only
the blocks the mask allows are computed.

Which kernel runs a segment, measured on the embedded model's shapes (9 query and 3 key/value heads
of 64, rows of 1,200-1,400 tokens in 5-11 segments: SFT, LaFFi and auxiliary batches; one layer's
forward and backward, 2 cores, AMD EPYC with AVX512-BF16, 2026-12-05):
- training in bf16 on a CPU: three batched bf16 matmuls per segment (the query heads of one key/value
  head batched together, an additive mask from `Segment.bias` cached for all layers), 11-17 ms a
  layer, against 33-45 ms for SDPA's flash kernel in fp32 (what ran until 2026-12-05: the CPU flash
  kernel's bf16 backward is slower still, 39-53 ms). The scores are rounded to bf16 before the
  softmax, as in transformers' eager attention under bf16: the output and gradients differ from
  fp64 by about 1% (relative norm) against 0.2-0.6% for the bf16 flash kernel;
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
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from laffi.packing import PackedRow

NAME = "laffi_tree"


@dataclass
class Segment:
    start: int
    stop: int
    ancestors: torch.Tensor | None  # row indices of the tokens of the segments above this one, in order
    mask: torch.Tensor | None  # (own tokens, ancestor + own tokens): all ancestors, own ones causally
    # the row indices of the keys its queries see, ancestors' then own: a slice where they are one run of rows
    # (a root, a first child), which costs no copy, else an index for index_select (one copy, no concatenation)
    sees: slice | torch.Tensor
    _biases: dict = field(default_factory=dict, repr=False)

    def bias(self, dtype: torch.dtype, groups: int, device) -> torch.Tensor:
        """The mask as what adds to the scores (0 or -inf), (1, groups x own, keys): the query heads of one
        key/value head stacked; made once per row and shared by every layer."""
        key = (dtype, groups)
        if key not in self._biases:
            own = self.stop - self.start
            allowed = self.mask if self.mask is not None else \
                torch.ones(own, own, dtype=torch.bool, device=device).tril()
            bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
            self._biases[key] = bias.repeat(groups, 1)[None]
        return self._biases[key]


@dataclass
class TreeSpans:
    """What the segment-wise attention needs of a packed row, built once and shared by every layer."""

    segments: list[Segment]

    @classmethod
    def of(cls, row: PackedRow, device=None) -> TreeSpans:
        spans: dict[int, tuple[int, int]] = {}
        for index, segment in enumerate(row.segments):  # a segment's tokens are contiguous in the row
            start, _ = spans.get(segment, (index, index))
            spans[segment] = (start, index + 1)
        segments = []
        for segment, (start, stop) in sorted(spans.items(), key=lambda item: item[1]):
            above = [a for a in spans if a != segment and row.enter[a] <= row.enter[segment] < row.leave[a]]
            ancestors = [i for a in sorted(above, key=lambda a: spans[a]) for i in range(*spans[a])]
            if not ancestors:
                segments.append(Segment(start, stop, None, None, slice(start, stop)))
                continue
            own = stop - start
            mask = torch.ones(own, len(ancestors) + own, dtype=torch.bool, device=device)
            mask[:, len(ancestors):] = torch.ones(own, own, dtype=torch.bool, device=device).tril()
            sees = slice(ancestors[0], stop) if ancestors == list(range(ancestors[0], start)) else \
                torch.tensor(ancestors + list(range(start, stop)), device=device)
            segments.append(Segment(start, stop, torch.tensor(ancestors, device=device), mask, sees))
        return cls(segments)


def _segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: float | None = None, packed_tree: TreeSpans | None = None, **kwargs):
    if packed_tree is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("tree attention: a packed row is a batch of one")
    if query.device.type == "cpu" and torch.is_grad_enabled() and query.dtype == torch.bfloat16 and not dropout:
        scale = query.shape[3] ** -0.5 if scaling is None else scaling
        return _Bf16MatmulSegments.apply(query, key, value, packed_tree, scale), None
    return _sdpa_segments(query, key, value, packed_tree, dropout, scaling), None


def _context(tensor: torch.Tensor, segment: Segment, dim: int = 2) -> torch.Tensor:
    """The keys (or values) a segment's queries see along `dim` (the tokens'): its ancestors', then its own."""
    sees = segment.sees
    if isinstance(sees, slice):
        return tensor.narrow(dim, sees.start, sees.stop - sees.start)
    return tensor.index_select(dim, sees)


class _Bf16MatmulSegments(torch.autograd.Function):
    """Segment attention by batched bf16 matmuls: (1, heads, tokens, dim) queries and (1, kv heads, tokens,
    dim) keys and values in, (1, tokens, heads, dim) out. The backward recomputes each segment's
    probabilities instead of keeping them (they were 13 MB a layer on a 1,400-token LaFFi row, 0.4 GB a
    step), so it keeps only its three inputs; key and value gradients add up over segments in fp32."""

    @staticmethod
    def forward(ctx, query, key, value, tree: TreeSpans, scale: float):
        ctx.save_for_backward(query, key, value)
        ctx.tree, ctx.scale = tree, scale
        heads, dim = query.shape[1], query.shape[3]
        out = query.new_empty(query.shape[2], heads, dim)  # written in place: no list of parts to concatenate
        for segment, _, _, values, probabilities in _segments(query, key, value, tree, scale):
            out[segment.start:segment.stop] = torch.bmm(probabilities, values).view(heads, -1, dim).transpose(0, 1)
        return out.unsqueeze(0)

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value = ctx.saved_tensors
        heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
        grad_query = torch.empty_like(query)
        grad_key = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        grad_heads = grad_output[0].transpose(0, 1).to(query.dtype)  # (heads, tokens, dim)
        for segment, queries, keys, values, probabilities in _segments(query, key, value, ctx.tree, ctx.scale):
            own = segment.stop - segment.start
            grad_out = grad_heads[:, segment.start:segment.stop].reshape(kv_heads, -1, dim)
            grad_values = torch.bmm(probabilities.transpose(1, 2), grad_out)
            grad_probabilities = torch.bmm(grad_out, values.transpose(1, 2))
            grad_scores = torch._softmax_backward_data(grad_probabilities, probabilities, -1, probabilities.dtype)
            grad_query[0, :, segment.start:segment.stop] = \
                torch.bmm(grad_scores, keys).mul_(ctx.scale).view(heads, own, dim)
            grad_keys = torch.bmm(grad_scores.transpose(1, 2), queries).mul_(ctx.scale)
            for grad, part in ((grad_key, grad_keys), (grad_value, grad_values)):
                if isinstance(segment.sees, slice):
                    grad[0, :, segment.sees] += part
                else:
                    grad[0].index_add_(1, segment.sees, part.float())
        return grad_query, grad_key.to(key.dtype), grad_value.to(value.dtype), None, None


def _segments(query, key, value, tree: TreeSpans, scale: float):
    """Per segment: the segment, its queries (the query heads of one key/value head stacked: kv heads,
    groups x own, dim), the keys and values they see (kv heads, keys, dim) and the attention probabilities."""
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
    groups = heads // kv_heads
    for segment in tree.segments:
        # query head h reads key/value head h // groups, as repeat_interleave would pair them
        queries = query[0, :, segment.start:segment.stop].reshape(kv_heads, -1, dim)
        keys, values = _context(key[0], segment, dim=1), _context(value[0], segment, dim=1)
        scores = torch.baddbmm(segment.bias(query.dtype, groups, query.device), queries, keys.transpose(1, 2),
                               alpha=scale)
        yield segment, queries, keys, values, torch.softmax(scores, dim=-1)


def _sdpa_segments(query, key, value, tree: TreeSpans, dropout: float, scaling: float | None) -> torch.Tensor:
    """(1, tokens, heads, dim) by SDPA, a call per segment; a backward to come on a CPU runs it in fp32
    (the CPU flash kernel's bf16 backward is the slower one)."""
    dtype = query.dtype
    upcast = query.device.type == "cpu" and torch.is_grad_enabled()
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
                query[:, :, segment.start:segment.stop], _context(key, segment), _context(value, segment),
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
