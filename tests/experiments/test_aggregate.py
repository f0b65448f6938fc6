"""An experiment's aggregation on synthetic results: each system's budget chosen on dev, its held-out
means and intervals at that budget, the paired differences from the baseline (the base model's with
every seed), which cells are the best of their family on dev, and which share adapters.

    python -m pytest tests/experiments/test_aggregate.py
"""

from __future__ import annotations

import numpy as np
import pytest

from laffi.analysis.bootstrap import article_interval, bootstrap_interval
from laffi.experiments.aggregate import CellRun, Trial, aggregate, choose_budgets, dev_screen
from laffi.experiments.grid import AXES
from laffi.report.tables import dev_screen_markdown, experiment_markdown

QUESTIONS = 10
ARTICLES = [f"article {i // 2}" for i in range(QUESTIONS)]  # 5 articles of 2 questions
SEEDS = (0, 1, 2)
BUDGETS = (8, 4)  # deliberately not in order: the choice must not depend on it
FULL = "verdict+explanation+answer"
FAMILIES = {"sft": "sft", "laffi": "laffi", "laffi-aux-half": "laffi"}


def coordinates(size: int, content: str = FULL) -> dict:
    return {"size": size, "annotator": "reference", "human_ratio": 0.0, "content": content}


def trial(cell: dict, system: str, budget: int, seed: int, f1: float) -> Trial:
    return Trial(cell, system, budget, seed, {"exact": f1 - 10, "f1": f1}, seconds=1.5 * budget + seed,
                 tokens=100 * budget + seed, job=f"jobs/{system}-{budget}-{seed}")


def dev_f1(system: str, budget: int, seed: int) -> float:
    """SFT is best at the largest budget, LaFFi at the smallest, laffi-aux-half ties (the smallest
    wins); LaFFi beats laffi-aux-half on dev although it is worse on the held-out set."""
    if system == "sft":
        return 20.0 + budget + seed
    if system == "laffi":
        return 40.0 - budget + seed
    return 30.0 + seed


def right(system: str, size: int, content: str, seed: int) -> int:
    """Questions right (the first k of 10) of a cell-seed: 1 + seed, +2 for LaFFi, +3 for
    laffi-aux-half, +3 for size 8, +1 for either LaFFi on the verdict only."""
    k = 1 + seed + {"sft": 0, "laffi": 2, "laffi-aux-half": 3}[system] + (3 if size == 8 else 0)
    return k + (1 if system != "sft" and content == "verdict" else 0)


def scores(k: int) -> tuple[list[float], list[float]]:
    exact = [1.0] * k + [0.0] * (QUESTIONS - k)
    return exact, [e * 0.5 + 0.25 for e in exact]


def artifacts(system: str, size: int, content: str, seed: int) -> dict:
    # SFT does not read the feedback, so its set and adapter are the same under both contents
    tag = f"{system}-n{size}-s{seed}" + ("" if system == "sft" else f"-{content}")
    return {"answers": "answers.jsonl", "feedback": "feedback.reference.jsonl",
            "adapter": f"jobs/{tag}/adapters/{system}"}


def grid(systems=("sft", "laffi", "laffi-aux-half")) -> tuple[list[CellRun], list[Trial]]:
    """systems x 2 sizes x 2 contents x 3 seeds, held-out scores at the chosen budget; dev at 2 budgets."""
    runs, trials = [], []
    for size in (4, 8):
        for content in ("verdict", FULL):
            for system in systems:
                cell = coordinates(size, content)
                for seed in SEEDS:
                    runs.append(CellRun(cell, system, seed, *scores(right(system, size, content, seed)),
                                        artifacts(system, size, content, seed)))
                    trials += [trial(cell, system, b, seed, dev_f1(system, b, seed)) for b in BUDGETS]
    return runs, trials


BASE_K = 2
BASE = {"name": "base", "exact": scores(BASE_K)[0], "f1": scores(BASE_K)[1], "dev": {"exact": 10.0, "f1": 15.0}}


def summarize(runs, trials, base=BASE, samples=500, seed=0) -> dict:
    return aggregate(runs, trials, choose_budgets(trials), base, list(AXES), ARTICLES, "sft", FAMILIES, samples, seed)


def key(cell: dict) -> tuple:
    return tuple(cell.values())


# --- choose_budgets ----------------------------------------------------------------------------------

def test_the_budget_with_the_best_mean_dev_f1_over_seeds_is_chosen():
    cell = coordinates(4)
    # seed 0 prefers 8, but the mean over seeds prefers 16
    trials = [trial(cell, "sft", 8, 0, 50.0), trial(cell, "sft", 8, 1, 20.0),
              trial(cell, "sft", 16, 0, 40.0), trial(cell, "sft", 16, 1, 35.0),
              trial(cell, "laffi", 8, 0, 30.0), trial(cell, "laffi", 16, 0, 29.0)]
    assert choose_budgets(trials) == {(key(cell), "sft"): 16, (key(cell), "laffi"): 8}
    # each cell chooses for itself
    other = coordinates(8)
    more = trials + [trial(other, "sft", 8, 0, 60.0), trial(other, "sft", 16, 0, 10.0)]
    assert choose_budgets(more)[key(other), "sft"] == 8 and choose_budgets(more)[key(cell), "sft"] == 16


def test_ties_go_to_the_smallest_budget():
    cell = coordinates(4)
    # 33.1 and 33.2 average to 33.150000000000006 in floating point, 33.3 and 33.0 to 33.15: a tie
    trials = [trial(cell, "sft", 8, 0, 33.1), trial(cell, "sft", 8, 1, 33.2),
              trial(cell, "sft", 4, 0, 33.3), trial(cell, "sft", 4, 1, 33.0),
              trial(cell, "sft", 2, 0, 33.0), trial(cell, "sft", 2, 1, 33.0)]
    assert choose_budgets(trials) == {(key(cell), "sft"): 4}
    assert choose_budgets(trials[:4]) == {(key(cell), "sft"): 4}
    assert choose_budgets(trials[:2] + [trial(cell, "sft", 16, s, 33.15) for s in (0, 1)]) == {(key(cell), "sft"): 8}


def test_only_the_seeds_every_budget_has_are_compared():
    cell = coordinates(4)
    # budget 4 is better on seeds 0 and 1; its seed 2, which budget 8 lacks, would pull its mean below 8's
    trials = [trial(cell, "sft", 4, 0, 50.0), trial(cell, "sft", 4, 1, 50.0), trial(cell, "sft", 4, 2, 0.0),
              trial(cell, "sft", 8, 0, 40.0), trial(cell, "sft", 8, 1, 40.0)]
    assert choose_budgets(trials) == {(key(cell), "sft"): 4}
    # ...and a seed that every budget has does count: with 8's seed 2, the means over 0-2 decide
    assert choose_budgets(trials + [trial(cell, "sft", 8, 2, 40.0)]) == {(key(cell), "sft"): 8}
    with pytest.raises(ValueError, match="no seed has every budget"):
        choose_budgets([trial(cell, "sft", 4, 0, 50.0), trial(cell, "sft", 8, 1, 40.0)])


def test_the_synthetic_grid_chooses_as_designed():
    _, trials = grid()
    choices = choose_budgets(trials)
    assert len(choices) == 4 * 3
    assert {(system, budget) for (_, system), budget in choices.items()} == {
        ("sft", 8), ("laffi", 4), ("laffi-aux-half", 4)}


# --- aggregate ---------------------------------------------------------------------------------------

def test_means_per_seed_scores_dev_cost_and_cell_order():
    runs, trials = grid()
    summary = summarize(runs, trials)
    assert summary["axes"] == list(AXES) and summary["baseline"] == "sft"  # experiment.json names its axes
    cells = summary["cells"]
    # one cell per (coordinates, system), in the order of the runs
    assert [(c["size"], c["content"], c["system"]) for c in cells] == [
        (size, content, system) for size in (4, 8) for content in ("verdict", FULL)
        for system in ("sft", "laffi", "laffi-aux-half")]
    by = {(c["system"], c["size"], c["content"]): c for c in cells}
    sft4 = by["sft", 4, "verdict"]
    assert sft4["seeds"] == [0, 1, 2] and sft4["questions"] == QUESTIONS and sft4["family"] == "sft"
    assert [s["exact"] for s in sft4["per_seed"]] == [10.0, 20.0, 30.0]
    assert [s["f1"] for s in sft4["per_seed"]] == [30.0, 35.0, 40.0]
    assert sft4["exact"] == 20.0 and sft4["f1"] == 35.0
    # 1 + seed + 2 + 3 + 1 and 1 + seed + 3 + 3 questions right: 8 on average over seeds 0-2
    assert by["laffi", 8, "verdict"]["exact"] == by["laffi-aux-half", 8, FULL]["exact"] == 80.0
    assert by["laffi", 8, FULL]["exact"] == 70.0
    # the chosen budget, every budget tried, and the dev numbers at the chosen one only
    assert sft4["budget"] == 8 and sft4["budgets"] == [4, 8]
    assert sft4["dev"] == {"f1": 29.0, "f1_sd": 1.0, "exact": 19.0,
                           "per_seed": [{"seed": s, "exact": 18.0 + s, "f1": 28.0 + s} for s in SEEDS]}
    laffi4 = by["laffi", 4, "verdict"]
    assert laffi4["budget"] == 4 and laffi4["dev"]["f1"] == 37.0
    assert by["laffi-aux-half", 4, "verdict"]["budget"] == 4  # a tie: the smallest
    # cost: the mean training at the chosen budget; the selection: every training of the cell and system
    assert sft4["cost"] == {"train_seconds": 13.0, "train_tokens": 801, "selection_seconds": 3 * 12.0 + 3 * 6.0 + 6,
                            "selection_tokens": 3 * 800 + 3 * 400 + 6}
    # the dev curves: a point per cell, system and budget, its per-seed F1 and their mean
    assert len(summary["dev_curves"]) == 12 * 2
    assert summary["dev_curves"][0] == {"system": "sft", **coordinates(4, "verdict"), "budget": 4,
                                        "per_seed": {0: 24.0, 1: 25.0, 2: 26.0}, "f1": 25.0}


def test_intervals_contain_the_mean():
    runs, trials = grid()
    summary = summarize(runs, trials, samples=1000)
    for c in [*summary["cells"], summary["base"]]:
        for metric in ("exact", "f1"):
            for interval in (f"{metric}_ci95", f"{metric}_ci95_articles"):
                low, high = c[interval]
                assert low <= c[metric] <= high and high > low, (c.get("system"), interval)
    # no spread over seeds, questions or articles: both intervals are the point
    flat = [CellRun(coordinates(4), "sft", s, [0.5] * QUESTIONS, [0.5] * QUESTIONS, {}) for s in SEEDS]
    flat_trials = [trial(coordinates(4), "sft", 4, s, 30.0) for s in SEEDS]
    only = summarize(flat, flat_trials, base=None)["cells"][0]
    assert only["exact"] == 50.0 and only["exact_ci95"] == only["exact_ci95_articles"] == [50.0, 50.0]


def test_with_one_seed_the_question_interval_is_the_per_question_bootstrap():
    rng = np.random.default_rng(3)
    f1 = rng.random(QUESTIONS).round(3).tolist()
    exact = [float(v > 0.5) for v in f1]
    run = CellRun(coordinates(4), "sft", 7, exact, f1, {})
    cell = summarize([run], [trial(coordinates(4), "sft", 4, 7, 30.0)], base=None, samples=700, seed=5)["cells"][0]
    assert cell["seeds"] == [7] and cell["dev"]["f1_sd"] is None
    for metric, values in (("exact", exact), ("f1", f1)):
        low, high = bootstrap_interval(values, samples=700, seed=5)
        assert cell[f"{metric}_ci95"] == [round(100 * low, 2), round(100 * high, 2)]
        low, high = article_interval(values, ARTICLES, samples=700, seed=5)
        assert cell[f"{metric}_ci95_articles"] == [round(100 * low, 2), round(100 * high, 2)]
        assert cell[metric] == round(100 * float(np.mean(values)), 2)
    # every question its own article: the article interval draws what the question interval draws
    alone = [f"article {i}" for i in range(QUESTIONS)]
    solo = aggregate([run], [trial(coordinates(4), "sft", 4, 7, 30.0)], {(key(coordinates(4)), "sft"): 4}, None,
                     list(AXES), alone, "sft", FAMILIES, 700, 5)["cells"][0]
    assert solo["f1_ci95_articles"] == pytest.approx(solo["f1_ci95"], abs=0.011)
    # one article: a draw always takes all questions, and one seed has no spread: the interval is the point
    one = aggregate([run], [trial(coordinates(4), "sft", 4, 7, 30.0)], {(key(coordinates(4)), "sft"): 4}, None,
                    list(AXES), ["article"] * QUESTIONS, "sft", FAMILIES, 700, 5)["cells"][0]
    assert one["f1_ci95_articles"] == [one["f1"], one["f1"]] and one["f1_ci95"][0] < one["f1"] < one["f1_ci95"][1]


def test_paired_differences_match_the_known_offsets():
    runs, trials = grid()
    summary = summarize(runs, trials)
    trained = [d for d in summary["differences"] if d["system"] != "base"]
    diffs = {(d["system"], d["size"], d["content"]): d for d in trained}
    assert len(diffs) == 2 * 4  # laffi and laffi-aux-half in each of the 4 cells; never sft against itself
    assert diffs["laffi", 4, FULL]["exact"][0] == 20.0 and diffs["laffi", 8, "verdict"]["exact"][0] == 30.0
    assert diffs["laffi-aux-half", 4, FULL]["exact"][0] == 30.0
    assert diffs["laffi", 4, "verdict"]["f1"][0] == 15.0  # F1 is 0.25 + EM / 2
    assert all(d["seeds"] == [0, 1, 2] for d in trained)
    # LaFFi is right on a superset of SFT's questions under every seed, so no paired draw is below 0
    # (a draw can miss the 2 questions where they differ: (8/10)^10 = 11% of draws score 0)
    for d in trained:
        for metric in ("exact", "f1"):
            assert 0 <= d[metric][1] <= d[metric][0] <= d[metric][2]
            assert 0 <= d[f"{metric}_articles"][0] <= d[metric][0] <= d[f"{metric}_articles"][1]
    assert diffs["laffi", 4, FULL]["exact"][1] == 0.0
    # a cell with no baseline partner has no difference; a partner's missing seed is left out of the pairs
    lone = [r for r in runs if not (r.system == "sft" and r.cell["size"] == 8)]
    assert {d["size"] for d in summarize(lone, trials)["differences"]} == {4}
    fewer = [r for r in runs if not (r.system == "sft" and r.seed == 2)]
    pairs = [d for d in summarize(fewer, trials)["differences"] if d["system"] == "laffi"]
    assert all(d["seeds"] == [0, 1] for d in pairs) and pairs[0]["exact"][0] == 30.0  # (4, verdict)


def test_the_base_model_is_paired_with_every_seed_of_the_baseline():
    runs, trials = grid()
    summary = summarize(runs, trials, samples=400, seed=2)
    base = [d for d in summary["differences"] if d["system"] == "base"]
    assert [d["system"] for d in summary["differences"][:4]] == ["base"] * 4
    assert len(base) == 4 and all(d["seeds"] == [0, 1, 2] for d in base)
    # base: 2 questions right; SFT at size 4: 1, 2 and 3 under seeds 0-2. Paired with every seed the
    # difference is 2 - 2 = 0 on average; paired with seed 0 alone it would be +10
    d = next(d for d in base if d["size"] == 4 and d["content"] == "verdict")
    sft = np.array([scores(1 + s)[0] for s in SEEDS])
    differences = np.array([BASE["exact"]] * 3) - sft
    low, high = bootstrap_interval(differences, 400, 2)
    assert d["exact"] == [0.0, round(100 * low, 2), round(100 * high, 2)] and low < 0 < high
    low, high = article_interval(differences, ARTICLES, 400, 2)
    assert d["exact_articles"] == [round(100 * low, 2), round(100 * high, 2)]
    assert next(d for d in base if d["size"] == 8)["exact"][0] == -30.0
    # the base model's own numbers: its one answer per question, its dev scores as given
    assert summary["base"]["questions"] == QUESTIONS and summary["base"]["dev"] == BASE["dev"]
    low, high = bootstrap_interval(BASE["exact"], 400, 2)
    assert summary["base"]["exact"] == 20.0 and summary["base"]["exact_ci95"] == [round(100 * low, 2),
                                                                                 round(100 * high, 2)]
    # without a base model: no base row and no base differences
    none = summarize(runs, trials, base=None)
    assert "base" not in none and all(d["system"] != "base" for d in none["differences"])


def test_best_of_family_reads_dev_numbers_only_and_needs_several_members():
    runs, trials = grid()
    cells = summarize(runs, trials)["cells"]
    best = [(c["system"], c["size"], c["content"]) for c in cells if c["best_of_family"]]
    # LaFFi has the better dev F1 (37 vs 31) in every cell, laffi-aux-half the better held-out scores
    assert best == [("laffi", size, content) for size in (4, 8) for content in ("verdict", FULL)]
    for size in (4, 8):
        laffi, aux = (next(c for c in cells if c["system"] == s and c["size"] == size) for s in ("laffi", "laffi-aux-half"))
        assert aux["f1"] > laffi["f1"] and aux["dev"]["f1"] < laffi["dev"]["f1"]
    # SFT is alone in its family: never marked; nor is LaFFi without laffi-aux-half
    assert not any(c["best_of_family"] for c in cells if c["system"] == "sft")
    runs, trials = grid(("sft", "laffi"))
    assert not any(c["best_of_family"] for c in summarize(runs, trials)["cells"])
    # a tie on dev: the first of the family
    tied = [t if t.system != "laffi-aux-half" else trial(t.cell, t.system, t.budget, t.seed,
                                                          dev_f1("laffi", t.budget, t.seed)) for t in grid()[1]]
    cells = summarize(grid()[0], tied)["cells"]
    assert [c["system"] for c in cells if c["best_of_family"]] == ["laffi"] * 4
    assert "best laffi on dev" in experiment_markdown({**summarize(*grid()), "seeds": list(SEEDS),
                                                       "budgets": [4, 8], "dev_questions": 20, "reselected": []})


def test_which_cells_reused_which_artifacts():
    runs, trials = grid()
    summary = summarize(runs, trials, samples=200)
    users = summary["artifacts"]
    # every cell run read the same answers and feedback
    for shared in ("answers.jsonl", "feedback.reference.jsonl"):
        assert len(users[shared]["used_by"]) == 3 * 4 * 3
    # one SFT adapter per (size, seed), shared by the two feedback contents; each LaFFi adapter by one cell run
    sft = users["jobs/sft-n4-s1/adapters/sft"]
    assert sft["kind"] == "adapter" and len(sft["used_by"]) == 2
    assert {u.split("content=")[1] for u in sft["used_by"]} == {"verdict, seed=1", f"{FULL}, seed=1"}
    assert sft["used_by"][0].startswith("sft, size=4, annotator=reference")
    assert len(users["jobs/laffi-n4-s1-verdict/adapters/laffi"]["used_by"]) == 1
    assert sum(1 for u in users.values() if u["kind"] == "adapter") == 2 * 3 + 2 * 4 * 3
    # each cell's adapters in seed order; the SFT cells of the second content repeat the first's
    cells = summary["cells"]
    assert cells[0]["artifacts"]["adapter"] == [f"jobs/sft-n4-s{s}/adapters/sft" for s in SEEDS]
    repeat = {i: c["same_adapters_as"] for i, c in enumerate(cells) if c["same_adapters_as"]}
    assert repeat == {3: [0], 9: [6]}  # sft at (4, full) repeats sft at (4, verdict); size 8 likewise
    assert cells[3]["per_seed"] == cells[0]["per_seed"]


def test_inconsistent_runs_are_refused():
    runs, trials = grid()
    first, second = runs[0], runs[1]
    twice = [first, CellRun(first.cell, first.system, first.seed, first.exact, first.f1, first.artifacts)]
    with pytest.raises(ValueError, match="seed"):
        summarize(twice, trials)
    short = CellRun(second.cell, second.system, second.seed, second.exact[:3], second.f1[:3], second.artifacts)
    with pytest.raises(ValueError, match="different numbers of questions"):
        summarize([first, short], trials)
    with pytest.raises(ValueError, match="10 article names for 3 questions"):
        summarize([CellRun(first.cell, "sft", 0, [1.0] * 3, [1.0] * 3, {})], trials, base=None)


def test_the_dev_screen_pairs_each_seed_with_the_baseline_at_its_own_budget():
    cell = coordinates(4)
    trials = [trial(cell, "sft", 8, 0, 30.0), trial(cell, "sft", 8, 1, 34.0),  # sft: 8 steps (mean 32)
              trial(cell, "sft", 4, 0, 20.0), trial(cell, "sft", 4, 1, 22.0),
              trial(cell, "laffi", 4, 0, 33.0), trial(cell, "laffi", 4, 1, 33.5),  # laffi: 4 steps (mean 33.25)
              trial(cell, "laffi", 8, 0, 31.0), trial(cell, "laffi", 8, 1, 30.0)]
    axes = list(cell)
    screen = dev_screen(trials, choose_budgets(trials), axes, "sft", {"system": "base", "f1": 10.0, "exact": 5.0})
    by_system = {c["system"]: c for c in screen["cells"]}
    assert by_system["sft"]["budget"] == 8 and by_system["laffi"]["budget"] == 4
    assert by_system["laffi"]["difference"] == {"mean": 1.25, "seeds": [0, 1], "per_seed": [3.0, -0.5]}
    assert by_system["sft"]["difference"] is None and by_system["laffi"]["f1"] == 33.25
    text = dev_screen_markdown({**screen, "seeds": [0, 1], "budgets": [4, 8], "dev_questions": 100})
    assert "| laffi | 4 | 33.25 (0.35) | 33.0 / 33.5 | +1.25 (+3.0 / -0.5) |" in text
    assert "| base |  | untrained | 10.00 |" not in text and "| base | untrained | 10.00 |" in text
