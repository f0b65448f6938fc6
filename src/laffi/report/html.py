"""`laffi report`: one self-contained HTML page about a run or an experiment.

    laffi report runs/demo            # -> runs/demo/report.html (also written by `laffi run`)
    laffi report runs/budgets         # an experiment directory (also written by `laffi experiment`)

The page holds the results table with 95% intervals and the paired differences, the experiment's
tables (each system at its budget chosen on dev, its dev F1 at every budget) and charts (dev curves), the attention plots of `laffi attention`, the training loss curves
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

from laffi.config import ConfigError, read_yaml
from laffi.layout import ExperimentLayout, RunLayout
from laffi.records import Answer, Feedback, Prediction, QAExample, TrainLogEntry, read_records, record_key, write_atomic
from laffi.report.plots import experiment_charts, loss_curves, results_chart
from laffi.report.results import KEYS
from laffi.report.tables import (
    dev_curve_table,
    experiment_differences_table,
    experiment_table,
    fixed_axes,
    paired_differences_table,
    results_table,
)
from laffi.systems import family_of

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


def _configured_systems(root: Path) -> list[str]:
    """systems.names in the run's config.yaml (packaged names or .yaml paths), [] without them."""
    config = RunLayout.of(root).config
    try:
        names = ((read_yaml(config) if config.exists() else {}).get("systems") or {}).get("names")
    except (ConfigError, AttributeError):
        return []
    return [str(name) for name in names] if isinstance(names, list) else []


def _families(root: Path, names: list[str]) -> dict[str, str | None]:
    """System name -> its family (laffi.systems), which the figures colour by: an experiment's cells say
    it; a run's user system is found through its config.yaml (systems.names holds its path); None for a
    system whose file no longer loads."""
    summary = _experiment_summary(root) or {}
    said = {c["system"]: c["family"] for c in summary.get("cells", []) if c.get("family")}
    specs = {Path(spec).stem: spec for spec in _configured_systems(root)}
    return {name: said[name] if name in said else family_of(specs.get(name, name)) for name in names}


def _experiment_summary(root: Path) -> dict | None:
    """experiment.json, if `root` is an experiment directory."""
    return _json(ExperimentLayout(root).summary_json)


def results_section(root: Path) -> str:
    layout = RunLayout.of(root)
    results, source = _json(layout.results_json), ""
    if not results:  # a run built stage by stage: each evaluation's own scores, without the paired differences
        order = [Path(spec).stem for spec in _configured_systems(root)]
        evaluated = sorted(layout.evaluated_systems(), key=lambda s: (order.index(s) if s in order else len(order), s))
        results = {s: {k: m[k] for k in KEYS} for s in evaluated if (m := _json(layout.metrics(s)))}
        source = (" Read from each system's eval/SYSTEM/metrics.json: the run has no results.json, which `laffi run` "
                  "writes with the paired differences.")
    if not results:
        return ""
    parts = ["<h2>Results</h2>",
             f'<p class="note">{esc(next(iter(results.values()))["total"])} held-out questions, percent, '
             f"95% bootstrap intervals.{esc(source)}</p>",
             table(*results_table(results), id="results")]
    differences = (_json(RunLayout.of(root).run_info) or {}).get("paired_differences") or {}
    if differences:
        parts += ['<p class="note">Paired differences (the same questions resampled for both systems; '
                  'percentage points, 95% interval):</p>',
                  table(*paired_differences_table(differences))]
    chart = results_chart(results, _families(root, list(results)))
    parts.append(image(chart, "EM and F1 per system with 95% intervals"))
    return "\n".join(parts)


def experiment_section(root: Path) -> str:
    summary = _experiment_summary(root)
    if not summary:
        return ""
    cells = summary["cells"]
    parts = ["<h2>Experiment: each system at its budget chosen on dev</h2>",
             f'<p class="note">{esc(cells[0]["questions"])} held-out and {esc(summary["dev_questions"])} dev '
             f'questions; seeds {esc(", ".join(map(str, summary["seeds"])))}; budgets tried '
             f'{esc(", ".join(map(str, summary["budgets"])))} steps; fixed: {esc(", ".join(fixed_axes(summary)) or "nothing")}. '
             "Each system's budget has the best mean dev F1 over seeds; held-out: mean over seeds, 95% interval "
             "from a bootstrap over seeds and questions (and over seeds and articles).</p>",
             table(*experiment_table(summary), id="experiment")]
    if summary.get("differences"):
        parts += [f'<p class="note">Each system - {esc(summary["baseline"])}, paired by seed and question '
                  "(percentage points):</p>", table(*experiment_differences_table(summary), id="differences")]
    parts += ['<p class="note">Dev F1 at every budget (mean, then per seed): what the budgets were chosen on.</p>',
              table(*dev_curve_table(summary), id="dev-curves")]
    parts += [f"<h3>{esc(title)}</h3>" + image(png, title) for title, png in experiment_charts(summary)]
    jobs = summary.get("jobs") or []
    if jobs:
        trained = sum(j["trained_this_run"] for j in jobs)
        parts.append(f'<p class="note">{len(jobs)} trainings ({trained} trained by the last invocation, the rest '
                     "found done); every cell shares the split, the answers and the base evaluation.</p>")
    return "\n".join(parts)


def _loss_logs(root: Path) -> dict[str, tuple[str, list[TrainLogEntry]]]:
    """Label -> (system, log) of each adapter: the run's adapters/*, or the experiment's jobs, each named by its
    first cell, budget and seed (only the jobs of the last plan: a directory may hold older ones)."""
    summary = _experiment_summary(root)
    if summary:
        paths = {job["cells"][0]: (job["system"], RunLayout(root / job["dir"]).train_log(job["system"]))
                 for job in summary.get("jobs", [])}
    else:
        layout = RunLayout.of(root)
        paths = {str(layout.adapter(system).relative_to(root)): (system, layout.train_log(system))
                 for system in layout.trained_systems()}
    return {name: (system, read_records(log, TrainLogEntry)) for name, (system, log) in paths.items() if log.exists()}


def loss_section(root: Path) -> str:
    logs = {name: (system, entries) for name, (system, entries) in _loss_logs(root).items() if entries}
    if not logs:
        return ""
    families = _families(root, list({system for system, _ in logs.values()}))
    curves = loss_curves({name: entries for name, (_, entries) in logs.items()},
                         {name: families[system] for name, (system, _) in logs.items()})
    return "<h2>Training loss</h2>" + image(curves, "training loss per step for each adapter")


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
    """System name -> its predictions: the run's, or for an experiment the base model's and one cell
    per system (the largest size, the first seed)."""
    layout, summary = RunLayout.of(root), _experiment_summary(root)
    if not summary:  # the run's order (systems.names, results.json), then any other, by name
        order = list(dict.fromkeys([Path(s).stem for s in _configured_systems(root)]
                                   + list(_json(layout.results_json) or {})))
        rank = {name: i for i, name in enumerate(order)}
        return {s: layout.predictions(s) for s in sorted(layout.evaluated_systems(),
                                                           key=lambda s: (rank.get(s, len(rank)), s))}
    base = (summary.get("base") or {}).get("system")
    systems = {base: layout.predictions(base)} if base else {}
    largest = max((c["size"] for c in summary["cells"]), key=lambda n: n or float("inf"))  # 0: all questions
    for cell in summary["cells"]:
        if cell["size"] == largest and cell["system"] not in systems:
            systems[cell["system"]] = root / cell["artifacts"]["predictions"][0]
    return systems


def _feedback_file(layout: RunLayout) -> Path | None:
    """The AI feedback of a run, or of an experiment's first annotator."""
    candidates = [layout.feedback, *layout.feedback_files()]
    return next((p for p in candidates if p.exists() and p != layout.human_feedback), None)


def samples_section(root: Path) -> str:
    layout = RunLayout.of(root)
    parts = []
    feedback_path = _feedback_file(layout)
    if feedback_path and layout.train_examples.exists() and layout.answers.exists():
        train = {e.id: e for e in read_records(layout.train_examples, QAExample)}
        answers = {record_key(a): a for a in read_records(layout.answers, Answer)}  # one per (question, sample)
        notes = read_records(feedback_path, Feedback)[:SAMPLES]
        rows = [[train[n.id].question, train[n.id].answers[0] if train[n.id].answers else "(none)",
                 answers[key].prediction if (key := record_key(n)) in answers else n.answer, n.verdict, n.text,
                 n.annotator] for n in notes if n.id in train]
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
        note = ("" if not ExperimentLayout(root).summary_json.exists() else
                '<p class="note">For the experiment: each system at its chosen budget, the largest size, '
                "first seed.</p>")
        parts += ["<h3>Held-out questions: each system's prediction</h3>", note,
                  table(["question", "gold", *predictions], rows, id="prediction-samples")]
    return "<h2>Samples</h2>\n" + "\n".join(parts) if parts else ""


def render(root: str | Path) -> str:
    root = Path(root)
    experiment = ExperimentLayout(root)
    config = experiment.experiment_config if experiment.experiment_config.exists() else RunLayout.of(root).config
    if experiment.summary_json.exists():  # the config of the plan whose numbers the page shows, not the latest one
        plan = json.loads(experiment.summary_json.read_text(encoding="utf-8")).get("plan")
        if plan and experiment.plan_summary(plan, ".yaml").exists():
            config = experiment.plan_summary(plan, ".yaml")
    title = f"LaFFi {'experiment' if experiment.summary_json.exists() else 'run'}: {root.resolve().name}"
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="note">{esc(root)}, report written {esc(time.strftime("%Y-%m-%d %H:%M"))}</p>',
            results_section(root), experiment_section(root), loss_section(root), attention_section(root),
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
    """Render the page and write it atomically (default ROOT/report.html); ROOT must be a run or an
    experiment directory (`RunLayout.existing`), else nothing is written."""
    layout = RunLayout.existing(root)
    return write_atomic(out or layout.report, render(root))
