"""Human feedback in and out of the app as the pipeline's Feedback JSONL, and verdict agreement.

    laffi export-feedback runs/demo [--out FILE]     # default runs/demo/feedback.human.jsonl
    laffi import-feedback runs/demo FILE.jsonl

Exported records have source "human" and annotator = the person's name, one per submitted
annotation (an item annotated by two people gives two records). Revoked people's work is kept.
Agreement is reported where an item has two or more human verdicts (each pair of people on their
shared items, and all such pairs pooled) and between each human verdict and the AI verdict on
the same answer (RUN/feedback.jsonl).
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from sqlalchemy import Engine

from laffi.analysis.agreement import cohen_kappa, percent_agreement
from laffi.human import store
from laffi.layout import RunLayout
from laffi.records import Answer, Feedback, QAExample, RecordError, read_records, write_records


def to_feedback(annotation: store.Annotation) -> Feedback:
    return Feedback(id=annotation.item_id, answer=annotation.answer, verdict=annotation.verdict,
                    text=annotation.text, source="human", annotator=annotation.annotator,
                    corrected_answer=annotation.corrected_answer)


def export_feedback(engine: Engine, out: str | Path) -> list[Feedback]:
    records = [to_feedback(a) for a in store.done_annotations(engine)]
    write_records(out, records)
    return records


def read_run_items(run_dir: str | Path) -> tuple[list[QAExample], list[Answer]]:
    """The train questions (passages) and the model's answers of a run: what people annotate."""
    layout = RunLayout(run_dir)
    return read_records(layout.train_examples, QAExample), read_records(layout.answers, Answer)


def sync_run_items(engine: Engine, run_dir: str | Path) -> tuple[int, int]:
    """Load RUN/answers.jsonl (with the passages of RUN/data/train.jsonl) as the items to annotate."""
    return store.sync_items(engine, *read_run_items(run_dir))


def import_feedback(engine: Engine, run_dir: str | Path, path: str | Path) -> tuple[int, int]:
    """Load human Feedback JSONL into the app's database; returns (added, already there)."""
    records = read_records(path, Feedback)
    for number, record in enumerate(records, start=1):
        if record.source != "human":
            raise RecordError(f"{path}: record {number} ({record.id}) has source {record.source!r}; "
                              "only human feedback is imported (AI feedback lives in feedback.jsonl)")
    sync_run_items(engine, run_dir)
    return store.import_annotations(engine, [
        store.Annotation(r.id, r.annotator, "done", r.answer, r.verdict, r.text, r.corrected_answer, None)
        for r in records])


def _score(a: list[str], b: list[str]) -> dict:
    return {"n": len(a), "percent": percent_agreement(a, b), "kappa": cohen_kappa(a, b)}


def agreement_report(human: list[Feedback], ai: list[Feedback]) -> dict:
    """Verdict agreement among people and between people and the AI annotator.

    Returns {"human_pairs": [{"a", "b", "n", "percent", "kappa"}], "human_pooled": {...} | None,
    "human_ai": [{"annotator", "n", "percent", "kappa"}], "human_ai_pooled": {...} | None}.
    """
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for f in human:
        by_item[f.id][f.annotator] = f.verdict
    pairs: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for verdicts in by_item.values():
        for a, b in combinations(sorted(verdicts), 2):
            pairs[a, b][0].append(verdicts[a])
            pairs[a, b][1].append(verdicts[b])
    pooled_a = [v for a, _ in pairs.values() for v in a]
    pooled_b = [v for _, b in pairs.values() for v in b]

    # The AI verdict counts only when it judged the same answer the person saw.
    ai_by_key = {(f.id, f.answer): f.verdict for f in ai if f.source == "ai"}
    with_ai: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for f in human:
        if (f.id, f.answer) in ai_by_key:
            with_ai[f.annotator][0].append(f.verdict)
            with_ai[f.annotator][1].append(ai_by_key[f.id, f.answer])
    all_h = [v for h, _ in with_ai.values() for v in h]
    all_ai = [v for _, a in with_ai.values() for v in a]
    return {
        "human_pairs": [{"a": a, "b": b, **_score(*pairs[a, b])} for a, b in sorted(pairs)],
        "human_pooled": _score(pooled_a, pooled_b) if pooled_a else None,
        "human_ai": [{"annotator": name, **_score(*with_ai[name])} for name in sorted(with_ai)],
        "human_ai_pooled": _score(all_h, all_ai) if all_h else None,
    }


def ai_feedback(run_dir: str | Path) -> list[Feedback]:
    """The AI feedback of the run, or none yet."""
    path = RunLayout(run_dir).feedback
    return [f for f in read_records(path, Feedback) if f.source == "ai"] if path.exists() else []


def format_report(report: dict) -> str:
    def score(s: dict) -> str:
        kappa = "n/a" if math.isnan(s["kappa"]) else f"{s['kappa']:.3f}"
        return f"{s['percent']:.1f}% agree, kappa {kappa} (n={s['n']})"

    lines = []
    if report["human_pooled"]:
        lines.append(f"human vs human: {score(report['human_pooled'])}")
        lines += [f"  {p['a']} vs {p['b']}: {score(p)}" for p in report["human_pairs"]]
    else:
        lines.append("human vs human: no item has two human verdicts yet")
    if report["human_ai_pooled"]:
        lines.append(f"human vs AI: {score(report['human_ai_pooled'])}")
        lines += [f"  {p['annotator']} vs AI: {score(p)}" for p in report["human_ai"]]
    else:
        lines.append("human vs AI: no answer has both a human and an AI verdict yet")
    return "\n".join(lines)
