"""The outcome of a run: results.json (system -> EM/F1 with intervals), results.md, run_info.json.

    from laffi.report.results import write_results
    results = write_results(layout, metrics, seconds, config.eval, config.systems.compare_with)
    # metrics: system -> metrics.json

results.md holds the table, paired differences between systems (resampling the same questions
for both, which is tighter and more honest than comparing two separate intervals; which systems the
others are paired against is the run's systems.compare_with, laffi.config.SystemsConfig), a few
feedbacks the model was trained to predict, and a few held-out predictions side by side. Its
tables of numbers are those of report.html (laffi.report.tables).
"""

from __future__ import annotations

import json
from typing import Sequence

from laffi.analysis.bootstrap import paired_differences_in_points
from laffi.config import EvalConfig
from laffi.layout import RunLayout
from laffi.records import Feedback, Prediction, QAExample, read_records, write_atomic, write_json
from laffi.report.tables import markdown, paired_differences_table, results_table

KEYS = ("exact", "f1", "total", "exact_ci95", "f1_ci95")
METRICS = ("exact", "f1")
SAMPLES = 5


def _cell(text: str, width: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def comparisons(systems: list[str], compare_with: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) for "a - b": every other system against the first of `compare_with` the run has, then
    against the next, ...; then each of those against the ones after it (systems.compare_with: with
    sft, base: each other system - sft, each - base, then sft - base)."""
    references = [b for b in compare_with if b in systems]
    pairs = [(a, b) for b in references for a in systems if a not in references]
    return pairs + [(a, b) for i, a in enumerate(references) for b in references[i + 1:]]


def paired_differences(layout: RunLayout, systems: list[str], config: EvalConfig,
                       compare_with: Sequence[str]) -> dict:
    predictions = {s: {p.id: p for p in read_records(layout.predictions(s), Prediction)} for s in systems}
    ids = [e.id for e in read_records(layout.eval_examples, QAExample)]

    def scores(system: str) -> dict[str, list[float]]:
        return {metric: [getattr(predictions[system][i], metric) for i in ids] for metric in METRICS}

    return {f"{a} - {b}": paired_differences_in_points(scores(a), scores(b), samples=config.bootstrap_samples,
                                                       seed=config.seed)
            for a, b in comparisons(systems, compare_with)}


def markdown_table(results: dict) -> str:
    """The results table under the number of held-out questions (also what `laffi run` prints)."""
    return f"Held-out questions: {next(iter(results.values()))['total']}\n\n" + markdown(*results_table(results))


def results_markdown(layout: RunLayout, results: dict, differences: dict, seconds: dict) -> str:
    """results.md."""
    lines = ["# LaFFi run results", "", markdown_table(results)]
    if differences:
        lines += ["", "Paired differences (same questions resampled for both systems; 95% CI):", "",
                  markdown(*paired_differences_table(differences))]
    if layout.feedback.exists():
        train = {e.id: e for e in read_records(layout.train_examples, QAExample)}
        lines += ["", "## Feedback the LaFFi model learns to predict", ""]
        for note in read_records(layout.feedback, Feedback)[:SAMPLES]:
            lines += [f"- **Q:** {_cell(train[note.id].question)}  ",
                      f"  **model's answer:** {_cell(note.answer)}  ",
                      f"  **feedback ({note.annotator}, {note.verdict}):** {_cell(note.text, 400)}"]
    examples = read_records(layout.eval_examples, QAExample)[:SAMPLES]
    predictions = {s: {p.id: p.prediction for p in read_records(layout.predictions(s), Prediction)} for s in results}
    lines += ["", "## Held-out predictions", "",
              markdown(["question", "gold", *results],
                       [[_cell(e.question, 70), _cell(e.answers[0] if e.answers else ""),
                         *[_cell(predictions[s].get(e.id, ""), 40) for s in results]] for e in examples])]
    if seconds:
        lines += ["", "## Wall time per stage (s)", "",
                  markdown(["stage", "seconds"], [[stage, f"{s:.1f}"] for stage, s in seconds.items()], {1})]
    return "\n".join(lines) + "\n"


def write_results(layout: RunLayout, metrics: dict[str, dict], seconds: dict[str, float],
                  config: EvalConfig, compare_with: Sequence[str], peak_mb: dict[str, float] | None = None) -> dict:
    """`compare_with`: the systems the others are paired against (systems.compare_with, `comparisons`)."""
    results = {system: {k: m[k] for k in KEYS} for system, m in metrics.items()}
    differences = paired_differences(layout, list(metrics), config, compare_with)
    write_json(layout.results_json, results)
    write_atomic(layout.results_md, results_markdown(layout, results, differences, seconds))
    training = {}
    for system in metrics:
        summary = layout.train_summary(system)
        if summary.exists():
            training[system] = json.loads(summary.read_text(encoding="utf-8"))
    info = {"stage_seconds": seconds, "peak_rss_mb_after_stage": peak_mb or {}, "paired_differences": differences, "training": training,
            "generation": {s: m.get("generation") for s, m in metrics.items()}}
    write_json(layout.run_info, info)
    return results
