"""Shared-prefix answering gives exactly the answers of each prompt decoded without sharing."""

import random

import pytest
import torch

from laffi.backends.local import greedy_generate
from laffi.backends.prefix_sharing import shared_prefix_generate
from laffi.packing import pack
from support.newline_model import newline_prone_model


def prompts_with_shared_prefixes(seed: int = 0) -> dict[str, list[int]]:
    """Like QA prompts: two "articles" (a shared head), "passages" shared by some questions, equal prompts."""
    rng = random.Random(seed)
    words = lambda n: [rng.randrange(100, 5000) for _ in range(n)]  # noqa: E731
    system = words(6)
    prompts = {}
    for article in range(2):
        shots = system + words(10)
        for passage in range(3):
            context = shots + words(rng.randrange(3, 12))
            for question in range(passage + 1):
                prompts[f"a{article}p{passage}q{question}"] = context + words(rng.randrange(1, 6))
    prompts["duplicate"] = list(prompts["a0p2q1"])
    prompts["prefix-of-another"] = prompts["a1p1q0"][:-1]
    prompts["alone"] = words(4)
    return prompts


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return newline_prone_model(tiny_model_dir)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_shared_prefix_answers_equal_unshared(tiny, attention, batch_size):
    model, tokenizer = tiny
    model.config._attn_implementation = attention  # decoding's attention: prefill runs tree attention
    try:
        _answers_equal(model, tokenizer, batch_size)
    finally:
        model.config._attn_implementation = "sdpa"


def test_answers_equal_unshared_when_a_batch_is_prefilled_in_several_rows(tiny, monkeypatch):
    from laffi.backends import prefix_sharing

    monkeypatch.setattr(prefix_sharing, "PREFILL_TOKENS", 30)  # the prompts' trees hold about 150 tokens
    _answers_equal(*tiny, batch_size=32)


def test_padded_decoding_ignores_the_penalties_a_model_config_ships(tiny):
    model, _ = tiny
    config = model.generation_config
    saved = (config.repetition_penalty, config.no_repeat_ngram_size)
    config.repetition_penalty, config.no_repeat_ngram_size = 3.0, 2  # as Qwen2.5-Instruct ships 1.05
    try:
        _answers_equal(*tiny, batch_size=4)
    finally:
        config.repetition_penalty, config.no_repeat_ngram_size = saved


def _answers_equal(model, tokenizer, batch_size):
    prompts = prompts_with_shared_prefixes()
    plain = {g.id: g for batch in greedy_generate(model, tokenizer, prompts, 1, 12, ["\n"]) for g in batch}
    shared = {g.id: g for batch in shared_prefix_generate(model, tokenizer, prompts, batch_size, 12, ["\n"])
              for g in batch}
    assert shared.keys() == plain.keys()
    for question_id in prompts:
        assert (shared[question_id].text, shared[question_id].new_tokens) == \
            (plain[question_id].text, plain[question_id].new_tokens), question_id
    lengths = [g.new_tokens for g in shared.values()]
    assert min(lengths) < 12 == max(lengths)  # some stop at a newline, some run to the limit


def test_shared_prefix_logits_equal_unshared(tiny):
    """Not just the argmax: the next-token distribution after each prompt is the unpacked one."""
    model, _ = tiny
    prompts = list(prompts_with_shared_prefixes().values())
    row = pack(prompts)
    with torch.no_grad():
        packed = model(input_ids=row.input_ids(), position_ids=row.position_ids(),
                       attention_mask=row.mask(additive=False)).logits[0]
        for i, ids in enumerate(prompts):
            alone = model(input_ids=torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(packed[row.last[i]], alone, atol=1e-4, rtol=1e-4)
    assert len(row.tokens) < sum(map(len, prompts)) / 2  # the shared parts ran once


def test_a_packed_row_holds_each_sequence_on_its_own_path_and_each_token_sees_only_that_path():
    sequences = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7], [1, 2, 3, 4], [9]]
    row = pack(sequences)
    assert row.tokens == [1, 2, 3, 4, 5, 6, 7, 9]  # each shared run once; the equal sequences share all
    allowed = row.mask(additive=False)[0, 0]
    for i, sequence in enumerate(sequences):
        path = row.paths[i]
        assert [row.tokens[k] for k in path] == sequence and [row.positions[k] for k in path] == list(range(len(sequence)))
        assert path[-1] == row.last[i]
        assert torch.nonzero(allowed[row.last[i]]).flatten().tolist() == path
    additive = row.mask(additive=True)[0, 0]
    assert torch.equal(additive == 0, allowed)
