"""Agreement between two raters' verdicts on the same items: percent agreement and Cohen's kappa.

    from laffi.analysis.agreement import cohen_kappa, percent_agreement
    percent_agreement(["correct", "incorrect"], ["correct", "correct"])   # 50.0
    cohen_kappa(human_verdicts, ai_verdicts)

Both take two equally long lists, position i of each being the two raters' labels for item i
(any hashable labels; laffi uses the verdicts of `laffi.records.VERDICTS`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Sequence


def _check(a: Sequence[Hashable], b: Sequence[Hashable]) -> None:
    if len(a) != len(b):
        raise ValueError(f"agreement needs paired labels: got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("agreement needs at least one pair of labels")


def percent_agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """The share of items on which both raters gave the same label, in percent (0 to 100)."""
    _check(a, b)
    return 100.0 * sum(x == y for x, y in zip(a, b)) / len(a)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa: (p_o - p_e) / (1 - p_e), p_e from each rater's own label frequencies.

    1 is perfect agreement, 0 what chance alone gives, negative worse than chance. NaN when it is
    undefined: both raters used one and the same label throughout (p_e = 1), as scikit-learn does.
    """
    _check(a, b)
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[label] * count_b[label] for label in count_a) / (n * n)
    if math.isclose(expected, 1.0):
        return math.nan
    return (observed - expected) / (1.0 - expected)
