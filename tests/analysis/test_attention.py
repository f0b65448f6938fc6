"""Attention metrics on hand-built attention matrices whose entropy and distance are known, and the
gold answer span found in a real prompt's tokens.

    python -m pytest tests/analysis/test_attention.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from laffi.analysis.attention import answer_span, head_metrics
from laffi.records import QAExample


def causal_uniform(n: int) -> torch.Tensor:
    """Row i spreads its attention evenly over keys 0..i."""
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]


def heads() -> torch.Tensor:
    n = 4
    on_self = torch.eye(n)  # perfectly local
    on_first = torch.zeros(n, n)
    on_first[:, 0] = 1.0  # everything on the first token: global
    half = 0.5 * torch.eye(n) + 0.5 * on_first  # split between itself and the first token
    half[0, 0] = 1.0  # (row 0 has only itself)
    return torch.stack([causal_uniform(n), on_self, on_first, half])


def test_entropy_distance_and_local_share_of_known_heads():
    metrics = head_metrics(heads(), span=(1, 3), window=1)
    # uniform over i+1 keys: entropy log(i+1), distance i/2
    assert metrics["entropy"] == pytest.approx([np.mean([math.log(k) for k in (1, 2, 3, 4)]), 0.0, 0.0,
                                                np.mean([0, math.log(2), math.log(2), math.log(2)])])
    assert metrics["distance"] == pytest.approx([np.mean([0, 0.5, 1, 1.5]), 0.0, np.mean([0, 1, 2, 3]),
                                                 np.mean([0, 0.5, 1, 1.5])])
    # within 1 token back: uniform row i keeps min(i+1, 2)/(i+1); first-token head only rows 0 and 1
    assert metrics["local_share"] == pytest.approx([np.mean([1, 1, 2 / 3, 0.5]), 1.0, 0.5,
                                                    np.mean([1, 1, 0.5, 0.5])])
    # the last query's mass on tokens 1..2
    assert metrics["gold_mass"] == pytest.approx([0.5, 0.0, 0.0, 0.0])


def test_longer_range_means_larger_distance_and_zero_probabilities_are_fine():
    n = 12
    local, spread = torch.eye(n)[None], causal_uniform(n)[None]
    assert head_metrics(local, (0, 1), 2)["distance"][0] == 0.0
    assert head_metrics(spread, (0, 1), 2)["distance"][0] == pytest.approx((n - 1) / 4)
    assert np.isfinite(head_metrics(local, (0, 1), 2)["entropy"]).all()  # 0 log 0 counts as 0
    with pytest.raises(ValueError, match="heads x queries x keys"):
        head_metrics(torch.ones(3, 4), (0, 1), 2)


def test_the_gold_span_is_found_in_the_questions_own_passage(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    shot = "Passage: Paris is the capital of France.\n\nQuestion: What is the capital of France?\nAnswer: Paris\n\n"
    example = QAExample("q", "T", "The tower stands in Paris, near the Seine river.", "Where?", ["the Seine river"])
    text = shot + f"Passage: {example.context}\n\nQuestion: {example.question}\nAnswer:"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start, end = answer_span(text, encoded["offset_mapping"], example)
    assert tokenizer.decode(encoded["input_ids"][start:end]).strip() == "the Seine river"
    assert encoded["offset_mapping"][start][0] > text.index("The tower")  # not in the few-shot passage
    missing = QAExample("q", "T", example.context, "Where?", ["London"])
    assert answer_span(text, encoded["offset_mapping"], missing) is None
