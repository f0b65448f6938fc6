"""The ablation's aggregation on a fixed grid of synthetic results: means, intervals, paired
differences, and which cells share which artifacts.

    python -m pytest tests/experiments/test_aggregate.py
"""

from __future__ import annotations

import numpy as np
import pytest

from laffi.analysis.bootstrap import bootstrap_interval
from laffi.experiments.aggregate import CellRun, aggregate
from laffi.experiments.grid import AXES
from laffi.report.tables import ablation_markdown

QUESTIONS = 10


def cell(system, size, content="verdict+explanation+answer"):
    return {"system": system, "size": size, "annotator": "reference", "human_ratio": 0.0, "content": content}


def artifacts(system, size, content, seed):
    # SFT does not read the feedback, so its set and adapter are the same under both contents
    tag = f"{system}-n{size}-s{seed}" + ("" if system == "sft" else f"-{content}")
    return {"answers": "answers.jsonl", "base_eval": "eval/base", "feedback": "feedback.reference.jsonl",
            "adapter": f"jobs/{tag}/adapters/{system}"}


def grid() -> list[CellRun]:
    """2 systems x 2 sizes x 2 contents x 3 seeds; EM of a cell-seed is known exactly:
    the first k of 10 questions right, k = 1 + seed (+2 for LaFFi, +3 for size 8, +1 for LaFFi verdict)."""
    runs = []
    for system in ("sft", "laffi"):
        for size in (4, 8):
            for content in ("verdict", "verdict+explanation+answer"):
                for seed in (0, 1, 2):
                    right = 1 + seed + (2 if system == "laffi" else 0) + (3 if size == 8 else 0)
                    right += 1 if system == "laffi" and content == "verdict" else 0
                    exact = [1.0] * right + [0.0] * (QUESTIONS - right)
                    runs.append(CellRun(cell(system, size, content), seed, exact, [e * 0.5 + 0.25 for e in exact],
                                        artifacts(system, size, content, seed)))
    return runs


def test_means_per_seed_scores_and_cell_order():
    summary = aggregate(grid(), samples=500, seed=0)
    assert summary["axes"] == list(AXES)  # ablation.json names its grid's axes
    cells = {(c["system"], c["size"], c["content"]): c for c in summary["cells"]}
    assert len(cells) == 8
    sft4 = cells["sft", 4, "verdict"]
    assert [s["exact"] for s in sft4["per_seed"]] == [10.0, 20.0, 30.0] and sft4["seeds"] == [0, 1, 2]
    assert sft4["exact"] == 20.0 and sft4["f1"] == pytest.approx(0.25 * 100 + 0.5 * 20.0)
    assert cells["laffi", 8, "verdict"]["exact"] == 20.0 + 20 + 30 + 10
    assert cells["laffi", 8, "verdict+explanation+answer"]["exact"] == 70.0
    assert sft4["questions"] == QUESTIONS


def test_intervals_contain_the_mean_and_widen_with_the_spread():
    summary = aggregate(grid(), samples=1000, seed=0)
    for c in summary["cells"]:
        for metric in ("exact", "f1"):
            low, high = c[f"{metric}_ci95"]
            assert low <= c[metric] <= high and high > low
    # the same scores with no spread over seeds or questions: the interval is the point
    flat = [CellRun(cell("sft", 4), seed, [0.5] * QUESTIONS, [0.5] * QUESTIONS, {}) for seed in (0, 1, 2)]
    only = aggregate(flat)["cells"][0]
    assert only["exact"] == 50.0 and only["exact_ci95"] == [50.0, 50.0]


def test_two_level_interval_known_cases():
    # seeds only vary (0%, 50%, 100% on every question): of 1000 draws of 3 seeds, more than 2.5% are
    # all-0 (1/27) and all-1 (1/27), so the 95% interval is the whole range
    scores = np.array([[0.0] * 5, [0.5] * 5, [1.0] * 5])
    assert bootstrap_interval(scores, samples=1000, seed=0) == (0.0, 1.0)
    # one seed: exactly the per-question bootstrap interval of `laffi evaluate`, same draws
    values = np.random.default_rng(3).random(40)
    assert bootstrap_interval(values[None, :], samples=700, seed=5) == bootstrap_interval(values, samples=700, seed=5)
    # ...which resamples questions as rng.integers(0, n, size=(samples, n)) from default_rng(seed)
    draws = np.random.default_rng(5).integers(0, 40, size=(700, 40))
    assert bootstrap_interval(values, samples=700, seed=5) == pytest.approx(
        tuple(np.percentile(values[draws].mean(axis=1), [2.5, 97.5])), abs=1e-12)
    # more seeds that agree narrow nothing away: the question spread remains
    assert bootstrap_interval(np.stack([values] * 3), 700, 5)[1] > values.mean()
    for shape in ((2, 2, 2), (3, 0), (0,)):
        with pytest.raises(ValueError, match="seeds x questions"):
            bootstrap_interval(np.zeros(shape))


def test_paired_differences_match_the_known_offsets():
    summary = aggregate(grid(), samples=500, seed=0)
    diffs = {(d["size"], d["content"]): d for d in summary["differences"]}
    assert len(diffs) == 4
    assert diffs[4, "verdict+explanation+answer"]["exact"][0] == 20.0
    assert diffs[8, "verdict"]["exact"][0] == 30.0
    assert diffs[4, "verdict"]["seeds"] == [0, 1, 2]
    # LaFFi is right on a superset of SFT's questions for every seed, so no paired draw is below 0
    # (a draw can miss the 2 questions where they differ: (8/10)^10 = 11% of draws score 0)
    for d in diffs.values():
        assert 0 <= d["exact"][1] <= d["exact"][0] <= d["exact"][2]
    assert diffs[4, "verdict+explanation+answer"]["exact"][1] == 0.0
    # a cell with no SFT partner has no difference
    lone = [r for r in grid() if not (r.cell["system"] == "sft" and r.cell["size"] == 8)]
    assert {d["size"] for d in aggregate(lone, samples=200)["differences"]} == {4}


def test_which_cells_reused_which_artifacts():
    summary = aggregate(grid(), samples=200, seed=0)
    users = summary["artifacts"]
    # every cell run read the same answers, base evaluation and feedback
    for shared in ("answers.jsonl", "eval/base", "feedback.reference.jsonl"):
        assert len(users[shared]["used_by"]) == 24
    # one SFT adapter per (size, seed), shared by the two feedback contents; each LaFFi adapter by one cell run
    sft = users["jobs/sft-n4-s1/adapters/sft"]
    assert sft["kind"] == "adapter" and len(sft["used_by"]) == 2
    assert {u.split("content=")[1] for u in sft["used_by"]} == {"verdict, seed=1", "verdict+explanation+answer, seed=1"}
    assert len(users["jobs/laffi-n4-s1-verdict/adapters/laffi"]["used_by"]) == 1
    assert sum(1 for u in users.values() if u["kind"] == "adapter") == 6 + 12
    # the table marks the SFT cells that repeat another cell's adapters
    cells = summary["cells"]
    repeat = [i for i, c in enumerate(cells) if c["same_adapters_as"]]
    assert [(cells[i]["system"], cells[i]["content"]) for i in repeat] == [("sft", "verdict+explanation+answer")] * 2
    assert all(cells[cells[i]["same_adapters_as"][0]]["content"] == "verdict" for i in repeat)
    table = ablation_markdown(summary)
    assert "same adapters as #0" in table and "| content |" in table.replace(" | ", " | ")
    assert table.count("\n| ") >= 8 + 4


def test_inconsistent_runs_are_refused():
    runs = grid()[:2]
    twice = [runs[0], CellRun(runs[0].cell, runs[0].seed, runs[0].exact, runs[0].f1, runs[0].artifacts)]
    with pytest.raises(ValueError, match="seed"):
        aggregate(twice)
    short = CellRun(runs[1].cell, runs[1].seed, runs[1].exact[:3], runs[1].f1[:3], runs[1].artifacts)
    with pytest.raises(ValueError, match="different numbers of questions"):
        aggregate([runs[0], short])
