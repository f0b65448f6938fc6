"""Feedback-guided answering: answer, predict the feedback on that answer, and where its verdict is not
"correct", take the revised answer it names; up to `rounds` reviews per question.

    answer_with_feedback(answerer, reviewer, tokenizer, examples, shots, data, generate, rounds=1,
                         review_tokens=160, writer=writer, make_record=record, desc="evaluate")

The reviewer is a model trained on the refine or critique set (laffi.stages.build): its
completions end with a "Verdict:" and a "Revised answer:" line built from the Feedback record, so
the revised answer is read from those fields (laffi.prompts.read_review), never from free text. A review whose fields
are missing or unreadable keeps the answer it reviewed. The answerer and the reviewer may be one model
(a system reviewing itself) or two (one system's answers reviewed by another's feedback model).
The first answers are generated in one pass, as direct answering does; then the reviews go in chunks,
each written when its last round is done, so a crash loses the first pass and at most one chunk.
"""

from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm

from laffi.backends.answering import build_prompts, decoder
from laffi.config import DataConfig, GenerateConfig
from laffi.prompts import choose_shots, extract_answer, feedback_messages, prompt_ids, read_review
from laffi.records import QAExample, RecordWriter, Review

CHUNK_BATCHES = 4  # generate.batch_size x this many questions go through all rounds together


def review_prompts(tokenizer, examples: list[QAExample], shots: list[QAExample], data: DataConfig,
                   answers: dict[str, str]) -> dict[str, list[int]]:
    """The LaFFi feedback prompt on each answer: the QA prompt, the answer, the request for feedback."""
    return {e.id: prompt_ids(tokenizer, feedback_messages(e, choose_shots(e, shots, data.num_shots, data.seed),
                                                          answers[e.id]))
            for e in examples}


def answer_with_feedback(answerer, reviewer, tokenizer, examples: list[QAExample], shots: list[QAExample],
                         data: DataConfig, config: GenerateConfig, rounds: int, review_tokens: int,
                         writer: RecordWriter, make_record: Callable[[QAExample, str, str, list[Review]], object],
                         desc: str) -> dict:
    """Answer the examples not yet in `writer`; `make_record(example, final answer, first output, reviews)`."""
    todo = [e for e in examples if e.id not in writer.done_ids]
    stops = ["\n"] if config.stop_at_newline else None
    started, prompt_tokens, new_tokens, revised_count = time.perf_counter(), 0, 0, 0
    chunk = config.batch_size * CHUNK_BATCHES
    # the first answers in one pass over every question left, batched exactly as direct answering batches
    # them: in bf16 a batch's composition moves answers (on 100 dev questions, chunks of 64 gave F1 36.0
    # where direct answering's batches gave 38.1 with the same adapter), so this equals the direct system
    prompts = build_prompts(tokenizer, todo, shots, data)
    prompt_tokens += sum(map(len, prompts.values()))
    first = {}
    for batch in decoder(answerer, config)(answerer, tokenizer, prompts, config.batch_size, config.max_new_tokens,
                                           stops):
        first.update({g.id: g.text for g in batch})
        new_tokens += sum(g.new_tokens for g in batch)
    with tqdm(total=len(examples), initial=len(examples) - len(todo), desc=desc, unit="q") as bar:
        for begin in range(0, len(todo), chunk):
            part = todo[begin:begin + chunk]
            current = {e.id: extract_answer(first[e.id]) for e in part}
            reviews: dict[str, list[Review]] = {e.id: [] for e in part}
            pending = list(part)
            for _ in range(rounds):
                prompts = review_prompts(tokenizer, pending, shots, data, current)
                prompt_tokens += sum(map(len, prompts.values()))
                for batch in decoder(reviewer, config)(reviewer, tokenizer, prompts, config.batch_size, review_tokens,
                                                       None):  # a feedback spans lines: it ends at end of turn
                    new_tokens += sum(g.new_tokens for g in batch)
                    for g in batch:
                        verdict, revised = read_review(g.text) or (None, None)
                        reviews[g.id].append(Review(current[g.id], g.text, verdict, revised))
                changed = [e for e in pending if reviews[e.id][-1].verdict not in (None, "correct")
                           and reviews[e.id][-1].revised not in (None, current[e.id])]
                for e in changed:
                    current[e.id] = reviews[e.id][-1].revised
                revised_count += len(changed)
                pending = changed  # a revised answer is reviewed again in the next round
                if not pending:
                    break
            writer.write(make_record(e, current[e.id], first[e.id], reviews[e.id]) for e in part)
            elapsed = time.perf_counter() - started
            bar.set_postfix(new_tok_s=f"{new_tokens / elapsed:.1f}", revised=revised_count)
            bar.update(len(part))
    elapsed = time.perf_counter() - started
    return {"questions": len(todo), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "revised": revised_count, "rounds": rounds, "seconds": round(elapsed, 2), "new_tokens_per_s": round(new_tokens / elapsed, 2) if todo else None}
