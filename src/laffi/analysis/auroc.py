"""How well a score tells positives from negatives: the area under the ROC curve, ties counted one half.

    from laffi.analysis.auroc import auroc
    auroc([0.1, 0.4, 0.4, 0.8], [False, True, False, True])  # 0.875
    auroc([0.3, 0.7], [True, True])                            # None: no negative

The verifier check (laffi.experiments.verdict_check) and reranking (laffi.experiments.rerank) report
it for a model's predicted verdict and for its own likelihood over right and wrong answers.
"""

from __future__ import annotations

from typing import Sequence


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` for `positives`: the probability that a random positive scores
    above a random negative, a tie counting one half (the Mann-Whitney U statistic over n_pos x n_neg,
    from average ranks). None without both a positive and a negative."""
    if len(scores) != len(positives):
        raise ValueError(f"auroc: {len(scores)} scores for {len(positives)} labels")
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):  # a run of equal scores shares the mean of its ranks (1-based)
        stop = start + 1
        while stop < len(order) and scores[order[stop]] == scores[order[start]]:
            stop += 1
        for k in range(start, stop):
            ranks[order[k]] = (start + 1 + stop) / 2
        start = stop
    n_pos = sum(map(bool, positives))
    n_neg = len(positives) - n_pos
    if not n_pos or not n_neg:
        return None
    u = sum(rank for rank, positive in zip(ranks, positives) if positive) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)
