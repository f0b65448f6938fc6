"""The tables of numbers, built once and rendered as Markdown (results.md, experiment.md, `laffi stats`)
and as HTML (report.html): exact text on small hand-made inputs.

    python -m pytest tests/report/test_tables.py
"""

from __future__ import annotations

import re

from laffi.report.html import table
from laffi.report.tables import (
    dev_curve_table,
    experiment_differences_table,
    experiment_markdown,
    experiment_table,
    fixed_axes,
    markdown,
    paired_differences_table,
    results_table,
    stats_markdown,
    varying_axes,
)

RESULTS = {"base": {"exact": 20.0, "f1": 31.456, "total": 10, "exact_ci95": [0.0, 45.0], "f1_ci95": [10.5, 52.25]},
           "laffi": {"exact": 50.0, "f1": 61.0, "total": 10, "exact_ci95": [20.0, 80.0], "f1_ci95": [33.0, 88.0]}}

FULL = "verdict+explanation+answer"
COORDINATES = {"size": 32, "annotator": "reference", "human_ratio": 0.0}
# (system, content) -> budget -> seed -> dev F1: what the budgets were chosen on
DEV = {("sft", "verdict"): {8: {0: 28.0, 1: 29.6}, 16: {0: 31.7, 1: 29.3}},
       ("laffi", "verdict"): {8: {0: 33.5, 1: 32.5}, 16: {0: 30.0, 1: 31.0}},
       ("laffi-aux-half", "verdict"): {8: {0: 29.0, 1: 30.0}, 16: {0: 32.0, 1: 30.0}},
       ("sft", FULL): {8: {0: 28.0, 1: 29.6}, 16: {0: 31.7, 1: 29.3}}}


def cell(system: str, family: str, content: str, budget: int, dev_sd: float, exact: float, seconds: float,
         tokens: int, best: bool = False, same: list[int] | None = None) -> dict:
    """One system in one cell, as laffi.experiments.aggregate writes it: EM and F1 intervals around the
    mean (F1 = EM + 5), the article interval wider by 2.5 points each side."""
    dev = DEV[system, content][budget]
    f1 = exact + 5
    return {"system": system, "family": family, **COORDINATES, "content": content, "budget": budget,
            "budgets": [8, 16], "seeds": [0, 1], "questions": 10,
            "dev": {"f1": round(sum(dev.values()) / 2, 2), "f1_sd": dev_sd, "exact": 20.0,
                    "per_seed": [{"seed": s, "exact": 20.0, "f1": v} for s, v in dev.items()]},
            "cost": {"train_seconds": seconds, "train_tokens": tokens, "selection_seconds": 2 * seconds,
                     "selection_tokens": 3 * tokens},
            "exact": exact, "exact_ci95": [exact - 10, exact + 10], "exact_ci95_articles": [exact - 12.5, exact + 12.5],
            "f1": f1, "f1_ci95": [f1 - 10, f1 + 10], "f1_ci95_articles": [f1 - 12.5, f1 + 12.5],
            "per_seed": [{"seed": 0, "exact": exact - 1, "f1": f1 - 1}, {"seed": 1, "exact": exact + 1, "f1": f1 + 1}],
            "artifacts": {}, "best_of_family": best, "same_adapters_as": same or []}


def difference(system: str, content: str, exact: list[float], f1: list[float]) -> dict:
    return {"system": system, **COORDINATES, "content": content, "seeds": [0, 1], "exact": exact,
            "exact_articles": [exact[1] - 1, exact[2] + 1], "f1": f1, "f1_articles": [f1[1] - 1.5, f1[2] + 1.5]}


SUMMARY = {
    "axes": ["size", "annotator", "human_ratio", "content"],
    "baseline": "sft",
    "cells": [cell("sft", "sft", "verdict", 16, 1.7, 30.0, 61.4, 12345),
              cell("laffi", "laffi", "verdict", 8, 0.71, 40.0, 40.6, 9876, best=True),
              cell("laffi-aux-half", "laffi", "verdict", 16, 1.41, 38.0, 120.0, 1234567),
              cell("sft", "sft", FULL, 16, 1.7, 30.0, 61.4, 12345, same=[0])],
    "differences": [difference("base", "verdict", [-10.0, -20.0, 0.0], [-10.0, -21.5, 1.25]),
                    difference("base", FULL, [-10.0, -20.0, 0.0], [-10.0, -21.5, 1.25]),
                    difference("laffi", "verdict", [10.0, -2.5, 20.0], [10.0, 0.0, 19.75]),
                    difference("laffi-aux-half", "verdict", [8.0, -4.0, 18.5], [8.0, -3.0, 17.0])],
    "dev_curves": [{"system": system, **COORDINATES, "content": content, "budget": budget, "per_seed": per_seed,
                    "f1": round(sum(per_seed.values()) / 2, 2)}
                   for (system, content), curve in DEV.items() for budget, per_seed in curve.items()],
    "base": {"system": "base", "questions": 10, "dev": {"exact": 15.0, "f1": 21.0},
             "exact": 20.0, "exact_ci95": [5.0, 35.0], "exact_ci95_articles": [2.5, 37.5],
             "f1": 25.0, "f1_ci95": [10.0, 40.0], "f1_ci95_articles": [8.0, 42.0]},
    "seeds": [0, 1], "budgets": [8, 16], "dev_questions": 20, "reselected": [],
}


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


def test_experiment_markdown():
    assert experiment_markdown(SUMMARY) == "\n".join([
        "# laffi experiment",
        "",
        "Held-out questions: 10; dev questions: 20; seeds: 0, 1; budgets tried: 8, 16 steps; "
        "fixed: size=32, annotator=reference, human_ratio=0.0",
        "",
        "Each system's budget (optimizer steps, a whole schedule each) is the one with the best mean dev F1 over "
        "seeds. Held-out scores at that budget: mean over seeds, 95% interval over seeds and questions (and over "
        "seeds and articles).",
        "",
        "| # | system | content | budget (steps) | dev F1 (sd) | held-out EM | EM 95% CI | held-out F1 | F1 95% CI "
        "| F1 95% CI, articles | train s | train tokens | note |",
        "|---:|---|---|---:|---:|---:|---|---:|---|---|---:|---:|---|",
        "|  | base |  | untrained | 21.00 | 20.00 | 5.00-35.00 | 25.00 | 10.00-40.00 | 8.00-42.00 |  |  |  |",
        "| 0 | sft | verdict | 16 | 30.50 (1.70) | 30.00 | 20.00-40.00 | 35.00 | 25.00-45.00 | 22.50-47.50 | 61 "
        "| 12,345 | chosen budget is the largest tried |",
        "| 1 | laffi | verdict | 8 | 33.00 (0.71) | 40.00 | 30.00-50.00 | 45.00 | 35.00-55.00 | 32.50-57.50 | 41 "
        "| 9,876 | best laffi on dev |",
        "| 2 | laffi-aux-half | verdict | 16 | 31.00 (1.41) | 38.00 | 28.00-48.00 | 43.00 | 33.00-53.00 "
        "| 30.50-55.50 | 120 | 1,234,567 | chosen budget is the largest tried |",
        "| 3 | sft | verdict+explanation+answer | 16 | 30.50 (1.70) | 30.00 | 20.00-40.00 | 35.00 | 25.00-45.00 "
        "| 22.50-47.50 | 61 | 12,345 | chosen budget is the largest tried; same adapters as #0 |",
        "",
        "Each system - sft, each at its chosen budget, paired by seed and question (percentage points, 95% "
        "interval):",
        "",
        "| system | content | EM diff | EM 95% CI | F1 diff | F1 95% CI | F1 95% CI, articles |",
        "|---|---|---:|---|---:|---|---|",
        "| base | verdict | -10.00 | -20.00 to +0.00 | -10.00 | -21.50 to +1.25 | -23.00 to +2.75 |",
        "| base | verdict+explanation+answer | -10.00 | -20.00 to +0.00 | -10.00 | -21.50 to +1.25 "
        "| -23.00 to +2.75 |",
        "| laffi | verdict | +10.00 | -2.50 to +20.00 | +10.00 | +0.00 to +19.75 | -1.50 to +21.25 |",
        "| laffi-aux-half | verdict | +8.00 | -4.00 to +18.50 | +8.00 | -3.00 to +17.00 | -4.50 to +18.50 |",
        "",
        "Dev F1 at every budget (mean, then per seed): what the budgets were chosen on.",
        "",
        "| system | content | 8 steps | 16 steps |",
        "|---|---|---:|---:|",
        "| sft | verdict | 28.80 (28.0 / 29.6) | 30.50 (31.7 / 29.3) |",
        "| laffi | verdict | 33.00 (33.5 / 32.5) | 30.50 (30.0 / 31.0) |",
        "| laffi-aux-half | verdict | 29.50 (29.0 / 30.0) | 31.00 (32.0 / 30.0) |",
        "| sft | verdict+explanation+answer | 28.80 (28.0 / 29.6) | 30.50 (31.7 / 29.3) |",
        ""])


def test_experiment_markdown_without_base_differences_or_a_second_budget():
    # one seed and one budget: no sd, nothing "largest"; a curve point missing is an empty cell
    one = {**SUMMARY, "differences": [], "seeds": [0], "budgets": [16],
           "cells": [{**c, "budgets": [16], "dev": {**c["dev"], "f1_sd": None}} for c in SUMMARY["cells"]],
           "dev_curves": [p for p in SUMMARY["dev_curves"] if p["budget"] == 16][1:]}
    del one["base"]
    text = experiment_markdown(one)
    assert "base" not in text and "Each system - sft" not in text and "largest" not in text
    assert "| 0 | sft | verdict | 16 | 30.50 | 30.00 |" in text
    assert "| 1 | laffi | verdict | 8 | 33.00 | 40.00 |" in text and "| best laffi on dev |" in text
    assert text.endswith("| same adapters as #0 |\n"
                         "\nDev F1 at every budget (mean, then per seed): what the budgets were chosen on.\n\n"
                         "| system | content | 16 steps |\n|---|---|---:|\n"
                         "| laffi | verdict | 30.50 (30.0 / 31.0) |\n"
                         "| laffi-aux-half | verdict | 31.00 (32.0 / 30.0) |\n"
                         "| sft | verdict+explanation+answer | 30.50 (31.7 / 29.3) |\n")
    assert text.count("\n| ") == (1 + 4) + (1 + 3)  # header and rows of the two tables
    # a dev curve that lacks a budget another has: that cell is empty
    gap = {**SUMMARY, "dev_curves": [p for p in SUMMARY["dev_curves"] if (p["system"], p["budget"]) != ("laffi", 16)]}
    assert ["laffi", "verdict", "33.00 (33.5 / 32.5)", ""] in dev_curve_table(gap).rows


def test_a_choice_that_changed_is_noted():
    text = experiment_markdown({**SUMMARY, "reselected": ["sft, size=32", "laffi, size=32"]})
    assert text.endswith("\n\nNote: these choices differ from an earlier one whose held-out scores were written "
                         "(selections.jsonl): sft, size=32, laffi, size=32.\n")


def test_varying_and_fixed_axes_come_from_the_summary():
    assert varying_axes(SUMMARY) == ["content"]
    assert fixed_axes(SUMMARY) == ["size=32", "annotator=reference", "human_ratio=0.0"]
    # a train axis, in the summary's order; values compare as text, so 1e-4 and 0.0001 are one value
    lr = {**SUMMARY, "axes": ["train.lr", "content", "size"],
          "cells": [{**c, "train.lr": lr} for c, lr in zip(SUMMARY["cells"], [1e-4, 0.0001, 3e-4, 1e-4])]}
    assert varying_axes(lr) == ["train.lr", "content"] and fixed_axes(lr) == ["size=32"]
    same = {**lr, "cells": [{**c, "train.lr": 0.0001} for c in lr["cells"]]}
    assert varying_axes(same) == ["content"] and fixed_axes(same) == ["train.lr=0.0001", "size=32"]
    # the columns follow: an lr column before the content, in both tables
    assert experiment_table(lr).header[:4] == ["#", "system", "train.lr", "content"]
    assert experiment_table(lr).rows[1][:4] == ["0", "sft", "0.0001", "verdict"]


def test_html_shows_the_cells_of_the_markdown():
    for built in (results_table(RESULTS), experiment_table(SUMMARY), experiment_differences_table(SUMMARY),
                  dev_curve_table(SUMMARY)):
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
