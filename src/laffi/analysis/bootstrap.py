"""Percentile bootstrap intervals of a mean score: over held-out questions, or over seeds and questions.

    from laffi.analysis.bootstrap import bootstrap_interval, paired_bootstrap_difference, paired_differences_in_points
    low, high = bootstrap_interval([1.0, 0.0, 1.0, 1.0])             # per-question scores: one seed
    low, high = bootstrap_interval([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # seeds x questions
    mean, low, high = paired_bootstrap_difference(laffi_scores, sft_scores)
    paired_differences_in_points({"exact": a_exact, "f1": a_f1}, {"exact": b_exact, "f1": b_f1})
    # -> {"exact": [mean, low, high], "f1": [...]} in percentage points

One implementation serves `laffi evaluate` (one system's per-question scores), results.md (paired
differences between two systems on the same questions) and `laffi experiment` (a cell's scores under
several seeds). A draw takes seeds with replacement and, independently, held-out questions with
replacement (the same questions for every seed, since every seed is scored on the same questions),
and the interval is the percentiles of the draws' mean scores. Questions are drawn first, as
rng.integers(0, questions, size=(samples, questions)) from np.random.default_rng(seed), so a
1-D list of per-question scores, the one-seed case, gets exactly the per-question bootstrap.
With 3 seeds it is still a small-sample interval: it shows the spread that was seen, not what 30
seeds would show.

A paired difference resamples pairs, not scores: the same draws for both sides, which is tighter
and more honest than comparing two separate intervals. `paired_differences_in_points` takes it per
metric, in percentage points, wherever two systems are compared.

scipy.stats.bootstrap is not used: it has no two-level resampling, and this is a dozen lines.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

Scores = Sequence[float] | Sequence[Sequence[float]] | np.ndarray


def _grid(scores: Scores) -> np.ndarray:
    """Scores as a seeds x questions array (a 1-D list is one seed)."""
    grid = np.asarray(scores, dtype=float)
    if grid.ndim == 1:
        grid = grid[None, :]
    if grid.ndim != 2 or 0 in grid.shape:
        raise ValueError("bootstrap needs a non-empty list of per-question scores or a seeds x questions "
                         f"array of them, got shape {np.shape(scores)}")
    return grid


def bootstrap_interval(scores: Scores, samples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `scores`, in their unit: per-question scores (resampling
    questions) or seeds x questions (resampling seeds and, independently, questions)."""
    scores = _grid(scores)
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need samples >= 1 and 0 < confidence < 1, got {samples} and {confidence}")
    n_seeds, n_questions = scores.shape
    rng = np.random.default_rng(seed)
    # questions first: one seed draws what a per-question bootstrap draws
    questions = rng.integers(0, n_questions, size=(samples, n_questions))
    if n_seeds == 1:  # the per-question bootstrap's own arithmetic too: evaluate's intervals, bit for bit
        return _percentiles(scores[0][questions].mean(axis=1), confidence)
    seeds = rng.integers(0, n_seeds, size=(samples, n_seeds))
    question_weights = np.zeros((samples, n_questions))
    np.add.at(question_weights, (np.arange(samples)[:, None], questions), 1.0)
    seed_weights = np.zeros((samples, n_seeds))
    np.add.at(seed_weights, (np.arange(samples)[:, None], seeds), 1.0)
    means = np.einsum("bs,sq,bq->b", seed_weights, scores, question_weights) / (n_seeds * n_questions)
    return _percentiles(means, confidence)


def article_interval(scores: Scores, articles: Sequence[str], samples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float]:
    """Like `bootstrap_interval`, but a draw takes whole articles (every question of each drawn
    article) instead of single questions: questions of one passage are not independent. It is wider where
    articles differ more than chance spreads their questions (not always: it depends on the scores), and
    with few articles (the dev set has 3, the held-out set 9) it is itself uncertain.
    Seeds are drawn as there; a draw's mean weighs every drawn question alike."""
    scores = _grid(scores)
    n_seeds, n_questions = scores.shape
    if len(articles) != n_questions:
        raise ValueError(f"{len(articles)} article names for {n_questions} questions")
    names, group = np.unique(np.asarray(articles), return_inverse=True)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(names), size=(samples, len(names)))
    counts = np.zeros((samples, len(names)))
    np.add.at(counts, (np.arange(samples)[:, None], drawn), 1.0)
    question_weights = counts[:, group]  # each question counts as often as its article was drawn
    seeds = rng.integers(0, n_seeds, size=(samples, n_seeds))
    seed_weights = np.zeros((samples, n_seeds))
    np.add.at(seed_weights, (np.arange(samples)[:, None], seeds), 1.0)
    means = (np.einsum("bs,sq,bq->b", seed_weights, scores, question_weights)
             / (n_seeds * question_weights.sum(axis=1)))
    return _percentiles(means, confidence)


def _percentiles(means: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 50.0 * (1 - confidence)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_bootstrap_difference(a: Scores, b: Scores, samples: int = 1000, seed: int = 0,
                                confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean of a - b, low, high): resampling questions (and seeds), not scores, keeps each pair together.

    `a` and `b` are scored on the same questions (under the same seeds), in the same order."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        sizes = (len(a), len(b)) if a.ndim == b.ndim == 1 else (a.shape, b.shape)
        raise ValueError(f"paired bootstrap needs one score per question from each side, got {sizes[0]} and {sizes[1]}")
    diff = a - b
    low, high = bootstrap_interval(diff, samples, seed, confidence)
    return float(diff.mean()), low, high


def paired_differences_in_points(a: Mapping[str, Scores], b: Mapping[str, Scores], samples: int = 1000,
                                 seed: int = 0, confidence: float = 0.95) -> dict[str, list[float]]:
    """{metric: [mean, low, high]} of a - b per metric, in percentage points rounded to 2 decimals: the
    one place a paired difference between two systems is taken (results.md, run_info.json, experiments).

    `a` and `b` map each metric to its scores in [0, 1] (per question, or seeds x questions), on the
    same questions (and seeds) in the same order; every metric of `a`, in its order, each drawn with
    `seed` (`paired_bootstrap_difference`)."""
    missing = [metric for metric in a if metric not in b]
    if missing:
        raise ValueError(f"paired differences need the same metrics on both sides; b lacks {', '.join(missing)}")
    return {metric: [round(100 * v, 2) for v in paired_bootstrap_difference(a[metric], b[metric], samples, seed,
                                                                             confidence)]
            for metric in a}
