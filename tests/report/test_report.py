"""`laffi report` on a run and on an ablation: a self-contained page whose text is escaped, and which
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
from laffi.experiments.aggregate import CellRun, aggregate
from laffi.layout import RunLayout
from laffi.records import Answer, Feedback, Prediction, QAExample, TrainLogEntry, write_records
from laffi.report.plots import attention_figures

PAYLOAD = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def examples(prefix: str, n: int) -> list[QAExample]:
    return [QAExample(f"{prefix}{i}", f"Article {i}", f"The river {i} flows north. {PAYLOAD}",
                      f"Which way does river {i} flow? {PAYLOAD}", ["north"]) for i in range(n)]


def predictions(held_out: list[QAExample], right: int) -> list[Prediction]:
    return [Prediction(e.id, "north" if i < right else f"south {PAYLOAD}", "x", float(i < right), float(i < right))
            for i, e in enumerate(held_out)]


def shared_run(root: Path) -> list[QAExample]:
    """What a run and an ablation have in common: data, answers, feedback, base evaluation."""
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


@pytest.fixture
def ablation_dir(tmp_path) -> Path:
    root = tmp_path / "ablation"
    held_out = shared_run(root)
    (root / "feedback.jsonl").rename(root / "feedback.reference.jsonl")
    runs, jobs = [], []
    for system, offset in (("sft", 0), ("laffi", 1)):
        for size in (4, 8):
            for seed in (0, 1, 2):
                job = f"jobs/{system}-n{size}-s{seed}"
                right = 2 + offset + seed + size // 4
                write_records(root / job / "eval" / system / "predictions.jsonl", predictions(held_out, right))
                logs(root / job / "adapters" / system / "train_log.jsonl", 2.0 + offset + seed)
                cell = {"system": system, "size": size, "annotator": "reference", "human_ratio": 0.0,
                        "content": "verdict+explanation+answer"}
                scores = [float(i < right) for i in range(10)]
                runs.append(CellRun(cell, seed, scores, scores, {
                    "eval": f"{job}/eval/{system}", "predictions": f"{job}/eval/{system}/predictions.jsonl",
                    "adapter": f"{job}/adapters/{system}"}))
                jobs.append({"dir": job, "system": system, "seed": seed, "trained_this_run": True,
                             "cell": cell, "cells": ["..."]})
    summary = aggregate(runs, samples=200)
    summary.update(base={"exact": 20.0, "f1": 20.0, "exact_ci95": [0.0, 45.0], "f1_ci95": [0.0, 45.0], "total": 10},
                   jobs=jobs)
    (root / "ablation.json").write_text(json.dumps(summary))
    (root / "ablate.yaml").write_text("grid:\n  size: [4, 8]\n")
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


def test_an_ablation_report_has_its_table_differences_and_charts(ablation_dir):
    assert main(["report", str(ablation_dir)]) == 0
    page = (ablation_dir / "report.html").read_text()
    # a chart by size, the paired differences, the loss curves
    assert len(images(page)) == 3
    assert "id=ablation" in page and "id=differences" in page and "LaFFi ablation" in page
    assert "trained by the last invocation" in page
    # the held-out sample shows base and one cell per system, at the largest size
    header = re.search(r"id=prediction-samples><thead><tr>(.*?)</tr>", page).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == ["question", "gold", "base", "sft", "laffi"]
    # ...from seed 0: base right on 2 questions, SFT (size 8, seed 0) on 4, LaFFi on 5; seed 2 would be 6 and 7
    assert page.count("north  [EM 1, F1 1.00]") == 2 + 4 + 5


def test_an_ablation_json_of_an_older_laffi_is_refused_with_what_to_do(ablation_dir, tmp_path, capsys):
    old = tmp_path / "old"
    save_config(RunLayout(old).data_config, {"data": DataConfig()})  # a run directory
    summary = json.loads((ablation_dir / "ablation.json").read_text())
    del summary["axes"]
    (old / "ablation.json").write_text(json.dumps(summary))
    assert main(["report", str(old)]) == 2
    err = capsys.readouterr().err
    assert "written by an older laffi" in err and "rerun `laffi ablate" in err and err.count("\n") == 1


def test_the_reports_render_in_chromium_with_their_tables_and_every_image_loaded(run_dir, ablation_dir, browser,
                                                                                   tmp_path):
    for root, table, rows in ((run_dir, "results", 3), (ablation_dir, "ablation", 1 + 4)):  # systems; base + cells
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
