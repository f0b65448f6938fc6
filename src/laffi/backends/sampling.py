"""Sampled answers that do not depend on their batch: each sequence draws from a random stream of its own.

    sampling = Sampling(temperature=0.7, seeds={("q1", 1): stream_seed(0, "q1", 1)})
    streams = Streams(sampling, keys)          # keys: the prompt of each row of a batch, in row order
    tokens = streams.pick(logits, rows)        # the next token of those rows

A prompt whose key is in `sampling.seeds` is sampled; every other prompt is decoded greedily, exactly
as before (the argmax of its logits, untouched). A sampled row takes the Gumbel-max of its logits:
argmax(logits / temperature + g), g drawn from its own torch.Generator, seeded by a SHA-256 of
(seed, question id, sample) and on the CPU whatever the device, which is a draw from
softmax(logits / temperature). Its stream advances one vocabulary-sized draw per token it generates
and nothing else does, so the same (question, sample) gets the same answer in any batch, on any
engine that decodes with this, and after a resume: exactly so in fp32; in bf16 a batch's
composition rounds the logits differently, which can move a sampled answer as it can move a
greedy one (laffi.backends.feedback_guided measured that for greedy answers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Hashable

import torch


def stream_seed(seed: int, question_id: str, sample: int) -> int:
    """The seed of one answer's random stream: stable across processes and runs (not Python's hash)."""
    digest = hashlib.sha256(f"{seed}:{question_id}:{sample}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: what torch's and servers' seeds take


@dataclass(frozen=True)
class Sampling:
    """Which prompts are sampled (by key), each with the seed of its stream, and at what temperature."""

    temperature: float
    seeds: dict[Hashable, int]


class Streams:
    """The random streams of one batch's rows (None for a greedy row)."""

    def __init__(self, sampling: Sampling | None, keys: list[Hashable]) -> None:
        seeds = sampling.seeds if sampling else {}
        self.temperature = sampling.temperature if sampling else 1.0
        self.generators = [torch.Generator().manual_seed(seeds[k]) if k in seeds else None for k in keys]

    @property
    def any(self) -> bool:
        return any(g is not None for g in self.generators)

    def perturb(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """`logits` (one row per batch row) in float32, each sampled row among `rows` replaced by scores
        whose argmax is its draw (its logits / temperature + its Gumbel noise, in float64 on the CPU);
        greedy rows as they came."""
        scores = logits.float()
        sampled = [r for r in rows if self.generators[r] is not None]
        if not sampled:
            return scores
        # float64 uniforms: none is 0 in practice, and the clamp keeps the logs finite if one were
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=self.generators[r], dtype=torch.float64)
                               for r in sampled]).clamp_(min=torch.finfo(torch.float64).tiny)
        noisy = scores[sampled].double().cpu() / self.temperature - torch.log(-torch.log(uniform))
        # the drawn token as the row's only finite score: no rounding of the noisy scores to float32 can move
        # an argmax taken later (here, or by transformers' generate)
        index = torch.tensor(sampled, device=scores.device)
        scores = scores.clone()
        scores[index] = float("-inf")
        scores[index, noisy.argmax(-1).to(scores.device)] = 0.0
        return scores

    def pick(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The next token of every row: the argmax, after `perturb` for the sampled ones among `rows`."""
        return self.perturb(logits, rows).argmax(-1)

