"""What a training step computes on: tokenized examples, the order of batches, a batch as padded rows
or as one packed row, and the completion-only loss.

    rows = tokenize(tokenizer, examples, max_seq_len=1024)
    batches = batch_order(rows, batch_size=4, num_batches=32, seed=0, group_by="prefix")
    loss = loss_sum(model, [rows[i] for i in batches[0]], pad_id, device, packed=True)

By default (`train.group_by=prefix`, `train.pack=true`) a batch is mostly one article's examples
(`family_batch_order`) and runs as one packed row (`laffi.packing`, attended segment by segment by
`laffi.tree_attention`): the system prompt and shots they share, and a passage two questions share,
run forward and backward once per step instead of once per example, with the loss and gradients of
the same batch unpacked (tests/stages/test_completion_loss.py; without LoRA dropout: with it, a
shared prefix draws one dropout mask for all the examples that share it, not one each).
"""

from __future__ import annotations

import random

import torch

from laffi.cross_entropy import IGNORE, summed_cross_entropy, token_cross_entropy  # IGNORE: the label the loss skips
from laffi.packing import common_prefix_length, pack, rows_within
from laffi.prompts import prompt_completion_ids
from laffi.records import TrainingExample
from laffi.tree_attention import NAME, TreeSpans

Row = tuple[list[int], list[int]]  # input ids, labels (IGNORE on the prompt)


def tokenize(tokenizer, examples: list[TrainingExample], max_seq_len: int) -> list[Row]:
    """(input_ids, labels) per example; prompt positions are masked by count, not by text search.

    Too-long examples lose prompt tokens from the left, so the completion is trained on, all of it unless it
    alone is longer than max_seq_len - 1: at least one prompt token stays, since a completion's first token
    is predicted from the token before it (without one, a row of max_seq_len=1 had nothing to learn).
    """
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2 (a prompt token and a completion token), got {max_seq_len}")
    rows = []
    for example in examples:
        prompt, completion = prompt_completion_ids(tokenizer, example.prompt, example.completion)
        completion = completion[:max_seq_len - 1]
        prompt = prompt[len(prompt) - (max_seq_len - len(completion)):] if len(prompt) + len(completion) > max_seq_len else prompt
        rows.append((prompt + completion, [IGNORE] * len(prompt) + completion))
    return rows


def batch_order(rows: list[Row], batch_size: int, num_batches: int, seed: int,
                group_by: str = "length") -> list[list[int]]:
    """A fixed sequence of batches; it depends only on the data and the seed, so a resumed run sees the
    same batches. group_by="length": shuffled each epoch, grouped by length to avoid padding waste;
    "prefix": grouped by shared prefix (`family_batch_order`)."""
    if not rows:
        raise ValueError("no rows to draw batches from")
    if group_by == "prefix":
        return family_batch_order([ids for ids, _ in rows], batch_size, num_batches, seed)
    lengths = [len(ids) for ids, _ in rows]
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < num_batches:
        rng = random.Random(seed * 1_000_003 + epoch)
        order = list(range(len(lengths)))
        rng.shuffle(order)
        group = batch_size * 16  # sort within groups: similar lengths, still random across groups
        epoch_batches = []
        for start in range(0, len(order), group):
            chunk = sorted(order[start:start + group], key=lambda i: lengths[i])
            epoch_batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch_batches)
        batches += epoch_batches
        epoch += 1
    return batches[:num_batches]


def completion_tokens(row: Row) -> int:
    """The tokens of a row the loss scores (a label after the first position)."""
    return sum(label != IGNORE for label in row[1][1:])


def collate(rows: list[Row], pad_id: int, device: torch.device, weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    batch = {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows], device=device),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=device),
        "labels": torch.tensor([labels + [IGNORE] * (width - len(labels)) for _, labels in rows], device=device),
    }
    if weights is not None:
        batch["weights"] = torch.tensor(weights, device=device)
    return batch


def completion_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy of the next-token predictions on completion tokens.

    The LM head runs only on the positions whose next token is a label: with a 49k vocabulary the
    head is a fifth of the forward FLOPs, and its fp32 logits over whole prompts dominated memory.
    `logits_to_keep` (a boolean mask: transformers flattens the kept rows) goes through the model's
    own forward, so PEFT, DDP, FSDP and DeepSpeed wrappers see an ordinary call.

    No padding mask: `collate` pads on the right, and under the causal mask a real token never
    attends to the padding after it, so the mask would change nothing that reaches the loss.
    Without it SDPA runs its causal kernel; with it, transformers repeats K/V for every query head
    (GQA) and the step took 1.8 GB more on the embedded model at batch 4 x ~570 tokens.
    """
    logits, kept = completion_logits(model, batch)
    weights = batch["weights"][:, None].expand_as(kept)[kept] if "weights" in batch else None
    return summed_cross_entropy(logits, batch["labels"][:, 1:][kept], weights)


def completion_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict a padded batch's (`collate`) completion tokens, one row per token in label
    order, and where those tokens are in `labels[:, 1:]` (a boolean mask)."""
    kept = batch["labels"][:, 1:] != IGNORE
    # position t predicts token t + 1
    logits = model(input_ids=batch["input_ids"], use_cache=False,
                   logits_to_keep=torch.nn.functional.pad(kept, (0, 1))).logits
    if logits.ndim == 3:  # a model without logits_to_keep computed every position
        logits = logits[:, :-1][kept]
    return logits, kept


def families(sequences: list[list[int]]) -> list[list[int]]:
    """Indices of `sequences` grouped by what they share beyond what all of them share: for QA prompts,
    one group per article (its shots), or per passage without shots. Groups and members in token order."""
    order = sorted(range(len(sequences)), key=lambda i: sequences[i])
    if not order:
        return []
    first, final = sequences[order[0]], sequences[order[-1]]
    common = common_prefix_length(first, final)
    groups: dict[int | None, list[int]] = {}
    for i in order:  # the first token after the common part names the branch of the prefix tree
        groups.setdefault(sequences[i][common] if len(sequences[i]) > common else None, []).append(i)
    return list(groups.values())


def family_batch_order(sequences: list[list[int]], batch_size: int, num_batches: int, seed: int) -> list[list[int]]:
    """Batches that share prefixes: each epoch shuffles the families and the examples inside each, lays
    them end to end and cuts batches; the batches are then shuffled. So a batch is mostly one article,
    and which of its questions go together changes from epoch to epoch."""
    groups = families(sequences)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < num_batches:
        rng = random.Random(seed * 1_000_003 + epoch)
        shuffled = [rng.sample(group, len(group)) for group in rng.sample(groups, len(groups))]
        flat = [i for group in shuffled for i in group]
        epoch_batches = [flat[k:k + batch_size] for k in range(0, len(flat), batch_size)]
        rng.shuffle(epoch_batches)
        batches += epoch_batches
        epoch += 1
    return batches[:num_batches]


def pack_rows(rows: list[Row], device: torch.device, weights: list[float] | None = None) -> dict:
    """A batch as one packed row: input ids, position ids, its segments, and for every completion token
    the row position that predicts it (`predict_at`, a position a shared prefix may hold for several),
    the row it belongs to (`owners`) and, with `weights` (one per row), its weight."""
    row = pack([ids for ids, _ in rows])
    predict_at, targets, owners, token_weights = [], [], [], []
    for owner, (path, (ids, labels), weight) in enumerate(zip(row.paths, rows, weights or [1.0] * len(rows))):
        for k in range(1, len(ids)):
            if labels[k] != IGNORE:
                predict_at.append(path[k - 1])
                targets.append(labels[k])
                owners.append(owner)
                token_weights.append(weight)
    batch = {"input_ids": row.input_ids(device), "position_ids": row.position_ids(device),
             "packed_tree": TreeSpans.of(row, device), "predict_at": torch.tensor([predict_at], device=device),
             "targets": torch.tensor(targets, device=device), "owners": torch.tensor(owners, device=device)}
    if weights is not None:
        batch["weights"] = torch.tensor(token_weights, device=device)
    return batch


def packed_part_indices(rows: list[Row], budget: int, units: list[int] | None = None) -> list[list[int]]:
    """A batch cut into packed rows of at most `budget` tokens each (one row if it fits), as indices into
    `rows`; their summed losses are the batch's. `units`: one key per row; the rows of a key are never cut
    apart (a preference pair's DPO loss needs both its log-probs in one graph), and a unit larger than the
    budget is a row of its own. Units are laid out by their first sequence, so a unit's rows, which share
    their prompt, are neighbours; where that order is not the sorted one, each sequence's share with the
    one before it undercounts what it shares in the tree, so a row's counted size is at least its size."""
    if units is None:
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])
        return [[order[k] for k in run] for run in rows_within([rows[i][0] for i in order], budget)]
    first: dict[int, list[int]] = {}
    for unit, (ids, _) in zip(units, rows):
        first[unit] = min(first.get(unit, ids), ids)
    order = sorted(range(len(rows)), key=lambda i: (first[units[i]], units[i], rows[i][0]))
    joined = [k > 0 and units[order[k]] == units[order[k - 1]] for k in range(len(order))]
    return [[order[k] for k in run] for run in rows_within([rows[i][0] for i in order], budget, joined)]


def packed_parts(rows: list[Row], budget: int) -> list[list[Row]]:
    """`packed_part_indices` as the rows themselves."""
    return [[rows[i] for i in part] for part in packed_part_indices(rows, budget)]


def packed_logits(model, batch: dict) -> torch.Tensor:
    """The logits that predict the completion tokens of a packed row (`pack_rows`), one row per target; the
    LM head runs only at those positions. Run it, and its backward, inside `tree_attention(model)`."""
    if unwrapped(model).config._attn_implementation != NAME:  # else the row would attend across sequences
        raise RuntimeError("a packed row runs (with its backward) inside laffi.tree_attention.tree_attention")
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], packed_tree=batch["packed_tree"],
                   use_cache=False, logits_to_keep=batch["predict_at"]).logits
    if logits.shape[1] != batch["targets"].shape[0]:  # a model without logits_to_keep computed every position
        logits = logits[:, batch["predict_at"][0]]
    return logits.squeeze(0)  # not logits[0]: its backward would zero-fill a (1, targets, vocab) gradient first


def packed_loss_sum(model, batch: dict) -> torch.Tensor:
    """Summed cross-entropy of the completion tokens of a packed row (`pack_rows`). Run it, and its
    backward, inside `tree_attention(model)`."""
    return summed_cross_entropy(packed_logits(model, batch), batch["targets"], batch.get("weights"))


def sequence_logps(model, rows: list[Row], pad_id: int, device: torch.device, packed: bool) -> torch.Tensor:
    """Each row's completion log-probability, summed over its completion tokens, in fp32 (what DPO compares):
    one forward of `rows` as one packed row (inside `tree_attention(model)`) or as padded rows, the LM head
    only where a completion token is predicted, as `loss_sum` runs them; minus its summed cross-entropy."""
    if packed:
        batch = pack_rows(rows, device)
        logits, targets, owners = packed_logits(model, batch), batch["targets"], batch["owners"]
    else:
        batch = collate(rows, pad_id, device)
        logits, kept = completion_logits(model, batch)
        targets, owners = batch["labels"][:, 1:][kept], kept.nonzero()[:, 0]
    token_logps = -token_cross_entropy(logits, targets)
    return torch.zeros(len(rows), device=token_logps.device).index_add(0, owners, token_logps)


def unwrapped(model):
    """The model inside DDP's and DeepSpeed's wrappers (they hold it as .module); PEFT's shares its config."""
    return getattr(model, "module", model)


def loss_sum(model, rows: list[Row], pad_id: int, device: torch.device, packed: bool,
             weights: list[float] | None = None) -> torch.Tensor:
    """The summed completion loss of `rows` as one batch: one packed row, or padded rows. `weights`: one
    per row, multiplying its tokens' losses (None: all 1, summed as such)."""
    if packed:
        return packed_loss_sum(model, pack_rows(rows, device, weights))
    return completion_loss_sum(model, collate(rows, pad_id, device, weights))

