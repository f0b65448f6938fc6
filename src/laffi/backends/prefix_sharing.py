"""Greedy decoding with shared prefixes computed once: a batch of prompts is one packed row.

    for batch in shared_prefix_generate(model, tokenizer, {"q1": ids, "q2": ids2}, batch_size=16,
                                        max_new_tokens=24):
        ...   # a list of Generation, as soon as each batch is done

Prompts are taken in token order, so questions of one article (same system prompt and shots) and
of one passage fall into one batch; `laffi.packing` lays the batch out as a prefix tree in a single
row, whose shared parts run once. Each decoding step then feeds one token per unfinished prompt,
every one attending to its own path through the tree and its own earlier tokens, and reading the
LM head at those positions only (never the whole vocabulary over the prompt). The answers are those
of each prompt decoded alone; tests compare them with `greedy_generate` on the same prompts.
"""

from __future__ import annotations

from typing import Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from laffi.backends.local import Generation, stop_tokens
from laffi.packing import additive_mask, pack


@torch.inference_mode()
def shared_prefix_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                           prompts: dict[str, list[int]], batch_size: int, max_new_tokens: int,
                           stop_strings: list[str] | None = None) -> Iterator[list[Generation]]:
    """Greedy decoding of `prompts` in batches of neighbours in token order; yields each batch when done."""
    stops, long_stops = stop_tokens(model, tokenizer, stop_strings)
    stop_set = set(stops)
    order = sorted(prompts, key=lambda i: prompts[i])
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        yield _decode_batch(model, tokenizer, ids, [prompts[i] for i in ids], max_new_tokens, stop_set,
                            long_stops, device)


def _decode_batch(model, tokenizer, ids: list[str], sequences: list[list[int]], max_new_tokens: int,
                  stop_set: set[int], long_stops: list[str], device) -> list[Generation]:
    row = pack(sequences)
    additive = additive_mask(model)
    output = model(input_ids=row.input_ids(device), position_ids=row.position_ids(device),
                   attention_mask=row.mask(row.segments, row.rows, additive, device), use_cache=True,
                   logits_to_keep=torch.tensor(row.last, device=device))
    cache, logits = output.past_key_values, output.logits[0]
    new: list[list[int]] = [[] for _ in sequences]
    active = list(range(len(sequences)))
    for _ in range(max_new_tokens):
        chosen = logits.float().argmax(-1).tolist()
        for sequence, token in zip(active, chosen):
            new[sequence].append(token)
        active_tokens = dict(zip(active, chosen))
        active = [s for s in active if not _finished(new[s], stop_set, long_stops, tokenizer)]
        if not active or len(new[active[0]]) == max_new_tokens:
            break
        rows = row.extend(active, [active_tokens[s] for s in active])
        output = model(input_ids=torch.tensor([[row.tokens[r] for r in rows]], device=device),
                       position_ids=torch.tensor([[row.positions[r] for r in rows]], device=device),
                       attention_mask=row.mask([row.segments[r] for r in rows], rows, additive, device),
                       past_key_values=cache, use_cache=True)
        cache, logits = output.past_key_values, output.logits[0]
    return [Generation(i, tokenizer.decode(tokens, skip_special_tokens=True), len(tokens))
            for i, tokens in zip(ids, new)]


def _finished(tokens: list[int], stop_set: set[int], long_stops: list[str], tokenizer) -> bool:
    if tokens[-1] in stop_set:
        return True
    return bool(long_stops) and any(s in tokenizer.decode(tokens[-8:]) for s in long_stops)
