"""Choosing one answer among K candidates of a question (feedback as a verifier, at test time).

    scores = candidate_scores(model, tokenizer, [(question, shots, c) for c in candidates], openings=LINES)
    pick = choose(method, candidates, scores, gold=question.answers)   # an index into candidates

The methods, each a rule over the same K candidates (so they spend the same answering compute):
- `verifier`: the candidate whose predicted feedback most likely opens with the verdict "correct"
  (laffi.stages.verdicts: the probability of each verdict's opening, teacher-forced; no generation);
- `likelihood`: the candidate the answering model itself likes best, by its mean log-probability per
  token as the completion of the QA prompt (with its end of turn). The mean, not the sum: the sum all
  but always picks the greedy answer (greedy decoding approximates the most likely sequence) and favours
  short answers, so it would be no rule beside "first". This is the control at equal test-time compute;
- `vote`: the answer given most often, compared after SQuAD's normalisation (self-consistency);
- `first`: candidate 0, the greedy answer (what direct answering gives);
- `oracle`: the candidate with the best F1 against the gold answers: pass@K, a bound, not a system.
Ties go to the earliest candidate, so with K=1 every method returns the single candidate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from laffi.analysis.metrics import normalize_answer, token_f1
from laffi.prompts import prompt_completion_ids, qa_messages
from laffi.records import QAExample
from laffi.stages.batches import IGNORE, Row
from laffi.stages.verdicts import MAX_ROW_TOKENS, SENTENCES, scored_parts, verdict_probabilities

METHODS = ("verifier", "likelihood", "vote", "first", "oracle")


@dataclass(frozen=True)
class Scores:
    """What the model-based methods read, per candidate: P(verdict "correct") and the mean log-probability
    per token of the candidate as the answer (nats)."""

    p_correct: list[float]
    mean_logprob: list[float]


def choose(method: str, candidates: Sequence[str], scores: Scores | None = None,
           gold: Sequence[str] = ()) -> int:
    """The index of the chosen candidate (the earliest of ties)."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    if method == "first":
        return 0
    if method == "vote":
        counts = Counter(normalize_answer(c) for c in candidates)
        return next(k for k, c in enumerate(candidates) if counts[normalize_answer(c)] == max(counts.values()))
    if method == "oracle":
        values = [token_f1(c, gold) for c in candidates]
    elif method == "verifier":
        values = scores.p_correct
    elif method == "likelihood":
        values = scores.mean_logprob
    else:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    return max(range(len(candidates)), key=lambda k: (values[k], -k))


def answer_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    items: Sequence[tuple[QAExample, list[QAExample], str]],
                    max_row_tokens: int = MAX_ROW_TOKENS) -> list[float]:
    """Per (question, shots, candidate): the candidate's mean log-probability per token as the completion of
    the QA prompt, its end-of-turn token included, tokenized as training tokenizes an SFT example. Candidates
    of one question share their prompt in a packed row (at most one forward pass per candidate)."""
    rows: list[Row] = []
    for example, shots, answer in items:
        prompt, completion = prompt_completion_ids(tokenizer, qa_messages(example, shots),
                                                   [{"role": "assistant", "content": answer}])
        rows.append((prompt + completion, [IGNORE] * len(prompt) + completion))
    out: list[float] = [0.0] * len(rows)
    for part, values in scored_parts(model, tokenizer, rows, [[k] for k in range(len(rows))], max_row_tokens,
                                     "likelihood ranking", "one padded batch per candidate"):
        for i, value in zip(part, values):
            out[i] = value / sum(label != IGNORE for label in rows[i][1])
    return out


def candidate_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     items: Sequence[tuple[QAExample, list[QAExample], str]],
                     openings: Sequence[tuple[str, str]] = SENTENCES, max_row_tokens: int = MAX_ROW_TOKENS) -> Scores:
    """Both model-based scores of each (question, shots, candidate), in order; `openings`: the verdict openings
    the model was trained to begin its feedback with (verdicts.LINES for a verify set, else the reference
    annotator's sentences). Cost: at most two forward passes per candidate, no generation."""
    verdicts = verdict_probabilities(model, tokenizer, items, max_row_tokens, openings=openings)
    return Scores([v["correct"] for v in verdicts], answer_logprobs(model, tokenizer, items, max_row_tokens))
