"""`laffi report` on a run and on an experiment: a self-contained page whose text is escaped, and which
headless Chromium renders with its tables and every image loaded.

    python -m pytest tests/report/test_report.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from laffi.cli import main
from laffi.config import DataConfig, save_config
from laffi.experiments.aggregate import CellRun, Trial, aggregate, choose_budgets
from laffi.layout import ExperimentLayout, RunLayout
from laffi.records import Answer, Feedback, Prediction, QAExample, TrainLogEntry, write_records
from laffi.report.html import _loss_logs
from laffi.report.plots import attention_figures

PAYLOAD = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def examples(prefix: str, n: int) -> list[QAExample]:
    return [QAExample(f"{prefix}{i}", f"Article {i}", f"The river {i} flows north. {PAYLOAD}",
                      f"Which way does river {i} flow? {PAYLOAD}", ["north"]) for i in range(n)]


def predictions(held_out: list[QAExample], right: int) -> list[Prediction]:
    return [Prediction(e.id, "north" if i < right else f"south {PAYLOAD}", "x", float(i < right), float(i < right))
            for i, e in enumerate(held_out)]


def shared_run(root: Path) -> list[QAExample]:
    """What a run and an experiment have in common: data, answers, feedback, base evaluation."""
    train, held_out = examples("t", 4), examples("e", 10)
    save_config(RunLayout(root).data_config, {"data": DataConfig()})  # what `laffi prepare` writes first
    write_records(root / "data" / "train.jsonl", train)
    write_records(root / "data" / "eval.jsonl", held_out)
    write_records(root / "answers.jsonl", [Answer(e.id, "south", "south", "m") for e in train])
    notes = [Feedback(e.id, "south", "incorrect", f"Wrong: it flows north. {PAYLOAD}", "ai", "reference")
             for e in train]
    write_records(root / "feedback.jsonl", notes)
    write_records(root / "eval" / "base" / "predictions.jsonl", predictions(held_out, 2))
    return held_out


def logs(path: Path, start: float) -> None:
    write_records(path, [TrainLogEntry(s, start / s, 1e-4, 100.0, 10.0, float(s)) for s in range(1, 9)])


@pytest.fixture
def run_dir(tmp_path) -> Path:
    root = tmp_path / "run"
    held_out = shared_run(root)
    results = {}
    for system, right in (("base", 2), ("sft", 4), ("laffi", 5)):
        write_records(root / "eval" / system / "predictions.jsonl", predictions(held_out, right))
        interval = [10.0 * right - 8, 10.0 * right + 9]
        results[system] = {"exact": 10.0 * right, "f1": 10.0 * right, "total": 10, "exact_ci95": interval,
                           "f1_ci95": interval}
    (root / "results.json").write_text(json.dumps(results))
    (root / "run_info.json").write_text(json.dumps({"paired_differences": {
        "laffi - sft": {"exact": [10.0, -5.0, 25.0], "f1": [10.0, -5.0, 25.0]}}}))
    logs(root / "adapters" / "sft" / "train_log.jsonl", 3.0)
    logs(root / "adapters" / "laffi" / "train_log.jsonl", 5.0)
    rng = np.random.default_rng(0)
    attention = {"system": "laffi", "window": 8, "prompts": ["e0", "e1"], "adapter": f"adapters/{PAYLOAD}"}
    for model in ("base", "laffi"):
        attention[model] = {m: rng.random((3, 4)).tolist() for m in ("entropy", "distance", "local_share", "gold_mass")}
    (root / "attention" / "laffi").mkdir(parents=True)
    (root / "attention" / "laffi" / "attention.json").write_text(json.dumps(attention))
    for name, png in attention_figures(attention).items():
        (root / "attention" / "laffi" / f"{name}.png").write_bytes(png)
    (root / "config.yaml").write_text(f"model:\n  name: '{PAYLOAD}'\n")
    return root


SYSTEMS = {"sft": 0, "laffi": 1}  # held-out questions right beyond SFT's
BUDGETS = (4, 8)
SEEDS = (0, 1, 2)


def dev_f1(system: str, budget: int, seed: int) -> float:
    """SFT is best on dev at 8 steps, LaFFi at 4."""
    return 30.0 + seed + (budget if system == "sft" else -budget)


def right(system: str, size: int, seed: int) -> int:
    """Held-out questions right at the chosen budget: SFT size 8 seed 0: 4, LaFFi 5; seed 2: 6 and 7."""
    return 2 + SYSTEMS[system] + seed + size // 4


@pytest.fixture
def experiment_dir(tmp_path) -> Path:
    """An experiment directory as `laffi experiment` leaves it, its summary from the real aggregation:
    base, SFT and LaFFi at two sizes, two budgets and three seeds; every job's train log, the chosen
    jobs' held-out predictions, and an older plan's job that the report must leave out."""
    root = tmp_path / "experiment"
    held_out = shared_run(root)
    (root / "feedback.jsonl").rename(root / "feedback.reference.jsonl")
    trials, jobs = [], {}
    for size in (4, 8):
        cell = {"size": size, "annotator": "reference", "human_ratio": 0.0, "content": "verdict+explanation+answer"}
        for system in SYSTEMS:
            for budget in BUDGETS:
                for seed in SEEDS:
                    job = f"jobs/{system}-n{size}-b{budget}-s{seed}"
                    logs(root / job / "adapters" / system / "train_log.jsonl", 2.0 + SYSTEMS[system] + seed)
                    trials.append(Trial(cell, system, budget, seed, {"exact": 0.0, "f1": dev_f1(system, budget, seed)},
                                        10.0 * budget, 100 * budget, job))
                    label = f"{system}, size={size}, annotator=reference, human_ratio=0.0, " \
                            f"content=verdict+explanation+answer, budget={budget}, seed={seed}"
                    jobs[job] = {"dir": job, "system": system, "steps": budget, "seed": seed,
                                 "trained_this_run": True, "heldout": False, "cells": [label]}
    choices = choose_budgets(trials)
    runs = []
    for trial in trials:
        if choices[tuple(trial.cell.values()), trial.system] != trial.budget:
            continue
        job, system = trial.job, trial.system
        k = right(system, trial.cell["size"], trial.seed)
        write_records(root / job / "eval" / system / "predictions.jsonl", predictions(held_out, k))
        jobs[job]["heldout"] = True
        scores = [float(i < k) for i in range(len(held_out))]
        runs.append(CellRun(trial.cell, system, trial.seed, scores, scores, {
            "eval": f"{job}/eval/{system}", "predictions": f"{job}/eval/{system}/predictions.jsonl",
            "adapter": f"{job}/adapters/{system}"}))
    base_scores = [float(i < 2) for i in range(len(held_out))]
    base = {"name": "base", "exact": base_scores, "f1": base_scores, "dev": {"exact": 10.0, "f1": 15.0}}
    summary = aggregate(runs, trials, choices, base, ["size", "annotator", "human_ratio", "content"],
                        [e.title for e in held_out], "sft", {"sft": "sft", "laffi": "laffi"}, samples=200)
    summary["base"]["system"] = "base"
    summary.update(plan="0123456789", seeds=list(SEEDS), budgets=list(BUDGETS), dev_questions=20, reselected=[],
                   jobs=list(jobs.values()), stage_seconds={})
    ExperimentLayout(root).summary_json.write_text(json.dumps(summary))
    ExperimentLayout(root).experiment_config.write_text(
        f"# {PAYLOAD}\nsystems: [base, sft, laffi]\nbaseline: sft\nseeds: [0, 1, 2]\nbudgets: [4, 8]\n"
        "grid:\n  size: [4, 8]\n")
    logs(root / "jobs" / "sft-older-plan" / "adapters" / "sft" / "train_log.jsonl", 9.0)  # not in this plan
    return root


def images(page: str) -> list[str]:
    return re.findall(r'<img alt="[^"]*" src="([^"]*)"', page)


def test_a_run_report_is_self_contained_and_escaped(run_dir):
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    # results chart, loss curves, 4 attention heatmaps and the per-layer lines, nothing else
    assert len(images(page)) == 1 + 1 + 5 == page.count("<img ")
    assert all(src.startswith("data:image/png;base64,") for src in images(page))
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert "<script" not in page and "<img src=x" not in page
    assert page.count("&lt;script&gt;window.pwned=1&lt;/script&gt;") >= 4  # question, answer, feedback, config
    for table in ("results", "feedback-samples", "prediction-samples"):
        assert f"<table id={table}>" in page
    assert "laffi - sft" in page and "+10.00" in page


def test_a_run_built_stage_by_stage_reports_each_evaluation_s_scores(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").unlink()  # only `laffi run` writes it
    (run_dir / "run_info.json").unlink()
    for system, metrics in results.items():
        (run_dir / "eval" / system / "metrics.json").write_text(json.dumps({**metrics, "split": "heldout"}))
    (run_dir / "config.yaml").write_text("systems:\n  names: [base, sft, laffi]\n")
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "<h2>Results</h2>" in page and "Read from each system&#x27;s eval/SYSTEM/metrics.json" in page
    assert [row[0] for row in body_rows(page, "results")] == ["base", "sft", "laffi"]  # as systems.names orders them


def body_rows(page: str, table: str) -> list[list[str]]:
    body = re.search(rf"<table id={table}>.*?<tbody>(.*?)</tbody>", page).group(1)
    return [re.findall(r"<td(?: class=num)?>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_an_experiment_report_has_its_tables_charts_and_samples(experiment_dir):
    assert main(["report", str(experiment_dir)]) == 0
    page = (experiment_dir / "report.html").read_text()
    assert "<title>LaFFi experiment: experiment</title>" in page
    # the experiment's charts (dev curves, held-out F1, differences) and one chart of loss curves
    assert len(images(page)) == 3 + 1 == page.count("<img ")
    for title in ("Dev F1 at each budget (mean over seeds; dots: seeds)", "Held-out F1 at the chosen budget",
                  "Each system - sft"):
        assert f"<h3>{title}</h3><img alt=\"{title}\"" in page
    assert '<img alt="training loss per step for each adapter"' in page
    # the loss curves are this plan's jobs: 2 systems x 2 sizes x 2 budgets x 3 seeds, not the older plan's
    summary = json.loads((experiment_dir / "experiment.json").read_text())
    assert sorted(_loss_logs(experiment_dir)) == sorted(job["cells"][0] for job in summary["jobs"])
    assert len(summary["jobs"]) == 24 and "24 trainings (24 trained by the last invocation" in page
    # base, then each system at each size at its budget chosen on dev: SFT 8 steps, LaFFi 4
    experiment = body_rows(page, "experiment")
    assert [row[:4] for row in experiment] == [["", "base", "", "untrained"], ["0", "sft", "4", "8"],
                                               ["1", "laffi", "4", "4"], ["2", "sft", "8", "8"], ["3", "laffi", "8", "4"]]
    assert experiment[0][4] == "15.00" and experiment[1][4] == "39.00 (1.00)" and experiment[2][4] == "27.00 (1.00)"
    assert [row[-1] for row in experiment] == ["", "chosen budget is the largest tried", "",
                                               "chosen budget is the largest tried", ""]
    assert "fixed: annotator=reference, human_ratio=0.0, content=verdict+explanation+answer" in page
    # every system - SFT, paired: the base model against each SFT cell, then LaFFi, +1 question of 10
    differences = body_rows(page, "differences")
    # (the base rows' order among themselves is left open: aggregate puts them first in reverse cell order)
    assert sorted(row[:3] for row in differences[:2]) == [["base", "4", "-20.00"], ["base", "8", "-30.00"]]
    assert [row[:3] for row in differences[2:]] == [["laffi", "4", "+10.00"], ["laffi", "8", "+10.00"]]
    # the dev curves: each system and size at both budgets
    curves = body_rows(page, "dev-curves")
    assert [row[:2] for row in curves] == [["sft", "4"], ["laffi", "4"], ["sft", "8"], ["laffi", "8"]]
    assert curves[0][2:] == ["35.00 (34.0 / 35.0 / 36.0)", "39.00 (38.0 / 39.0 / 40.0)"]
    # the held-out sample: base and one cell per system, at the largest size and its first seed
    header = re.search(r"id=prediction-samples><thead><tr>(.*?)</tr>", page).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == ["question", "gold", "base", "sft", "laffi"]
    # ...base right on 2 questions, SFT (size 8, seed 0) on 4, LaFFi on 5; seed 2 would be 6 and 7
    assert page.count("north  [EM 1, F1 1.00]") == 2 + 4 + 5
    # the configuration shown is experiment.yaml, escaped
    assert "<p class=note>experiment.yaml</p><pre># &lt;script&gt;window.pwned=1&lt;/script&gt;" in page
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)


def test_the_report_shows_the_config_of_the_plan_its_numbers_come_from(experiment_dir):
    layout = ExperimentLayout(experiment_dir)
    plan = json.loads(layout.summary_json.read_text())["plan"]
    layout.plan_summary(plan, ".yaml").parent.mkdir(exist_ok=True)
    layout.plan_summary(plan, ".yaml").write_text("systems: [base, sft, laffi]\nbudgets: [4, 8]\n")
    layout.experiment_config.write_text("systems: [base, sft]\nbudgets: [64]\n")  # a later --dev-only screen's
    assert main(["report", str(experiment_dir)]) == 0
    page = (experiment_dir / "report.html").read_text()
    assert f"<p class=note>{plan}.yaml</p><pre>systems: [base, sft, laffi]" in page and "budgets: [64]" not in page


def test_the_reports_render_in_chromium_with_their_tables_and_every_image_loaded(run_dir, experiment_dir, browser,
                                                                                   tmp_path):
    for root, table, rows in ((run_dir, "results", 3), (experiment_dir, "experiment", 1 + 4)):  # systems; base + cells
        assert main(["report", str(root)]) == 0
        browser.get((root / "report.html").resolve().as_uri())
        assert browser.execute_script(f"return document.querySelectorAll('#{table} tbody tr').length") == rows
        loaded = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(loaded) == len(images((root / "report.html").read_text())) >= 3
        assert all(complete and width > 0 and height > 0 for complete, width, height in loaded)
        assert browser.execute_script("return window.pwned === undefined")  # the payloads stayed text
        shot = tmp_path / f"{root.name}.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000  # a page, not a blank


def test_a_chart_of_an_interval_of_no_width_around_an_unrounded_mean_is_drawn():
    # one question answered "Denver" to gold "Denver Broncos": F1 66.666..., its interval stored as [66.67, 66.67]
    from laffi.report.plots import error_bar, results_chart

    assert error_bar(66.66666666666666, [66.67, 66.67]) == (0.0, pytest.approx(0.0033333, abs=1e-6))
    png = results_chart({"base": {"exact": 0.0, "exact_ci95": [0.0, 0.0], "f1": 66.66666666666666,
                                  "f1_ci95": [66.67, 66.67]}})
    assert png.startswith(b"\x89PNG")
