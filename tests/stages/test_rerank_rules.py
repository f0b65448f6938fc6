"""Choosing among K candidates (laffi.stages.rerank): each rule on hand cases, K=1 returns the single
candidate, and the likelihood score is the candidate's mean log-probability run alone on the tiny model.

    python -m pytest tests/stages/test_rerank_rules.py
"""

from __future__ import annotations

import pytest
import torch

from laffi.config import ModelConfig
from laffi.models import load_model
from laffi.prompts import choose_shots, prompt_completion_ids, qa_messages
from laffi.records import QAExample
from laffi.stages.rerank import METHODS, Scores, answer_logprobs, candidate_scores, choose
from laffi.stages.verdicts import LINES

EXAMPLE = QAExample("q1", "Normans", "The Normans gave their name to Normandy, a region in France.",
                    "In what country is Normandy located?", ["France"])
SHOTS = [QAExample("s1", "Moon", "The Moon orbits the Earth every 27 days.", "What orbits the Earth?", ["The Moon"])]


def test_each_rule_on_hand_cases_and_ties_go_to_the_earliest():
    candidates = ["Normandy", "france", "France.", "the Normans"]
    scores = Scores(p_correct=[0.2, 0.7, 0.7, 0.1], mean_logprob=[-0.5, -2.0, -1.0, -0.1])
    assert choose("first", candidates, scores) == 0
    assert choose("verifier", candidates, scores) == 1  # 0.7 twice: the earlier
    assert choose("likelihood", candidates, scores) == 3
    assert choose("vote", candidates) == 1  # "france" and "France." normalise alike: 2 votes
    assert choose("oracle", candidates, gold=["France"]) == 1
    assert choose("vote", ["a", "b"]) == 0  # one vote each: the greedy answer
    with pytest.raises(ValueError, match="unknown method 'best'"):
        choose("best", candidates, scores)


def test_with_one_candidate_every_rule_returns_it():
    for method in METHODS:
        assert choose(method, ["Paris"], Scores([0.0], [-9.0]), gold=["France"]) == 0


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32", device="cpu", threads=2))


@torch.no_grad()
def direct_mean_logprob(model, tokenizer, example, shots, answer: str) -> float:
    prompt, completion = prompt_completion_ids(tokenizer, qa_messages(example, shots),
                                               [{"role": "assistant", "content": answer}])
    logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].double()
    return float(logits.log_softmax(-1)[torch.arange(len(completion)), completion].mean())


def test_the_likelihood_is_the_mean_log_probability_of_each_candidate_run_alone(tiny):
    model, tokenizer = tiny
    shots = choose_shots(EXAMPLE, SHOTS, 1, 0)
    candidates = ["France", "Normandy, a region in France", "", "France"]
    items = [(EXAMPLE, shots, c) for c in candidates]
    got = answer_logprobs(model, tokenizer, items)
    assert got == pytest.approx([direct_mean_logprob(model, tokenizer, EXAMPLE, shots, c) for c in candidates],
                                abs=1e-4)
    assert got[0] == got[3]
    scores = candidate_scores(model, tokenizer, items, openings=LINES)
    assert scores.mean_logprob == got and all(0 < p < 1 for p in scores.p_correct)
