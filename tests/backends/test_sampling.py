"""Sampled answers (generate.samples): each (question, sample) draws from its own seeded stream, so its
answer is the same in any batch, on either in-process engine; greedy prompts stay exactly greedy; the
draws follow softmax(logits / temperature).

    python -m pytest tests/backends/test_sampling.py
"""

import math
from collections import Counter

import pytest
import torch
from support.newline_model import newline_prone_model
from test_prefix_sharing import prompts_with_shared_prefixes

from laffi.backends.local import greedy_generate
from laffi.backends.prefix_sharing import shared_prefix_generate
from laffi.backends.sampling import Sampling, Streams, stream_seed

ENGINES = {"padded": greedy_generate, "shared prefix": shared_prefix_generate}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return newline_prone_model(tiny_model_dir)


def sampled_prompts() -> tuple[dict[str, list[int]], Sampling]:
    """Every prompt greedy, and again as samples 1 and 2 (what answer_questions asks for with samples=3)."""
    base = prompts_with_shared_prefixes()
    prompts = {f"{key}#s{s}" if s else key: ids for key, ids in base.items() for s in range(3)}
    seeds = {f"{key}#s{s}": stream_seed(0, key, s) for key in base for s in (1, 2)}
    return prompts, Sampling(temperature=1.0, seeds=seeds)


def answers(engine, model, tokenizer, prompts, batch_size, sampling=None) -> dict[str, tuple[str, int]]:
    extra = {"sampling": sampling} if sampling else {}
    return {g.id: (g.text, g.new_tokens) for batch in engine(model, tokenizer, prompts, batch_size, 12, ["\n"], **extra)
            for g in batch}


def test_a_sampled_answer_is_the_same_in_any_batch_and_on_either_engine(tiny):
    model, tokenizer = tiny
    prompts, sampling = sampled_prompts()
    alone = answers(greedy_generate, model, tokenizer, prompts, 1, sampling)
    for name, engine, batch_size in (("padded", greedy_generate, 32), ("shared prefix", shared_prefix_generate, 3),
                                     ("shared prefix", shared_prefix_generate, 32)):
        assert answers(engine, model, tokenizer, prompts, batch_size, sampling) == alone, (name, batch_size)
    # one stream per (question, sample): the same seed gives the same answers, another seed others
    reseeded = Sampling(1.0, {key: stream_seed(1, *key.split("#s")[:1], int(key[-1])) for key in sampling.seeds})
    again = answers(shared_prefix_generate, model, tokenizer, prompts, 8, reseeded)
    assert sum(again[key] != alone[key] for key in sampling.seeds) > len(sampling.seeds) // 2


def test_greedy_prompts_stay_greedy_beside_sampled_ones(tiny):
    model, tokenizer = tiny
    prompts, sampling = sampled_prompts()
    greedy_keys = [key for key in prompts if key not in sampling.seeds]
    for engine in ENGINES.values():
        mixed = answers(engine, model, tokenizer, prompts, 8, sampling)
        plain = answers(engine, model, tokenizer, {key: prompts[key] for key in greedy_keys}, 8)
        assert {key: mixed[key] for key in greedy_keys} == plain
        # the samples of a question are independent draws: they differ from the greedy answer and each other
        differ = [key for key in greedy_keys if len({mixed[key], mixed[f"{key}#s1"], mixed[f"{key}#s2"]}) == 3]
        assert len(differ) > len(greedy_keys) // 2


def test_draws_follow_the_tempered_softmax():
    logits = torch.tensor([[0.0, math.log(2), math.log(3), math.log(4)]])
    for temperature in (1.0, 0.5):
        draws = Counter(int(Streams(Sampling(temperature, {"q": stream_seed(0, "q", n)}), ["q"]).pick(logits, [0]))
                        for n in range(4000))
        expected = torch.softmax(logits[0] / temperature, -1)
        for token in range(4):
            assert abs(draws[token] / 4000 - expected[token].item()) < 0.03, (temperature, token)


def test_the_stream_seed_is_stable_and_separates_samples():
    assert stream_seed(0, "q1", 1) == stream_seed(0, "q1", 1) == 3933744099224263619  # SHA-256 of "0:q1:1", 63 bits
    assert len({stream_seed(seed, question, sample) for seed in (0, 1) for question in ("q1", "q2")
                for sample in range(4)}) == 16
    assert all(0 <= stream_seed(0, "q", s) < 2**63 for s in range(100))


def test_a_server_gets_the_temperature_and_a_seed_per_sampled_answer(tiny_model_dir):
    from support.fault_server import FaultServer
    from transformers import AutoTokenizer

    from laffi.backends.openai_backend import OpenAIGenerator
    from laffi.config import load_config

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = {}

    def completions(body):
        if len(body["prompt"]) > 1:  # not the one-token probe
            seen[body["prompt"][-1]] = (body["temperature"], body.get("seed"))
        return 200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "text": " x\n", "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 2, "total_tokens": 0}}

    prompts = {"q1": [5, 6, 1], "q1#s1": [5, 6, 2], "q1#s2": [5, 6, 3]}  # the last token tells them apart
    sampling = Sampling(0.7, {"q1#s1": stream_seed(0, "q1", 1), "q1#s2": stream_seed(0, "q1", 2)})
    with FaultServer(lambda item, n: "ok", completions=completions) as server:
        config = load_config(overrides=["generate.backend=openai", f"generate.base_url={server.url}"])
        generator = OpenAIGenerator.from_config(config.model, config.generate, tokenizer)
        generations = [g for batch in generator.greedy_batches(prompts, 2, 8, ["\n"], sampling=sampling) for g in batch]
    assert sorted(g.id for g in generations) == sorted(prompts)
    assert seen == {1: (0.0, None), 2: (0.7, stream_seed(0, "q1", 1) % 2**31),
                    3: (0.7, stream_seed(0, "q1", 2) % 2**31)}
