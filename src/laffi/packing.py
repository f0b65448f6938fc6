"""Shared-prefix packing: sequences that begin alike, as one row in which a common beginning runs once.

Questions of one article share the system prompt and the shots (`prompts.choose_shots`), questions on
one passage the passage too, and a LaFFi example its whole QA prompt with the SFT example of its
question. A packed row holds the sequences as a prefix tree (a trie, in depth-first order): each
shared run of tokens once, then each sequence's own rest. The block attention mask lets a token see
the tokens of its own path through the tree only (its ancestors' segments and its own segment, up to
itself), and position ids count from the sequence's own start, so every token is computed exactly as
in its own unpacked sequence, while the prefix costs one forward (and backward) pass instead of one
per sequence.

    row = pack([ids_a, ids_b])
    out = model(input_ids=row.input_ids(), position_ids=row.position_ids(),
                attention_mask=row.mask(additive=False))
    out.logits[0, row.last[0]]   # the prediction after sequence a, as model(ids_a) gives it

Answering (`backends.prefix_sharing`) prefills prompts this way and training (`stages.batches`)
runs a batch this way, both with `laffi.tree_attention`, which computes only the blocks the mask
allows (the mask itself is the definition the tests check it against).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def rows_within(sequences: list[list[int]], budget: int, joined: list[bool] | None = None) -> list[list[int]]:
    """`sequences` (sorted) cut into consecutive runs whose prefix tree holds at most `budget` tokens
    (a longer sequence alone is a run of its own): in token order a sequence adds to the tree its
    length less what it shares with the one before. `joined[k]`: sequence k stays in the run of the one
    before it (a unit of several is cut before or after, never inside; larger than the budget, it is a
    run of its own). Returns indices into `sequences`."""
    rows: list[list[int]] = []
    size, start = 0, 0
    while start < len(sequences):
        stop = start + 1
        while joined and stop < len(sequences) and joined[stop]:
            stop += 1
        inner = sum(len(sequences[k]) - common_prefix_length(sequences[k], sequences[k - 1])
                    for k in range(start + 1, stop))
        added = len(sequences[start]) - (common_prefix_length(sequences[start], sequences[start - 1]) if rows else 0)
        if not rows or size + added + inner > budget:
            rows.append([])
            size, added = 0, len(sequences[start])
        rows[-1].extend(range(start, stop))
        size += added + inner
        start = stop
    return rows


def block_mask_unsupported(model) -> str | None:
    """Why `model` cannot run a packed row (None if it can). `laffi.tree_attention` replaces the model's
    attention function with plain scaled dot-product attention over the row's segments, whatever the
    model's attention implementation; what it does not reproduce is attention that is not plain."""
    config = model.config
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) is not False:
        return "sliding-window attention, which tree attention does not reproduce"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping, which tree attention does not reproduce"
    return None


_SAID: set[tuple[str, str]] = set()  # fallbacks already reported in this process


def can_pack(model, option: str, fallback: str, say=print) -> bool:
    """Whether `model` can run packed rows; if not, `say` once per process that `option` is off for it,
    why, and what runs instead (`fallback`)."""
    unsupported = block_mask_unsupported(model)
    if unsupported and (option, unsupported) not in _SAID:
        _SAID.add((option, unsupported))
        say(f"{option}: off for this model ({unsupported}); {fallback}")
    return unsupported is None


@dataclass
class PackedRow:
    """A prefix tree of token sequences laid out in one row.

    Every token belongs to a segment; segment s spans [enter[s], leave[s]) in depth-first numbering, so
    segment a is on the path to segment b exactly when enter[a] <= enter[b] < leave[a].
    """

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # each token's index in its own sequence
    segments: list[int] = field(default_factory=list)  # each token's segment
    enter: list[int] = field(default_factory=list)
    leave: list[int] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)  # per sequence: the row index of each of its tokens
    last: list[int] = field(default_factory=list)  # per sequence: the row index of its last token

    def input_ids(self, device=None) -> torch.Tensor:
        return torch.tensor([self.tokens], device=device)

    def position_ids(self, device=None) -> torch.Tensor:
        return torch.tensor([self.positions], device=device)

    def mask(self, additive: bool, device=None) -> torch.Tensor:
        """The 4D mask (1, 1, tokens, tokens): True where a token may attend (what SDPA takes), or with
        `additive` 0 there and -inf elsewhere in fp32 (what eager attention adds to its scores, in any
        compute dtype)."""
        enter = torch.tensor(self.enter, device=device)[torch.tensor(self.segments, device=device)]
        leave = torch.tensor(self.leave, device=device)[torch.tensor(self.segments, device=device)]
        on_path = (enter[None, :] <= enter[:, None]) & (enter[:, None] < leave[None, :])
        allowed = torch.tril(on_path)[None, None]  # and causal: no token sees one after it
        if not additive:
            return allowed
        return torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)


def pack(sequences: list[list[int]]) -> PackedRow:
    """Lay `sequences` out as a prefix tree in one row (see PackedRow); equal sequences share all of it."""
    if any(not s for s in sequences):
        raise ValueError("pack: a sequence is empty")
    row = PackedRow(paths=[[] for _ in sequences], last=[0] * len(sequences))
    order = sorted(range(len(sequences)), key=lambda i: sequences[i])  # shared beginnings are neighbours
    counter = 0

    def new_segment() -> int:
        nonlocal counter
        row.enter.append(counter)
        row.leave.append(-1)
        counter += 1
        return len(row.enter) - 1

    def close(segment: int) -> None:
        nonlocal counter
        row.leave[segment] = counter
        counter += 1

    def place(members: list[int], depth: int) -> None:
        """The subtree of `members` (sorted, sharing their first `depth` tokens), below the current node."""
        first, final = sequences[members[0]], sequences[members[-1]]
        shared = common_prefix_length(first, final)  # of a sorted run: that of its first and last
        segment = new_segment()
        begin = len(row.tokens)
        for position in range(depth, shared):
            row.tokens.append(first[position])
            row.positions.append(position)
            row.segments.append(segment)
        for m in members:
            row.paths[m].extend(range(begin, len(row.tokens)))
        ended = [m for m in members if len(sequences[m]) == shared]
        for m in ended:  # these end here: their prediction is this segment's last token
            row.last[m] = len(row.tokens) - 1
        rest = [m for m in members if len(sequences[m]) > shared]
        start = 0
        while start < len(rest):  # children: runs with the same next token
            token = sequences[rest[start]][shared]
            stop = start
            while stop < len(rest) and sequences[rest[stop]][shared] == token:
                stop += 1
            place(rest[start:stop], shared)
            start = stop
        close(segment)

    if sequences:
        place(order, 0)
    return row
