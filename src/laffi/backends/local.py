"""The padded-batch answering engine (generate.share_prefix=false): greedy decoding with transformers, in
length-sorted batches.

    for batch in greedy_generate(model, tokenizer, {"q1": ids}, batch_size=8, max_new_tokens=24):
        ...   # a list of Generation, as soon as each batch is done

With `sampling` (laffi.backends.sampling), the prompts it names are sampled instead, each from its
own random stream, the rest of the batch still greedy.

Every engine (this one, `openai_backend.OpenAIGenerator`) yields `Generation` records, so the
stages that answer questions need not know which engine ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from laffi.backends.sampling import Sampling, Streams


@dataclass
class Generation:
    id: Hashable  # the prompt's key: a question id, or whatever key the caller gave its prompts
    text: str
    new_tokens: int
    sample: int = 0  # which of the question's answers (set by laffi.backends.answering)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None)


def tokens_containing(tokenizer: PreTrainedTokenizerBase, characters: list[str]) -> list[int]:
    """Ids of the tokens whose text contains one of `characters`.

    Stopping on them is what `generate(stop_strings=...)` does for a one-character stop string
    (it stops on any token that contains the string), without the 0.3-0.4 s that building its
    StopStringCriteria from the whole vocabulary costs on every call, that is every batch.
    """
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if any(c in text for c in characters)]


def stop_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                stop_strings: list[str] | None) -> tuple[list[int], list[str]]:
    """The tokens that end an answer (end of turn, and any token holding a one-character stop string),
    and the longer stop strings, which only the decoded text can show."""
    stop_strings = stop_strings or []
    single = [s for s in stop_strings if len(s) == 1]
    tokens = set(stop_token_ids(model, tokenizer)) | set(tokens_containing(tokenizer, single) if single else [])
    return sorted(tokens), [s for s in stop_strings if len(s) > 1]


class _Draws(LogitsProcessor):
    """The sampled rows' draws, in generate's greedy loop (which then takes the argmax of every row)."""

    def __init__(self, streams: Streams) -> None:
        self.streams = streams

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.streams.perturb(scores, list(range(scores.shape[0])))


@torch.inference_mode()
def greedy_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    prompts: dict[Hashable, list[int]], batch_size: int, max_new_tokens: int,
                    stop_strings: list[str] | None = None,
                    sampling: Sampling | None = None) -> Iterator[list[Generation]]:
    """Greedy decoding (the prompts `sampling` names: sampled) in length-sorted batches; yields each batch
    as soon as it is done."""
    order = sorted(prompts, key=lambda i: len(prompts[i]))  # similar lengths: little padding
    eos = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    stops, stop_strings = stop_tokens(model, tokenizer, stop_strings)
    stop_set = set(stops)
    stop_strings = stop_strings or None
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in ids)
        # left padding, so every row's next token comes right after its prompt
        input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in ids], device=device)
        attention = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in ids],
                                 device=device)
        streams = Streams(sampling, ids)
        draws = {"logits_processor": LogitsProcessorList([_Draws(streams)])} if streams.any else {}
        # plain greedy decoding, as shared-prefix answering does: the settings a model's generation_config
        # may ship (Qwen2.5's Instruct models: repetition_penalty 1.05) are set to off, not merged in
        output = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=False, repetition_penalty=1.0,
                                no_repeat_ngram_size=0, min_new_tokens=0,
                                max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                                stop_strings=stop_strings, tokenizer=tokenizer if stop_strings else None, **draws)
        batch = []
        for row, question_id in zip(output[:, width:].tolist(), ids):
            new = row[: next((k + 1 for k, t in enumerate(row) if t in stop_set), len(row))]
            batch.append(Generation(question_id, tokenizer.decode(new, skip_special_tokens=True), len(new)))
        yield batch
