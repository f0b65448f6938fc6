"""Human feedback in and out of the app as the pipeline's Feedback JSONL, and verdict agreement.

    laffi export-feedback runs/demo [--out FILE]     # default runs/demo/feedback.human.jsonl
    laffi import-feedback runs/demo FILE.jsonl

Exported records have source "human" and annotator = the person's name, one per submitted
annotation (an item annotated by two people gives two records), the item's answer (the question
id and the sample, generate.samples) and when it was submitted, which an import keeps. Revoked people's work is kept.
Agreement is reported where an item has two or more human verdicts (each pair of people on their
shared items, and all such pairs pooled) and between each human verdict and the AI verdict on
the same answer (RUN/feedback.jsonl), with the helpers of laffi.analysis.agreement.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from sqlalchemy import Engine

from laffi.analysis.agreement import rater_pairs, scores, shared
from laffi.human import store
from laffi.layout import RunLayout
from laffi.records import (
    Answer,
    Feedback,
    Key,
    QAExample,
    RecordError,
    answer_name,
    read_records,
    record_key,
    write_records,
)


def to_feedback(annotation: store.Annotation) -> Feedback:
    return Feedback(id=annotation.question_id, answer=annotation.answer, verdict=annotation.verdict,
                    text=annotation.text, source="human", annotator=annotation.annotator,
                    corrected_answer=annotation.corrected_answer, sample=annotation.sample,
                    submitted_at=annotation.submitted_at)


def export_feedback(engine: Engine, out: str | Path) -> list[Feedback]:
    records = [to_feedback(a) for a in store.done_annotations(engine)]
    write_records(out, records)
    return records


def read_run_items(run_dir: str | Path) -> tuple[list[QAExample], list[Answer]]:
    """The train questions (passages) and the model's answers of a run: what people annotate."""
    layout = RunLayout.of(run_dir)  # a job's or variant's data/ may be elsewhere (layout.json)
    return read_records(layout.train_examples, QAExample), read_records(layout.answers, Answer)


def sync_run_items(engine: Engine, run_dir: str | Path) -> tuple[int, int]:
    """Load RUN/answers.jsonl (with the passages of RUN/data/train.jsonl) as the items to annotate."""
    return store.sync_items(engine, *read_run_items(run_dir))


def check_run_items(engine: Engine, run_dir: str | Path) -> None:
    """That the database holds items of this run's train questions only (answers.jsonl need not be there)."""
    store.check_items_of(engine, (e.id for e in read_records(RunLayout.of(run_dir).train_examples, QAExample)))


def import_feedback(engine: Engine, run_dir: str | Path, path: str | Path) -> tuple[int, int]:
    """Load human Feedback JSONL into the app's database; returns (added, already there)."""
    records = read_records(path, Feedback)
    for number, record in enumerate(records, start=1):
        if record.source != "human":
            raise RecordError(f"{path}: record {number} ({record.id}) has source {record.source!r}; "
                              "only human feedback is imported (AI feedback lives in feedback.jsonl)")
    sync_run_items(engine, run_dir)
    try:
        return store.import_annotations(engine, [
            store.Annotation(answer_name(record_key(r)), r.annotator, "done", r.answer, r.verdict, r.text,
                             r.corrected_answer, r.submitted_at, r.id, r.sample) for r in records])
    except store.StoreError as error:  # the item named, and the file it came from; nothing was imported
        raise type(error)(f"{path}: {error}; nothing was imported") from error


def agreement_report(human: list[Feedback], ai: list[Feedback]) -> dict:
    """Verdict agreement among people and between people and the AI annotator.

    Returns {"human_pairs": [{"a", "b", "n", "percent", "kappa"}], "human_pooled": {...} | None,
    "human_ai": [{"annotator", "ai", "n", "percent", "kappa"}], "human_ai_pooled": [{"ai", "n", "percent",
    "kappa"}]}: each person against each AI annotator (an experiment directory may hold several, one feedback
    file each), and all people against each AI annotator; never several AI annotators merged, where a person's
    verdict would count once per annotator.
    """
    # Two people agree on an item, one answer (question, sample) (they saw the same answer); a person and
    # the AI only where the AI judged the same answer text the person saw, to the same question.
    item_verdicts: dict[str, dict[Key, str]] = defaultdict(dict)  # person -> {item: verdict}
    answer_verdicts: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)  # person -> {(question, text): verdict}
    for f in human:
        item_verdicts[f.annotator][record_key(f)] = f.verdict
        answer_verdicts[f.annotator][f.id, f.answer] = f.verdict
    ai_by_key: dict[str, dict[tuple[str, str], str]] = defaultdict(dict)  # AI annotator -> {(question, text): verdict}
    for f in ai:
        if f.source == "ai":
            ai_by_key[f.annotator][f.id, f.answer] = f.verdict

    pairs = list(rater_pairs(item_verdicts))
    with_ai = {(name, machine): shared(verdicts, ai_by_key[machine])
               for name, verdicts in sorted(answer_verdicts.items()) for machine in sorted(ai_by_key)}
    with_ai = {key: labels for key, labels in with_ai.items() if labels[0]}

    def pooled(groups: list[tuple[list[str], list[str]]]) -> dict | None:
        a, b = [v for x, _ in groups for v in x], [v for _, y in groups for v in y]
        return scores(a, b) if a else None

    return {
        "human_pairs": [{"a": a, "b": b, **scores(x, y)} for a, b, x, y in pairs],
        "human_pooled": pooled([(x, y) for _, _, x, y in pairs]),
        "human_ai": [{"annotator": name, "ai": machine, **scores(*labels)} for (name, machine), labels in with_ai.items()],
        "human_ai_pooled": [{"ai": machine, **pooled([labels for (_, m), labels in with_ai.items() if m == machine])}
                            for machine in sorted({m for _, m in with_ai})],
    }


def ai_feedback(run_dir: str | Path) -> list[Feedback]:
    """The AI feedback of the run, or none yet: every feedback*.jsonl's (a run's feedback.jsonl, an experiment
    directory's feedback.ANNOTATOR.jsonl, a file `laffi annotate --out` wrote)."""
    return [f for path in RunLayout(run_dir).feedback_files() for f in read_records(path, Feedback) if f.source == "ai"]


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
    for pooled in report["human_ai_pooled"]:
        lines.append(f"human vs AI {pooled['ai']}: {score(pooled)}")
        lines += [f"  {p['annotator']} vs {p['ai']}: {score(p)}" for p in report["human_ai"] if p["ai"] == pooled["ai"]]
    if not report["human_ai_pooled"]:
        lines.append("human vs AI: no answer has both a human and an AI verdict yet")
    return "\n".join(lines)
