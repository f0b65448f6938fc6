"""How well raters agree on verdicts: percent agreement and Cohen's kappa, between every two
annotators, or sources, that judged the same answers (`laffi stats`).

    from laffi.analysis.agreement import cohen_kappa, percent_agreement, stats
    percent_agreement(["correct", "incorrect"], ["correct", "correct"])   # 50.0
    cohen_kappa(human_verdicts, ai_verdicts)
    result = stats("runs/demo")           # every feedback*.jsonl of the run; writes runs/demo/stats.json

    laffi stats runs/demo
    laffi stats runs/demo --files feedback.jsonl feedback-llm.jsonl human.jsonl

`percent_agreement` and `cohen_kappa` take two equally long lists, position i of each being the
two raters' labels for item i (any hashable labels; laffi uses the verdicts of
`laffi.records.VERDICTS`). A rater's labels are a mapping item -> label; `shared` lines up two
raters' labels on the items both judged, and `rater_pairs` does so for every two raters of a group
(laffi.human.exchange reports people's agreement with it too).

For `laffi stats`, a rater is an annotator (`Feedback.annotator`: "reference",
"llm:gpt-4o:feedback-v1", a person), and also a whole source ("source:human", "source:ai") where it
has more than one annotator; a source's verdict on an answer is its annotators' majority, and
answers where they tie are left out. Two records are about the same answer when question id and
answer text are equal, whatever their sample (generate.samples): two sampled answers with the same
words are one answer to judge, and a rater's verdict on it counts once (the first). For each pair
of raters that share answers: how many, percent agreement,
Cohen's kappa and the confusion table. laffi.report.tables renders the result as tables.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Hashable, Iterator, Mapping, Sequence, TypeVar

from laffi.layout import RunLayout
from laffi.records import VERDICTS, Feedback, read_records, write_json

Item = TypeVar("Item")
Label = TypeVar("Label", bound=Hashable)
Key = tuple[str, str]  # (question id, answer)


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


def scores(a: Sequence[Hashable], b: Sequence[Hashable]) -> dict:
    """{"n": items, "percent": percent_agreement, "kappa": cohen_kappa (NaN when undefined)}."""
    return {"n": len(a), "percent": percent_agreement(a, b), "kappa": cohen_kappa(a, b)}


def confusion(a: Sequence[str], b: Sequence[str], labels: Sequence[str] = VERDICTS) -> dict[str, dict[str, int]]:
    """How often rater a said label (row) where rater b said label (column)."""
    return {la: {lb: sum(1 for x, y in zip(a, b) if (x, y) == (la, lb)) for lb in labels} for la in labels}


def shared(a: Mapping[Item, Label], b: Mapping[Item, Label]) -> tuple[list[Label], list[Label]]:
    """Two raters' labels on the items both judged, item by item (in sorted item order)."""
    items = sorted(set(a) & set(b))
    return [a[i] for i in items], [b[i] for i in items]


def rater_pairs(groups: Mapping[str, Mapping[Item, Label]], pools: Mapping[str, set[str]] | None = None,
                ) -> Iterator[tuple[str, str, list[Label], list[Label]]]:
    """(a, b, a's labels, b's labels) for every two raters, by name, that judged items in common;
    a rater of `pools` (a source pooling annotators) is not paired with its own annotators."""
    pools = pools or {}
    for a, b in combinations(sorted(groups), 2):
        if b in pools.get(a, ()) or a in pools.get(b, ()):
            continue  # a source against one of its own annotators agrees with itself
        x, y = shared(groups[a], groups[b])
        if x:
            yield a, b, x, y


# --- `laffi stats` --------------------------------------------------------------------------------

def raters(records: list[Feedback]) -> tuple[dict[str, dict[Key, str]], dict[str, set[str]]]:
    """Each rater's verdict per answer (annotators, then sources that pool several annotators), and
    each pooled source's annotators."""
    by_annotator: dict[str, dict[Key, str]] = defaultdict(dict)
    votes: dict[str, dict[Key, Counter]] = defaultdict(lambda: defaultdict(Counter))
    members: dict[str, set[str]] = defaultdict(set)
    for record in records:
        key = (record.id, " ".join(record.answer.split()))
        members[record.source].add(record.annotator)
        if key in by_annotator[record.annotator]:
            continue  # the first counts, if a file repeats one (or samples repeat an answer): one vote a person
        by_annotator[record.annotator][key] = record.verdict
        votes[record.source][key][record.verdict] += 1
    groups, pools = dict(by_annotator), {}
    for source, items in votes.items():
        if len(members[source]) < 2:
            continue  # one annotator: the same rater again
        pooled = {}
        for key, counts in items.items():
            (top, n), *rest = counts.most_common()
            if not rest or rest[0][1] < n:
                pooled[key] = top
        groups[f"source:{source}"] = pooled
        pools[f"source:{source}"] = members[source]
    return groups, pools


def pairwise(groups: dict[str, dict[Key, str]], pools: dict[str, set[str]] | None = None) -> list[dict]:
    """stats.json's "pairs": a, b, answers, agreement (percent), kappa (None when undefined), confusion."""
    rows = []
    for a, b, x, y in rater_pairs(groups, pools):
        score = scores(x, y)
        rows.append({"a": a, "b": b, "answers": score["n"], "agreement": round(score["percent"], 2),
                     "kappa": None if math.isnan(score["kappa"]) else round(score["kappa"], 4),
                     "confusion": confusion(x, y)})
    return rows


def stats(run_dir: str | Path, files: list[str | Path] | None = None) -> dict:
    """Agreement among the raters of RUN's feedback files (default every feedback*.jsonl but the
    .failed ones); writes RUN/stats.json. RUN must be a run directory (`RunLayout.existing`)."""
    layout = RunLayout.existing(run_dir)
    paths = [layout.root / f for f in files] if files else layout.feedback_files()
    if not paths:
        raise FileNotFoundError(f"{layout.root}: no feedback*.jsonl files (run `laffi annotate` first)")
    records = [r for path in paths for r in read_records(path, Feedback)]
    groups, pools = raters(records)
    result = {"files": [str(p) for p in paths],
              "raters": {name: dict(Counter(verdicts.values())) for name, verdicts in groups.items()},
              "pairs": pairwise(groups, pools)}
    write_json(layout.stats, result)
    return result
