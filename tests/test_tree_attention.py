"""Segment-wise attention over a packed row computes what the row's block mask allows, no more, no less."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from laffi.packing import pack
from laffi.tree_attention import NAME, TreeSpans, tree_attention


def sequences() -> list[list[int]]:
    head, passage = list(range(10, 25)), list(range(40, 48))
    return [head + [60, 61, 62], head + passage + [70, 71], head + passage + [72], head + passage,
            head + passage, [90, 91, 92, 93], head]


def test_each_token_attends_to_exactly_the_keys_its_mask_allows():
    row = pack(sequences())
    allowed = row.mask(additive=False)[0, 0]
    spans = TreeSpans.of(row)
    covered = []
    for segment in spans.segments:
        covered += range(segment.start, segment.stop)
        ancestors = [] if segment.ancestors is None else segment.ancestors.tolist()
        for offset, token in enumerate(range(segment.start, segment.stop)):
            sees = ancestors + list(range(segment.start, token + 1))
            if segment.mask is not None:  # the segment's mask row says the same
                keys = ancestors + list(range(segment.start, segment.stop))
                assert [k for k, ok in zip(keys, segment.mask[offset].tolist()) if ok] == sees
            assert torch.nonzero(allowed[token]).flatten().tolist() == sees
    assert covered == list(range(len(row.tokens)))  # segments tile the row, in order


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_logits_equal_the_block_masked_row_and_each_sequence_alone(tiny_model_dir, attention):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention)
    model.eval()
    row = pack(sequences())
    with torch.no_grad():
        masked = model(input_ids=row.input_ids(), position_ids=row.position_ids(),
                       attention_mask=row.mask(additive=attention == "eager")).logits[0]
        with tree_attention(model):
            tree = model(input_ids=row.input_ids(), position_ids=row.position_ids(),
                         packed_tree=TreeSpans.of(row)).logits[0]
        torch.testing.assert_close(tree, masked, atol=1e-5, rtol=1e-5)
        for path, ids in zip(row.paths, sequences()):
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(tree[path], alone, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == attention  # the switch is undone


def test_inside_the_switch_a_batch_without_a_tree_runs_as_before_and_an_error_undoes_it(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])}
    with torch.no_grad():
        before = model(**batch).logits
        with tree_attention(model):
            assert model.config._attn_implementation == NAME
            inside = model(**batch).logits
    torch.testing.assert_close(inside, before)
    with pytest.raises(RuntimeError), tree_attention(model):
        raise RuntimeError("a failed forward")
    assert model.config._attn_implementation == "sdpa"


def test_a_model_that_cannot_take_packed_rows_falls_back_and_says_so_once_per_option(monkeypatch):
    from types import SimpleNamespace

    from laffi import packing

    monkeypatch.setattr(packing, "_SAID", set())  # what earlier tests in this process reported
    windowed = SimpleNamespace(config=SimpleNamespace(sliding_window=4096, use_sliding_window=True))
    said = []
    assert not packing.can_pack(windowed, "train.pack", "its batches run padded", said.append)
    assert not packing.can_pack(windowed, "train.pack", "its batches run padded", said.append)
    assert not packing.can_pack(windowed, "generate.share_prefix", "answering in padded batches", said.append)
    reason = "sliding-window attention, which tree attention does not reproduce"
    assert said == [f"train.pack: off for this model ({reason}); its batches run padded",
                    f"generate.share_prefix: off for this model ({reason}); answering in padded batches"]
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2", sliding_window=None))
    assert packing.can_pack(flash, "train.pack", "", said.append) and len(said) == 2  # tree attention replaces it


@pytest.mark.parametrize("heads, kv_heads, query_block", [(6, 2, 128), (4, 4, 128), (6, 2, 3), (4, 4, 2)])
def test_bf16_training_segments_compute_the_block_masked_attention_within_bf16_precision(heads, kv_heads,
                                                                                         query_block):
    """The CPU bf16 training path (batched matmuls, scores rounded to bf16, a segment's queries in blocks
    that see their own keys up to the block's last): its output and gradients against the whole row's
    block-masked attention in fp64, on the same bf16 inputs."""
    from laffi.tree_attention import _segment_attention

    row = pack(sequences())
    tree = TreeSpans.of(row, query_block=query_block)
    longest = max(segment.stop - segment.start for segment in tree.segments)  # 15 tokens: up to 8 blocks
    assert max(len(segment.blocks) for segment in tree.segments) == -(-longest // query_block)
    tokens, dim = len(row.tokens), 16
    torch.manual_seed(0)
    inputs = [torch.randn(1, h, tokens, dim).to(torch.bfloat16) for h in (heads, kv_heads, kv_heads)]
    grad = torch.randn(1, tokens, heads, dim)

    def gradients(query, key, value, attend):
        leaves = [t.clone().requires_grad_() for t in (query, key, value)]
        out = attend(*leaves)
        out.backward(grad.to(out.dtype))
        return [out.double()] + [t.grad.double() for t in leaves]

    def block_masked(query, key, value):
        groups = heads // kv_heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value,
                                                               attn_mask=row.mask(additive=False)[0, 0])
        return out.transpose(1, 2)

    def segments(query, key, value):
        return _segment_attention(None, query, key, value, None,
                                  packed_tree=TreeSpans.of(row, query_block=query_block))[0]

    expected = gradients(*(t.double() for t in inputs), block_masked)
    got = gradients(*inputs, segments)
    assert got[0].dtype == torch.float64 and inputs[0].dtype == torch.bfloat16
    for name, a, b in zip(("output", "query grad", "key grad", "value grad"), got, expected):
        error = ((a - b).norm() / b.norm()).item()
        assert error < 2e-2, f"{name}: relative error {error:.3g}"
    with torch.no_grad():  # forward only (answering): SDPA's kernel, as close as the rounding allows
        torch.testing.assert_close(segments(*inputs).double(), expected[0], atol=2e-2, rtol=2e-2)


def test_a_block_of_queries_sees_the_ancestors_and_its_own_keys_up_to_its_last_query():
    row = pack(sequences())
    segments = TreeSpans.of(row, query_block=2).segments
    # keys by index (not one slice) in a segment of several blocks: the case a slice would not exercise
    assert any(not isinstance(s.sees, slice) and len(s.blocks) > 1 for s in segments)
    for segment in segments:
        own = segment.stop - segment.start
        assert [first for first, _ in segment.blocks] == list(range(0, own, 2))
        assert segment.blocks[-1][1] == own
        ancestors = [] if segment.ancestors is None else segment.ancestors.tolist()
        for first, stop in segment.blocks:
            seen = segment.seen_by((first, stop))
            keys = list(range(seen.start, seen.stop)) if isinstance(seen, slice) else seen.tolist()
            assert keys == ancestors + list(range(segment.start, segment.start + stop))
