"""Feedback-guided answering: the revised answer comes from the review's fields, a revised answer is
reviewed again, and answering stops after `rounds` reviews or at a "correct" verdict.

    python -m pytest tests/systems/test_feedback_guided.py

The engine is scripted (an object with `greedy_batches`, the interface the OpenAI-compatible engine
has), so the test sees exactly which prompts were reviewed; the prompts are the real ones, rendered
by the embedded model's tokenizer. A tiny-model run of every packaged system is in test_pipeline.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from laffi.backends.feedback_guided import answer_with_feedback
from laffi.backends.local import Generation
from laffi.config import DataConfig, GenerateConfig
from laffi.distributed.shards import Collector
from laffi.prompts import FEEDBACK_REQUEST, review_completion
from laffi.records import QAExample

# reviewed answer -> the feedback the scripted reviewer predicts on it
REVIEWS = {"wrong": review_completion("Incorrect.", "incorrect", "better"),
           "better": review_completion("Only partially correct.", "partially correct", "best"),
           "best": review_completion("Correct.", "correct", "best"),
           "garbled": "The answer is incorrect. The right answer is \"best\"."}  # free text, no fields


class Scripted:
    """An engine answering a QA prompt with its question's scripted first answer, and a review prompt
    with the feedback in REVIEWS on the answer under review."""

    def __init__(self, tokenizer, first: dict[str, str]):
        self.tokenizer, self.first, self.reviewed = tokenizer, first, []

    def greedy_batches(self, prompts, batch_size, max_new_tokens, stop_strings):
        batch = []
        for qid, ids in prompts.items():
            text = self.tokenizer.decode(ids)
            if FEEDBACK_REQUEST in text:  # the answer under review sits right before the request
                answer = _reviewed(text)
                self.reviewed.append((qid, answer))
                assert stop_strings is None and max_new_tokens == 64  # a feedback spans lines
                batch.append(Generation(qid, REVIEWS[answer], 9))
            else:
                batch.append(Generation(qid, self.first[qid] + "\n", 2))
        yield batch


def _reviewed(prompt: str) -> str:
    before = prompt.split(FEEDBACK_REQUEST)[0]
    return max((a for a in REVIEWS if a in before), key=before.rfind)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def questions(n: int) -> list[QAExample]:
    return [QAExample(f"q{i}", "Article", f"Passage {i} about the answer.", f"Question {i}?", ["best"])
            for i in range(n)]


def shots() -> list[QAExample]:
    return [QAExample(f"s{i}", f"Shots {i}", f"Shot passage {i}.", "What?", ["shot"]) for i in range(2)]


def answer(tokenizer, first: dict[str, str], rounds: int):
    engine, out = Scripted(tokenizer, first), Collector()
    stats = answer_with_feedback(engine, engine, tokenizer, questions(len(first)), shots(), DataConfig(num_shots=1),
                                 GenerateConfig(batch_size=2), rounds, 64, out,
                                 lambda e, final, output, reviews: (e.id, final, output, reviews), desc="test")
    return {qid: (final, reviews) for qid, final, _, reviews in out.records}, engine.reviewed, stats


@pytest.mark.parametrize("rounds, final, reviews", [(1, "better", 1), (2, "best", 2), (3, "best", 3),
                                                    (5, "best", 3)])
def test_rounds_revise_from_the_fields_and_stop_at_correct_or_after_r_rounds(tokenizer, rounds, final, reviews):
    results, reviewed, stats = answer(tokenizer, {"q0": "wrong"}, rounds)
    answer_, trail = results["q0"]
    assert answer_ == final and len(trail) == reviews
    assert [r.answer for r in trail] == ["wrong", "better", "best"][:reviews]  # each round reviews the last revision
    assert [r.verdict for r in trail] == ["incorrect", "partially correct", "correct"][:reviews]
    assert [qid for qid, _ in reviewed] == ["q0"] * reviews
    assert stats["revised"] == min(rounds, 2)


def test_a_review_without_fields_or_a_correct_verdict_keeps_the_answer(tokenizer):
    results, reviewed, _ = answer(tokenizer, {"q0": "garbled", "q1": "best", "q2": "wrong"}, rounds=3)
    assert results["q0"][0] == "garbled" and results["q0"][1][0].verdict is None  # free text is never read
    assert results["q1"][0] == "best" and len(results["q1"][1]) == 1
    assert results["q2"][0] == "best" and len(results["q2"][1]) == 3
    assert sorted(q for q, _ in reviewed) == ["q0", "q1", "q2", "q2", "q2"]  # only revised answers go again
