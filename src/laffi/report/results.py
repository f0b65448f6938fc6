"""The outcome of a run: results.json (system -> EM/F1 with intervals), results.md, run_info.json.

results.md holds the table, paired differences between systems (resampling the same questions
for both, which is tighter and more honest than comparing two separate intervals), a few
feedbacks the model was trained to predict, and a few held-out predictions side by side.
"""

from __future__ import annotations

import json

from laffi.analysis.metrics import paired_bootstrap_difference
from laffi.config import EvalConfig
from laffi.layout import RunLayout
from laffi.records import Feedback, Prediction, QAExample, read_records

KEYS = ("exact", "f1", "total", "exact_ci95", "f1_ci95")
COMPARISONS = (("laffi", "sft"), ("laffi", "base"), ("sft", "base"))
SAMPLES = 5


def _cell(text: str, width: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def paired_differences(layout: RunLayout, systems: list[str], config: EvalConfig) -> dict:
    scores = {s: {p.id: p for p in read_records(layout.evaluation(s) / "predictions.jsonl", Prediction)}
              for s in systems}
    ids = [e.id for e in read_records(layout.eval_examples, QAExample)]
    differences = {}
    for a, b in COMPARISONS:
        if a in scores and b in scores:
            differences[f"{a} - {b}"] = {
                metric: [round(100 * v, 2) for v in paired_bootstrap_difference(
                    [getattr(scores[a][i], metric) for i in ids], [getattr(scores[b][i], metric) for i in ids],
                    samples=config.bootstrap_samples, seed=config.seed)]
                for metric in ("exact", "f1")}
    return differences


def markdown_table(results: dict) -> str:
    lines = [f"Held-out questions: {next(iter(results.values()))['total']}", "",
             "| system | EM | EM 95% CI | F1 | F1 95% CI |", "|---|---:|---|---:|---|"]
    for system, m in results.items():
        lines.append(f"| {system} | {m['exact']:.2f} | {m['exact_ci95'][0]:.2f}-{m['exact_ci95'][1]:.2f} "
                     f"| {m['f1']:.2f} | {m['f1_ci95'][0]:.2f}-{m['f1_ci95'][1]:.2f} |")
    return "\n".join(lines)


def markdown(layout: RunLayout, results: dict, differences: dict, seconds: dict) -> str:
    lines = ["# LaFFi run results", "", markdown_table(results)]
    if differences:
        lines += ["", "Paired differences (same questions resampled for both systems; 95% CI):", "",
                  "| comparison | EM diff | EM 95% CI | F1 diff | F1 95% CI |", "|---|---:|---|---:|---|"]
        for name, d in differences.items():
            lines.append(f"| {name} | {d['exact'][0]:+.2f} | {d['exact'][1]:+.2f} to {d['exact'][2]:+.2f} "
                         f"| {d['f1'][0]:+.2f} | {d['f1'][1]:+.2f} to {d['f1'][2]:+.2f} |")
    if layout.feedback.exists():
        train = {e.id: e for e in read_records(layout.train_examples, QAExample)}
        lines += ["", "## Feedback the LaFFi model learns to predict", ""]
        for note in read_records(layout.feedback, Feedback)[:SAMPLES]:
            lines += [f"- **Q:** {_cell(train[note.id].question)}  ",
                      f"  **model's answer:** {_cell(note.answer)}  ",
                      f"  **feedback ({note.annotator}, {note.verdict}):** {_cell(note.text, 400)}"]
    examples = read_records(layout.eval_examples, QAExample)[:SAMPLES]
    predictions = {s: {p.id: p.prediction for p in read_records(layout.evaluation(s) / "predictions.jsonl",
                                                                 Prediction)} for s in results}
    lines += ["", "## Held-out predictions", "", "| question | gold | " + " | ".join(results) + " |",
              "|---|---|" + "---|" * len(results)]
    for e in examples:
        lines.append(f"| {_cell(e.question, 70)} | {_cell(e.answers[0] if e.answers else '')} | "
                     + " | ".join(_cell(predictions[s].get(e.id, ""), 40) for s in results) + " |")
    if seconds:
        lines += ["", "## Wall time per stage (s)", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {s:.1f} |" for stage, s in seconds.items()]
    return "\n".join(lines) + "\n"


def write_results(layout: RunLayout, metrics: dict[str, dict], seconds: dict[str, float],
                  config: EvalConfig) -> dict:
    results = {system: {k: m[k] for k in KEYS} for system, m in metrics.items()}
    differences = paired_differences(layout, list(metrics), config)
    layout.results_json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    layout.results_md.write_text(markdown(layout, results, differences, seconds), encoding="utf-8")
    training = {}
    for system in metrics:
        summary = layout.adapter(system) / "summary.json"
        if summary.exists():
            training[system] = json.loads(summary.read_text(encoding="utf-8"))
    info = {"stage_seconds": seconds, "paired_differences": differences, "training": training,
            "generation": {s: m.get("generation") for s, m in metrics.items()}}
    (layout.root / "run_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return results
