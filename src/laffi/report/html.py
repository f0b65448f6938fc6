"""`laffi report`: one self-contained HTML page about a run or an ablation.

    laffi report runs/demo            # -> runs/demo/report.html (also written by `laffi run`)
    laffi report runs/ablate-size     # an ablation directory (also written by `laffi ablate`)

The page holds the results table with 95% intervals and the paired differences, the ablation
table and charts, the attention plots of `laffi attention`, the training loss curves
(adapters/*/train_log.jsonl), and a sample of questions: train questions with the model's answer
and the feedback it received, held-out questions with every system's prediction. Images are
embedded as data: URIs and the page loads nothing else, so the file can be mailed or archived
alone. All text from the run (passages, answers, feedback) is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

from laffi.layout import AblationLayout, RunLayout
from laffi.records import Answer, Feedback, Prediction, QAExample, TrainLogEntry, read_records, write_atomic
from laffi.report.plots import ablation_charts, loss_curves, results_chart
from laffi.report.tables import (
    ablation_differences_table,
    ablation_table,
    fixed_axes,
    paired_differences_table,
    results_table,
    varying_axes,
)

SAMPLES = 8
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: .6em 0; }
.note { color: #555; font-size: .9em; } .right { color: #1a7f37; } .wrong { color: #b42318; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(header: list[str], rows: list[list[object]], numeric: frozenset[int] | set[int] = frozenset(),
          id: str = "") -> str:
    """An HTML table, text escaped; `numeric`: the right-aligned columns (`table(*tables.results_table(r))`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table{f" id={esc(id)}" if id else ""}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _ablation_summary(root: Path) -> dict | None:
    """ablation.json, if `root` is an ablation; one written before its grid's axes were named in it
    (they were "objective", ... then) is refused with what to do."""
    summary = _json(AblationLayout(root).summary_json)
    if summary is not None and "axes" not in summary:
        raise ValueError(f"{AblationLayout(root).summary_json} was written by an older laffi (it says objective "
                         f"where laffi now says system): rerun `laffi ablate CONFIG --out {root}`, which reuses "
                         "every artifact and rewrites it")
    return summary


def results_section(root: Path) -> str:
    results = _json(RunLayout.of(root).results_json)
    if not results:
        return ""
    parts = ["<h2>Results</h2>",
             f'<p class="note">{esc(next(iter(results.values()))["total"])} held-out questions, percent, '
             "95% bootstrap intervals.</p>",
             table(*results_table(results), id="results")]
    differences = (_json(RunLayout.of(root).run_info) or {}).get("paired_differences") or {}
    if differences:
        parts += ['<p class="note">Paired differences (the same questions resampled for both systems; '
                  'percentage points, 95% interval):</p>',
                  table(*paired_differences_table(differences))]
    parts.append(image(results_chart(results), "EM and F1 per system with 95% intervals"))
    return "\n".join(parts)


def ablation_section(root: Path) -> str:
    summary = _ablation_summary(root)
    if not summary:
        return ""
    cells = summary["cells"]
    parts = ["<h2>Ablation</h2>",
             f'<p class="note">{esc(cells[0]["questions"])} held-out questions; seeds '
             f'{esc(", ".join(map(str, cells[0]["seeds"])))}; '
             f'fixed: {esc(", ".join(fixed_axes(summary)) or "nothing")}. '
             "Mean over seeds; 95% interval from a bootstrap over seeds and held-out questions.</p>",
             table(*ablation_table(summary), id="ablation")]
    if summary.get("differences"):
        parts += ['<p class="note">Each system - SFT, paired by seed and question (percentage points):</p>',
                  table(*ablation_differences_table(summary), id="differences")]
    charts = ablation_charts(summary, varying_axes(summary))
    parts += [f"<h3>{esc(title)}</h3>" + image(png, title) for title, png in charts]
    jobs = summary.get("jobs") or []
    if jobs:
        trained = sum(j["trained_this_run"] for j in jobs)
        parts.append(f'<p class="note">{len(jobs)} trainings for {sum(len(j["cells"]) for j in jobs)} cell runs '
                     f"({trained} trained by the last invocation, the rest found done); every cell shares the "
                     "split, the answers and the base evaluation.</p>")
    return "\n".join(parts)


def _loss_logs(root: Path) -> dict[str, list[TrainLogEntry]]:
    """Label -> log of each adapter: the run's adapters/*, or the ablation's jobs, each named by its
    cell's varying axes and seed (only the jobs of the last grid: a directory may hold older ones)."""
    summary = _ablation_summary(root)
    if summary:
        axes = varying_axes(summary)
        paths = {", ".join([str(job["cell"][a]) if a == "system" else f"{a}={job['cell'][a]}" for a in axes]
                           + [f"seed={job['seed']}"]): RunLayout(root / job["dir"]).train_log(job["system"])
                 for job in summary.get("jobs", [])}
    else:
        layout = RunLayout.of(root)
        paths = {str(layout.adapter(system).relative_to(root)): layout.train_log(system)
                 for system in layout.trained_systems()}
    return {name: read_records(log, TrainLogEntry) for name, log in paths.items() if log.exists()}


def loss_section(root: Path) -> str:
    logs = {name: entries for name, entries in _loss_logs(root).items() if entries}
    if not logs:
        return ""
    return "<h2>Training loss</h2>" + image(loss_curves(logs), "training loss per step for each adapter")


def attention_section(root: Path) -> str:
    parts, layout = [], RunLayout.of(root)
    for system in layout.attention_systems():
        results = _json(layout.attention_json(system)) or {}
        pngs = sorted(layout.attention_figures(system), key=lambda p: (p.stem != "layers", p.stem))
        if not pngs:
            continue
        parts.append(f"<h3>base vs {esc(system)}</h3>"
                     f'<p class="note">{esc(len(results.get("prompts", [])))} held-out prompts; adapter '
                     f'{esc(results.get("adapter", "?"))}; local = within '
                     f'{esc(results.get("window", "?"))} tokens.</p>')
        parts += [image(p.read_bytes(), f"attention: {system} {p.stem}") for p in pngs]
    return "<h2>Attention</h2>\n" + "\n".join(parts) if parts else ""


def _systems(root: Path) -> dict[str, Path]:
    """System name -> its predictions: the run's, or for an ablation base and one cell per system
    (the largest size, the first seed)."""
    layout, summary = RunLayout.of(root), _ablation_summary(root)
    if not summary:
        order = {name: i for i, name in enumerate(("base", "sft", "laffi"))}  # then any other, by name
        return {s: layout.predictions(s) for s in sorted(layout.evaluated_systems(),
                                                           key=lambda s: (order.get(s, len(order)), s))}
    systems = {"base": layout.predictions("base")}
    largest = max(c["size"] for c in summary["cells"])
    for cell in summary["cells"]:
        if cell["size"] == largest and cell["system"] not in systems:
            systems[cell["system"]] = root / cell["artifacts"]["predictions"][0]
    return systems


def _feedback_file(layout: RunLayout) -> Path | None:
    """The AI feedback of a run, or of an ablation's first annotator."""
    candidates = [layout.feedback, *layout.feedback_files()]
    return next((p for p in candidates if p.exists() and p != layout.human_feedback), None)


def samples_section(root: Path) -> str:
    layout = RunLayout.of(root)
    parts = []
    feedback_path = _feedback_file(layout)
    if feedback_path and layout.train_examples.exists() and layout.answers.exists():
        train = {e.id: e for e in read_records(layout.train_examples, QAExample)}
        answers = {a.id: a for a in read_records(layout.answers, Answer)}
        notes = read_records(feedback_path, Feedback)[:SAMPLES]
        rows = [[train[n.id].question, train[n.id].answers[0] if train[n.id].answers else "(none)",
                 answers[n.id].prediction if n.id in answers else n.answer, n.verdict, n.text, n.annotator]
                for n in notes if n.id in train]
        parts += ["<h3>What the model answered and the feedback it received (train questions)</h3>",
                  table(["question", "gold", "model's answer", "verdict", "feedback", "annotator"], rows,
                        id="feedback-samples")]
    systems = _systems(root)
    if systems and layout.eval_examples.exists():
        examples = read_records(layout.eval_examples, QAExample)[:SAMPLES]
        predictions = {name: {p.id: p for p in read_records(path, Prediction)}
                       for name, path in systems.items() if path.exists()}
        rows = []
        for e in examples:
            cells = []
            for name in predictions:
                p = predictions[name].get(e.id)
                cells.append("" if p is None else f"{p.prediction or '(no answer)'}  [EM {p.exact:.0f}, F1 {p.f1:.2f}]")
            rows.append([e.question, " | ".join(dict.fromkeys(e.answers)) or "(unanswerable)", *cells])
        note = ("" if not AblationLayout(root).summary_json.exists() else
                '<p class="note">For the ablation: each system at the largest size, first seed.</p>')
        parts += ["<h3>Held-out questions: each system's prediction</h3>", note,
                  table(["question", "gold", *predictions], rows, id="prediction-samples")]
    return "<h2>Samples</h2>\n" + "\n".join(parts) if parts else ""


def render(root: str | Path) -> str:
    root = Path(root)
    ablation = AblationLayout(root)
    config = ablation.ablate_config if ablation.ablate_config.exists() else RunLayout.of(root).config
    title = f"LaFFi {'ablation' if ablation.summary_json.exists() else 'run'}: {root.resolve().name}"
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="note">{esc(root)}, report written {esc(time.strftime("%Y-%m-%d %H:%M"))}</p>',
            results_section(root), ablation_section(root), loss_section(root), attention_section(root),
            samples_section(root)]
    if config.exists():
        body.append(f"<h2>Configuration</h2><p class=note>{esc(config.name)}</p>"
                    f"<pre>{esc(config.read_text(encoding='utf-8'))}</pre>")
    # The policy lets the page load nothing but its own inline style and data: images.
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" "
            "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(part for part in body if part) + "\n</body></html>\n")


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Render the page and write it atomically (default ROOT/report.html)."""
    return write_atomic(out or RunLayout.of(root).report, render(root))
