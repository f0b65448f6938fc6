"""Greedy decoding with shared prefixes computed once: a batch of prompts is one packed row.
The prompts `sampling` names (laffi.backends.sampling) are sampled instead, each from its own stream;
K samples of one question are K equal prompts, neighbours in token order, whose prompt runs once.

    for batch in shared_prefix_generate(model, tokenizer, {"q1": ids, "q2": ids2}, batch_size=16,
                                        max_new_tokens=24):
        ...   # a list of Generation, as soon as each batch is done

Prompts are taken in token order, so questions of one article (same system prompt and shots) and
of one passage fall into one batch; `laffi.packing` lays neighbours out as a prefix tree in one row,
whose shared parts run once, reading the LM head at each prompt's last token only (never the whole
vocabulary over the prompt). The rows' keys and values are then regathered into one padded row per
prompt (its own path through the tree) in a static cache, and decoding steps one token per row as a
padded batch does. The answers are those of each prompt decoded alone; tests compare them with
`greedy_generate` on the same prompts.
"""

from __future__ import annotations

from typing import Hashable, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StaticCache

from laffi.backends.local import Generation, stop_tokens
from laffi.backends.sampling import Sampling, Streams
from laffi.packing import pack, rows_within
from laffi.tree_attention import TreeSpans, tree_attention


# Tokens of one packed prefill row, at most (unless one prompt is longer): decoding is cheapest in
# large batches, while a row's activations (and, before segment-wise attention, its block mask) grow
# with it, so a batch of generate.batch_size prompts is prefilled in rows of neighbours up to this size.
PREFILL_TOKENS = 2048


@torch.inference_mode()
def shared_prefix_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                           prompts: dict[Hashable, list[int]], batch_size: int, max_new_tokens: int,
                           stop_strings: list[str] | None = None,
                           sampling: Sampling | None = None) -> Iterator[list[Generation]]:
    """Greedy decoding of `prompts` (those `sampling` names: sampled) in batches of neighbours in token
    order; yields each batch when done."""
    stops, long_stops = stop_tokens(model, tokenizer, stop_strings)
    order = sorted(prompts, key=lambda i: prompts[i])
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        sequences = [prompts[i] for i in ids]
        logits, cache, padding = _prefill(model, sequences, max_new_tokens, device)
        new = _decode(model, tokenizer, logits, cache, padding, [len(s) for s in sequences], max_new_tokens,
                      set(stops), long_stops, Streams(sampling, ids))
        yield [Generation(i, tokenizer.decode(tokens, skip_special_tokens=True), len(tokens))
               for i, tokens in zip(ids, new)]


def _prefill(model, sequences: list[list[int]], max_new_tokens: int, device):
    """Run the prompts as packed rows; returns the logits after each prompt, a static cache holding each
    prompt's own keys and values as one left-padded row (room for `max_new_tokens` more), and the padding
    mask. Decoding then steps one token per row, the way a padded batch does, never attending over
    other prompts' tokens."""
    width = max(len(s) for s in sequences)
    logits, states = [], []
    for members in rows_within(sequences, PREFILL_TOKENS):
        row = pack([sequences[m] for m in members])
        with tree_attention(model):
            output = model(input_ids=row.input_ids(device), position_ids=row.position_ids(device),
                           packed_tree=TreeSpans.of(row, device), use_cache=True,
                           logits_to_keep=torch.tensor(row.last, device=device))
        logits.append(output.logits[0])
        # each prompt's path through the tree, left-padded to the batch's longest prompt
        index = torch.tensor([[path[0]] * (width - len(path)) + path for path in row.paths], device=device)
        states.append([tuple(t[0][:, index].transpose(0, 1) for t in (layer.keys, layer.values))
                       for layer in output.past_key_values.layers])
    cache = StaticCache(config=model.config, max_cache_len=width + max_new_tokens)
    for number in range(len(states[0])):
        keys, values = (torch.cat([chunk[number][k] for chunk in states]) for k in (0, 1))
        cache.update(keys.contiguous(), values.contiguous(), number)
    padding = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    return torch.cat(logits), cache, padding


def _decode(model, tokenizer, logits: torch.Tensor, cache, padding: torch.Tensor, lengths: list[int],
            max_new_tokens: int, stop_set: set[int], long_stops: list[str], streams: Streams) -> list[list[int]]:
    positions = torch.tensor([[n] for n in lengths], device=padding.device)
    new: list[list[int]] = [[] for _ in lengths]
    active = set(range(len(lengths)))
    for step in range(max_new_tokens):
        chosen = streams.pick(logits, sorted(active))  # a finished row draws nothing more from its stream
        for sequence in sorted(active):
            new[sequence].append(int(chosen[sequence]))
        active = {s for s in active if not _finished(new[s], stop_set, long_stops, tokenizer)}
        if not active or step == max_new_tokens - 1:
            break
        # every row steps on (a finished one's tokens are dropped), as padded batches do
        padding = torch.cat([padding, torch.ones_like(positions)], dim=1)
        output = model(input_ids=chosen[:, None], attention_mask=padding, position_ids=positions,
                       past_key_values=cache, use_cache=True)
        logits, positions = output.logits[:, -1], positions + 1
    return new


def _finished(tokens: list[int], stop_set: set[int], long_stops: list[str], tokenizer) -> bool:
    if tokens[-1] in stop_set:
        return True
    return bool(long_stops) and any(s in tokenizer.decode(tokens[-8:]) for s in long_stops)
