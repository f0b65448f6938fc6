"""P(verdict): a model's belief that an answer is right, read off its feedback prediction (feedback as a
verifier, the first cheap check).

A LaFFi model learns to write the annotator's feedback on its own answer, and the reference annotator's
feedback begins with a verdict sentence (laffi.annotators.reference.VERDICTS: four wordings each of
"correct", "partially correct" and "incorrect"). The probability the model gives to beginning the
feedback on an answer with each of those 12 sentences, summed per verdict and normalised over the 12,
is the model's verdict on the answer. Nothing is generated: each sentence is scored teacher-forced, as
the completion of the feedback prompt (`prompts.feedback_messages`), token by token as training
tokenized the feedback it trained on.

    items = [(example, choose_shots(example, shots, data.num_shots, data.seed), "Denver Broncos")]
    verdict_probabilities(model, tokenizer, items)
    # [{"correct": 0.71, "partially correct": 0.18, "incorrect": 0.11}]

The check that reads it on an experiment's dev answers (AUROC of P(correct) against the reference
annotator's verdict and against F1 >= 0.5, for each trained model and the base model):

    python -m laffi.experiments.verdict_check runs/experiment-n2

Cost: the 12 sentences of a candidate share its prompt, so they run as one packed row (`laffi.packing`,
attended segment by segment by `laffi.tree_attention`, through `stages.batches.sequence_logps` as the DPO
term runs its pairs) in which the prompt runs once and each sentence adds its few tokens: at most one
forward pass per candidate, and fewer, since a row holds up to `max_row_tokens` tokens of several
candidates in token order, so candidates of one article also share the system prompt and the shots, and
candidates of one question the whole QA prompt. A model that cannot run packed rows
(`packing.block_mask_unsupported`) runs each candidate's 12 sequences as one padded batch: one forward
pass per candidate, over 12 copies of the prompt.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from laffi.annotators.reference import VERDICTS as VERDICT_WORDINGS
from laffi.packing import can_pack
from laffi.prompts import Message, feedback_messages, prompt_completion_ids, prompt_ids, verdict_line
from laffi.records import VERDICTS, QAExample
from laffi.stages.batches import IGNORE, Row, packed_part_indices, sequence_logps
from laffi.tree_attention import tree_attention

Item = tuple[QAExample, list[QAExample], str]  # a question, its few-shot examples, a candidate answer

# (verdict, sentence): the reference annotator's 12 verdict sentences, verdicts in laffi.records.VERDICTS order
SENTENCES: tuple[tuple[str, str], ...] = tuple((verdict, sentence) for verdict in VERDICTS
                                               for sentence in VERDICT_WORDINGS[verdict])
# A verify completion's three fixed first lines (laffi.stages.build.verify_example), in VERDICTS order
LINES: tuple[tuple[str, str], ...] = tuple((verdict, verdict_line(verdict)) for verdict in VERDICTS)
# What an opening is checked to be tokenized apart from: how the feedback goes on after it (after a reference
# verdict sentence a diagnosis beginning with a word or with a quoted answer; after a verdict line a newline)
_FOLLOWERS = (" It", ' "', "\n")
MAX_ROW_TOKENS = 2048  # tokens of one packed row, at most (unless one candidate's 12 sequences are longer)


def opening_ids(tokenizer: PreTrainedTokenizerBase, prompt: list[Message], sentence: str) -> list[int]:
    """The tokens of `sentence` at the beginning of a completion of `prompt`, as training tokenizes a whole
    feedback that begins with it (`prompt_completion_ids`: the completion apart from the prompt, with what
    the chat template puts before the reply, e.g. the plain template's space after "Answer:").

    Raises ValueError where the tokenizer would not end a token at the sentence's end in such a feedback,
    so that the sentence has no probability of its own."""
    def completion(text: str) -> list[int]:
        return prompt_completion_ids(tokenizer, prompt, [{"role": "assistant", "content": text}])[1]

    alone = completion(sentence)
    k = next((k for k in range(1, len(alone) + 1) if sentence in _decode(tokenizer, alone[:k])), None)
    if k is None or not _decode(tokenizer, alone[:k]).endswith(sentence) \
            or any(completion(sentence + follower)[:k] != alone[:k] for follower in _FOLLOWERS):
        raise ValueError(f"{sentence!r}: this tokenizer does not end a token where the sentence ends in a "
                         "feedback that goes on after it, so its probability is not that of a token sequence")
    return alone[:k]


def scored_parts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[Row],
                 unpacked: list[list[int]], max_row_tokens: int, what: str,
                 fallback: str) -> Iterator[tuple[list[int], list[float]]]:
    """Teacher-forced `rows` scored without gradients, pass by pass: (the pass's row indices, each row's
    completion log-probability summed over its tokens). Packed rows of up to `max_row_tokens` tokens
    with shared prefixes where the model can run them (`packing.can_pack`, which names `what` and the
    `fallback`), else the `unpacked` groups of rows as padded batches."""
    device = next(model.parameters()).device
    packed = can_pack(model, what, fallback)
    parts = packed_part_indices(rows, max_row_tokens) if packed else unpacked
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for part in parts:
        with torch.no_grad(), tree_attention(model) if packed else nullcontext():
            yield part, sequence_logps(model, [rows[i] for i in part], pad_id, device, packed).tolist()


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def sentence_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item],
                      sentences: Sequence[str] = tuple(s for _, s in SENTENCES), max_row_tokens: int = MAX_ROW_TOKENS,
                      progress: Callable[[int], object] | None = None) -> list[list[float]]:
    """Per item, per sentence: the log-probability (nats, summed over its tokens) of the sentence as the
    beginning of the completion of the item's feedback prompt. `progress(n)` is called as n more items
    are done. Prompts are not truncated: one longer than the model's positions is an error of the model's."""
    if not items:
        return []
    completions = [opening_ids(tokenizer, feedback_messages(*items[0]), s) for s in sentences]
    rows: list[Row] = []  # item-major: the prompt masked, the sentence scored, as training's rows
    for example, shots, answer in items:
        prompt = prompt_ids(tokenizer, feedback_messages(example, shots, answer))
        rows += [(prompt + c, [IGNORE] * len(prompt) + c) for c in completions]
    per_item = len(completions)
    logprobs: list[float | None] = [None] * len(rows)
    left = [per_item] * len(items)  # sequences of each item not yet scored
    unpacked = [list(range(k, k + per_item)) for k in range(0, len(rows), per_item)]
    for part, values in scored_parts(model, tokenizer, rows, unpacked, max_row_tokens, "verdict scoring",
                                     "each candidate's sentences run as one padded batch"):
        done = 0
        for i, value in zip(part, values):
            logprobs[i] = value
            left[i // per_item] -= 1
            done += left[i // per_item] == 0
        if progress is not None and done:
            progress(done)
    return [logprobs[k:k + per_item] for k in range(0, len(rows), per_item)]


def verdict_distribution(logprobs: Sequence[float],
                         sentences: Sequence[tuple[str, str]] = SENTENCES) -> dict[str, float]:
    """P(verdict): each verdict's sentences' probabilities summed, normalised over all the sentences."""
    probabilities = torch.tensor(logprobs, dtype=torch.float64).softmax(0).tolist()
    out = dict.fromkeys(dict.fromkeys(verdict for verdict, _ in sentences), 0.0)
    for (verdict, _), p in zip(sentences, probabilities, strict=True):
        out[verdict] += p
    return out


def verdict_mass(logprobs: Sequence[float]) -> float:
    """log P(the feedback begins with one of the sentences): how much the model writes verdicts at all."""
    top = max(logprobs)
    return top + math.log(sum(math.exp(v - top) for v in logprobs))


def verdict_probabilities(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item],
                          max_row_tokens: int = MAX_ROW_TOKENS, progress: Callable[[int], object] | None = None,
                          openings: Sequence[tuple[str, str]] = SENTENCES) -> list[dict[str, float]]:
    """Per (question, shots, candidate answer): P(verdict) for "correct", "partially correct" and "incorrect",
    summing to 1 (`verdict_distribution` of `sentence_logprobs` over `openings`: the reference annotator's
    12 sentences, or LINES for a model trained on verify completions).

    Cost: at most one forward pass per candidate (its prompt once, then the openings' few tokens, in one
    packed row with a shared prefix), fewer where a row of `max_row_tokens` holds several candidates; no
    generation, no gradients."""
    logprobs = sentence_logprobs(model, tokenizer, items, tuple(s for _, s in openings), max_row_tokens, progress)
    return [verdict_distribution(values, openings) for values in logprobs]
