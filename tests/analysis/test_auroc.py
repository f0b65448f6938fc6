"""The AUROC against a brute-force count over every positive-negative pair."""

import random

import pytest

from laffi.analysis.auroc import auroc


def brute_auroc(scores, positives):
    pairs = [(p, n) for p, lp in zip(scores, positives) if lp for n, ln in zip(scores, positives) if not ln]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs) if pairs else None


def test_auroc_on_hand_cases_with_ties():
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5  # all tied
    # positives 0.4 and 0.8 against negatives 0.1 and 0.4: 1 + 0.5 (the tie) + 1 + 1 of 4 pairs
    assert auroc([0.1, 0.4, 0.4, 0.8], [False, True, False, True]) == 0.875
    assert auroc([0.3, 0.7], [True, True]) is None and auroc([], []) is None
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 12)
        scores = [rng.choice([0.1, 0.2, 0.3, 0.5]) for _ in range(n)]  # many ties
        positives = [rng.random() < 0.4 for _ in range(n)]
        assert auroc(scores, positives) == pytest.approx(brute_auroc(scores, positives), abs=1e-12) \
            if brute_auroc(scores, positives) is not None else auroc(scores, positives) is None
