"""The tables of numbers, built once and rendered as Markdown (results.md, ablation.md, `laffi stats`)
and as HTML (report.html): exact text on small hand-made inputs.

    python -m pytest tests/report/test_tables.py
"""

from __future__ import annotations

import re

from laffi.report.html import table
from laffi.report.tables import (
    ablation_differences_table,
    ablation_markdown,
    ablation_table,
    markdown,
    paired_differences_table,
    results_table,
    stats_markdown,
    varying_axes,
)

RESULTS = {"base": {"exact": 20.0, "f1": 31.456, "total": 10, "exact_ci95": [0.0, 45.0], "f1_ci95": [10.5, 52.25]},
           "laffi": {"exact": 50.0, "f1": 61.0, "total": 10, "exact_ci95": [20.0, 80.0], "f1_ci95": [33.0, 88.0]}}


def cell(system: str, size: int, exact: float, same: list[int]) -> dict:
    return {"system": system, "size": size, "annotator": "reference", "human_ratio": 0.0,
            "content": "verdict", "seeds": [0, 1], "questions": 10,
            "exact": exact, "exact_ci95": [exact - 10, exact + 10], "f1": exact + 5, "f1_ci95": [exact - 5, exact + 15],
            "per_seed": [{"seed": 0, "exact": exact - 1, "f1": 0.0}, {"seed": 1, "exact": exact + 1, "f1": 0.0}],
            "same_adapters_as": same}


SUMMARY = {"axes": ["system", "size", "annotator", "human_ratio", "content"],
           "cells": [cell("sft", 4, 30.0, []), cell("laffi", 4, 40.0, []), cell("sft", 8, 35.0, [0])],
           "differences": [{"size": 4, "annotator": "reference", "human_ratio": 0.0, "content": "verdict",
                            "seeds": [0, 1], "exact": [10.0, -2.5, 20.0], "f1": [0.0, -1.0, 1.25]}],
           "base": {"exact": 20.0, "f1": 25.0, "exact_ci95": [5.0, 35.0], "f1_ci95": [10.0, 40.0], "total": 10}}


def test_markdown_aligns_numeric_columns_right():
    assert markdown(["a", "n"], [["x", "1"], ["y", "22"]], {1}) == "| a | n |\n|---|---:|\n| x | 1 |\n| y | 22 |"
    assert markdown(["a"], []) == "| a |\n|---|"


def test_results_and_paired_differences():
    assert markdown(*results_table(RESULTS)) == "\n".join([
        "| system | EM | EM 95% CI | F1 | F1 95% CI |",
        "|---|---:|---|---:|---|",
        "| base | 20.00 | 0.00-45.00 | 31.46 | 10.50-52.25 |",
        "| laffi | 50.00 | 20.00-80.00 | 61.00 | 33.00-88.00 |"])
    differences = {"laffi - base": {"exact": [30.0, 5.0, 55.5], "f1": [-1.0, -20.25, 0.0]}}
    assert markdown(*paired_differences_table(differences)) == "\n".join([
        "| comparison | EM diff | EM 95% CI | F1 diff | F1 95% CI |",
        "|---|---:|---|---:|---|",
        "| laffi - base | +30.00 | +5.00 to +55.50 | -1.00 | -20.25 to +0.00 |"])


def test_ablation_markdown():
    assert ablation_markdown(SUMMARY) == "\n".join([
        "# LaFFi ablation",
        "",
        "Held-out questions: 10; seeds: 0, 1; fixed: annotator=reference, human_ratio=0.0, content=verdict",
        "",
        "Mean over seeds, 95% interval over seeds and held-out questions (percent).",
        "",
        "| # | system | size | EM | EM 95% CI | F1 | F1 95% CI | EM per seed | note |",
        "|---:|---|---|---:|---|---:|---|---|---|",
        "|  | base |  | 20.00 | 5.00-35.00 | 25.00 | 10.00-40.00 |  | no training |",
        "| 0 | sft | 4 | 30.00 | 20.00-40.00 | 35.00 | 25.00-45.00 | 29.0 / 31.0 |  |",
        "| 1 | laffi | 4 | 40.00 | 30.00-50.00 | 45.00 | 35.00-55.00 | 39.0 / 41.0 |  |",
        "| 2 | sft | 8 | 35.00 | 25.00-45.00 | 40.00 | 30.00-50.00 | 34.0 / 36.0 | same adapters as #0 |",
        "",
        "Each system - SFT, paired by seed and question (percentage points, 95% interval):",
        "",
        "| size | EM diff | EM 95% CI | F1 diff | F1 95% CI |",
        "|---|---:|---|---:|---|",
        "| 4 | +10.00 | -2.50 to +20.00 | +0.00 | -1.00 to +1.25 |",
        ""])
    without = {**SUMMARY, "differences": []}
    del without["base"]
    text = ablation_markdown(without)
    assert "base" not in text and "LaFFi - SFT" not in text and text.count("\n| ") == 1 + 3


def test_varying_axes_come_from_the_summary():
    assert varying_axes(SUMMARY) == ["system", "size"]
    assert varying_axes({**SUMMARY, "axes": ["size", "system"]}) == ["size", "system"]


def test_html_shows_the_cells_of_the_markdown():
    for built in (results_table(RESULTS), ablation_table(SUMMARY), ablation_differences_table(SUMMARY)):
        page = table(*built, id="t")
        assert re.findall(r"<th>(.*?)</th>", page) == built.header
        cells = re.findall(r"<td(?: class=num)?>(.*?)</td>", page)
        assert cells == [c for row in built.rows for c in row]
        numeric = {i for row in re.findall(r"<tr>(.*?)</tr>", page)[1:] for i, c in
                   enumerate(re.findall(r"<td( class=num)?>", row)) if c}
        assert numeric == set(built.numeric)


def test_stats_markdown():
    result = {"raters": {"reference": {"correct": 2, "incorrect": 1}, "ann": {"partially correct": 1}},
              "pairs": [{"a": "ann", "b": "reference", "answers": 1, "agreement": 0.0, "kappa": None},
                        {"a": "llm", "b": "reference", "answers": 3, "agreement": 66.67, "kappa": 0.4}]}
    assert stats_markdown(result) == "\n".join([
        "| rater | answers | correct | partially correct | incorrect |",
        "|---|---:|---:|---:|---:|",
        "| reference | 3 | 2 | 0 | 1 |",
        "| ann | 1 | 0 | 1 | 0 |",
        "",
        "| rater a | rater b | same answers | agreement % | Cohen's kappa |",
        "|---|---|---:|---:|---:|",
        "| ann | reference | 1 | 0.0 | n/a |",
        "| llm | reference | 3 | 66.7 | 0.400 |"])
    assert stats_markdown({**result, "pairs": []}).endswith(
        "|---|---|---:|---:|---:|\n| (no two raters judged the same answers) |  |  |  |  |")
