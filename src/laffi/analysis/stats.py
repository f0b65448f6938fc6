"""How well annotators agree: verdict agreement between every two annotators, or sources, that
judged the same answers.

    laffi stats runs/demo                                      # every feedback*.jsonl of the run
    laffi stats runs/demo --files feedback.jsonl feedback-llm.jsonl human.jsonl

A rater is an annotator (`Feedback.annotator`: "reference", "llm:gpt-4o:feedback-v1", a person), and
also a whole source ("source:human", "source:ai") where it has more than one annotator; a source's
verdict on an answer is its annotators' majority, and answers where they tie are left out. Two
records are about the same answer when question id and answer text are equal. For each pair of
raters that share answers: how many, percent agreement and Cohen's kappa (laffi.analysis.agreement).
Prints a table and writes RUN/stats.json.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from laffi.analysis.agreement import cohen_kappa, percent_agreement
from laffi.records import VERDICTS, Feedback, read_records

Key = tuple[str, str]  # (question id, answer)


def feedback_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob("feedback*.jsonl") if not p.name.endswith(".failed.jsonl"))


def raters(records: list[Feedback]) -> tuple[dict[str, dict[Key, str]], dict[str, set[str]]]:
    """Each rater's verdict per answer (annotators, then sources that pool several annotators), and
    each pooled source's annotators."""
    by_annotator: dict[str, dict[Key, str]] = defaultdict(dict)
    votes: dict[str, dict[Key, Counter]] = defaultdict(lambda: defaultdict(Counter))
    members: dict[str, set[str]] = defaultdict(set)
    for record in records:
        key = (record.id, " ".join(record.answer.split()))
        by_annotator[record.annotator].setdefault(key, record.verdict)  # the first, if a file repeats one
        votes[record.source][key][record.verdict] += 1
        members[record.source].add(record.annotator)
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
    rows, pools = [], pools or {}
    for a, b in combinations(sorted(groups), 2):
        if b in pools.get(a, ()) or a in pools.get(b, ()):
            continue  # a source against one of its own annotators agrees with itself
        shared = sorted(set(groups[a]) & set(groups[b]))
        if not shared:
            continue
        x, y = [groups[a][k] for k in shared], [groups[b][k] for k in shared]
        kappa = cohen_kappa(x, y)
        rows.append({"a": a, "b": b, "answers": len(shared), "agreement": round(percent_agreement(x, y), 2),
                     "kappa": None if math.isnan(kappa) else round(kappa, 4),
                     "confusion": {va: {vb: sum(1 for p, q in zip(x, y) if (p, q) == (va, vb)) for vb in VERDICTS}
                                   for va in VERDICTS}})
    return rows


def stats(run_dir: str | Path, files: list[str | Path] | None = None) -> dict:
    run_dir = Path(run_dir)
    paths = [run_dir / f for f in files] if files else feedback_files(run_dir)
    if not paths:
        raise FileNotFoundError(f"{run_dir}: no feedback*.jsonl files (run `laffi annotate` first)")
    records = [r for path in paths for r in read_records(path, Feedback)]
    groups, pools = raters(records)
    result = {"files": [str(p) for p in paths],
              "raters": {name: dict(Counter(verdicts.values())) for name, verdicts in groups.items()},
              "pairs": pairwise(groups, pools)}
    (run_dir / "stats.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def markdown(result: dict) -> str:
    lines = ["| rater | answers | " + " | ".join(VERDICTS) + " |", "|---|---:|" + "---:|" * len(VERDICTS)]
    for name, counts in result["raters"].items():
        lines.append(f"| {name} | {sum(counts.values())} | " + " | ".join(str(counts.get(v, 0)) for v in VERDICTS) + " |")
    lines += ["", "| rater a | rater b | same answers | agreement % | Cohen's kappa |", "|---|---|---:|---:|---:|"]
    for row in result["pairs"]:
        kappa = "n/a" if row["kappa"] is None else f"{row['kappa']:.3f}"
        lines.append(f"| {row['a']} | {row['b']} | {row['answers']} | {row['agreement']:.1f} | {kappa} |")
    if not result["pairs"]:
        lines.append("| (no two raters judged the same answers) | | | | |")
    return "\n".join(lines)
