"""An experiment's numbers: each system's budget chosen on dev, its held-out scores at that budget with
intervals over seeds and questions (and over seeds and articles), and its paired difference from
the baseline.

    from laffi.experiments.aggregate import Trial, CellRun, choose_budgets, aggregate
    choices = choose_budgets(trials)        # dev scores only: (cell, system) -> budget
    summary = aggregate(runs, trials, choices, base, axes, articles, baseline="sft", families=..., samples=1000)

A trial is one training (a system in a cell, at a budget and a seed) with its dev scores and its
cost; choose_budgets reads nothing else, so the held-out set cannot steer a choice. A system's
budget is a hyperparameter: the one with the best mean dev F1 over the seeds (the smallest of
ties), the same rule for every system.

A cell's held-out score varies with the seed (the LoRA initialisation and the batch order) and with
the questions it happens to be scored on. Its interval covers both: the two-level bootstrap of
laffi.analysis.bootstrap over seeds and questions; beside it the interval that draws whole articles
instead of questions (questions of one passage are not independent). System - baseline differences
pair each system's cell with the baseline's cell of the same coordinates, seed by seed and question
by question (the base model has no seed: its scores pair with every seed), and resample the pairs.

The summary (experiment.json) names its grid's axes under "axes"; laffi.report.tables renders it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from laffi.analysis.bootstrap import article_interval, bootstrap_interval, paired_differences_in_points
from laffi.config import TrainConfig, non_default

METRICS = ("exact", "f1")


@dataclass(frozen=True)
class Trial:
    """One training and its dev scores: `cell` (axis -> value), the system, the budget (train.steps) and
    the seed; dev EM/F1 in percent as `laffi evaluate ... eval.split=dev` wrote them; its cost."""

    cell: dict[str, Any]
    system: str
    budget: int
    seed: int
    dev: dict[str, float]
    seconds: float  # the training's wall time: its last session's (a resumed training: what ran after the resume)
    tokens: int  # prompt and completion tokens trained on, the same way
    job: str  # its directory, relative to the experiment


@dataclass(frozen=True)
class CellRun:
    """One system in one cell under one seed, at its chosen budget: per-question held-out scores."""

    cell: dict[str, Any]  # axis -> value
    system: str
    seed: int
    exact: list[float]  # per held-out question, in question order, 0 or 1
    f1: list[float]  # per held-out question, in [0, 1]
    artifacts: dict[str, str]  # kind (answers, feedback, set, adapter, ...) -> path in the experiment directory


def cell_key(cell: dict[str, Any]) -> tuple:
    return tuple(cell.values())


def job_cell(variant: str, train: TrainConfig) -> str:
    """The cell of an experiment a job trained in, as its directory tells it: its variant (ExperimentLayout.variant_of)
    and the train options it sets beyond its budget and seed (a grid's train axes, and the run's own)."""
    options = {k: v for k, v in non_default(train).items() if k not in ("steps", "seed")}
    return ", ".join([variant, *(f"train.{k}={v}" for k, v in options.items())])


def label(cell: dict[str, Any], system: str | None = None) -> str:
    return ", ".join([*([system] if system else []), *(f"{axis}={value}" for axis, value in cell.items())])


def dev_curves(trials: list[Trial]) -> dict[tuple, dict[int, dict[int, float]]]:
    """(cell key, system) -> budget -> seed -> dev F1."""
    curves: dict[tuple, dict[int, dict[int, float]]] = {}
    for t in trials:
        curves.setdefault((cell_key(t.cell), t.system), {}).setdefault(t.budget, {})[t.seed] = t.dev["f1"]
    return curves


def choose_budgets(trials: list[Trial]) -> dict[tuple, int]:
    """(cell key, system) -> the budget with the best mean dev F1 over seeds; the smallest among ties.
    A budget is compared only over the seeds every budget of that system has."""
    choices = {}
    for key, by_budget in dev_curves(trials).items():
        seeds = set.intersection(*(set(s) for s in by_budget.values()))
        if not seeds:
            raise ValueError(f"{key[1]} in cell {key[0]}: no seed has every budget ({sorted(by_budget)})")
        means = {b: statistics.mean(by_seed[s] for s in seeds) for b, by_seed in by_budget.items()}
        choices[key] = min(means, key=lambda b: (-round(means[b], 6), b))
    return choices


def _grid(runs: list[CellRun], metric: str, seeds: list[int]) -> np.ndarray:
    by_seed = {r.seed: getattr(r, metric) for r in runs}
    lengths = {len(v) for v in by_seed.values()}
    if len(lengths) != 1:
        raise ValueError(f"runs of one cell were scored on different numbers of questions: {sorted(lengths)}")
    return np.array([by_seed[s] for s in seeds], dtype=float)


def _scores(grid: np.ndarray, articles: list[str], samples: int, seed: int, metric: str) -> dict[str, Any]:
    low, high = bootstrap_interval(grid, samples, seed)
    a_low, a_high = article_interval(grid, articles, samples, seed)
    return {metric: round(100 * float(grid.mean()), 2), f"{metric}_ci95": [round(100 * low, 2), round(100 * high, 2)],
            f"{metric}_ci95_articles": [round(100 * a_low, 2), round(100 * a_high, 2)]}


def _difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], articles: list[str], samples: int,
                seed: int) -> dict[str, list]:
    """{metric: [mean, low, high], metric_articles: [low, high]}: a - b in points, paired by seed and question
    (laffi.analysis.bootstrap.paired_differences_in_points), and the interval that draws whole articles."""
    out: dict[str, list] = dict(paired_differences_in_points(a, b, samples, seed))
    for metric in a:
        low, high = article_interval(a[metric] - b[metric], articles, samples, seed)
        out[f"{metric}_articles"] = [round(100 * low, 2), round(100 * high, 2)]
    return out


def aggregate(runs: list[CellRun], trials: list[Trial], choices: dict[tuple, int], base: dict | None,
              axes: list[str], articles: list[str], baseline: str, families: dict[str, str], samples: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """{"axes", "baseline", "cells", "differences", "dev_curves", "artifacts"}; scores in percent. `base`: the
    untrained system's name, per-question held-out scores and dev metrics ({"name", "exact": [...],
    "f1": [...], "dev": {"exact", "f1"}}), or None."""
    groups: dict[tuple, list[CellRun]] = {}
    for run in runs:
        groups.setdefault((cell_key(run.cell), run.system), []).append(run)
    curves = dev_curves(trials)
    cells = []
    for (key, system), group in groups.items():
        seeds = sorted(r.seed for r in group)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{label(group[0].cell, system)} has seed {seeds} twice")
        budget = choices[key, system]
        chosen = [t for t in trials if cell_key(t.cell) == key and t.system == system]
        at_budget = sorted((t for t in chosen if t.budget == budget), key=lambda t: t.seed)
        dev_f1 = [t.dev["f1"] for t in at_budget]
        entry = {"system": system, "family": families[system], **group[0].cell, "budget": budget,
                 "budgets": sorted(curves[key, system]), "seeds": seeds, "questions": len(group[0].exact),
                 "dev": {"f1": round(statistics.mean(dev_f1), 2),
                         "f1_sd": round(statistics.stdev(dev_f1), 2) if len(dev_f1) > 1 else None,
                         "exact": round(statistics.mean(t.dev["exact"] for t in at_budget), 2),
                         "per_seed": [{"seed": t.seed, **t.dev} for t in at_budget]},
                 "cost": {"train_seconds": round(statistics.mean(t.seconds for t in at_budget), 2),
                          "train_tokens": round(statistics.mean(t.tokens for t in at_budget)),
                          "selection_seconds": round(sum(t.seconds for t in chosen), 2),
                          "selection_tokens": sum(t.tokens for t in chosen)}}
        for metric in METRICS:
            entry.update(_scores(_grid(group, metric, seeds), articles, samples, seed, metric))
        entry["per_seed"] = [{"seed": r.seed, **{m: round(100 * float(np.mean(getattr(r, m))), 2) for m in METRICS}}
                             for r in sorted(group, key=lambda r: r.seed)]
        by_seed = sorted(group, key=lambda r: r.seed)  # each kind's paths in seed order, each once
        entry["artifacts"] = {kind: list(dict.fromkeys(r.artifacts[kind] for r in by_seed))
                              for kind in group[0].artifacts}
        cells.append(entry)
    _mark_best_of_family(cells, axes)
    _mark_shared(cells)
    summary = {"axes": axes, "baseline": baseline, "cells": cells,
               "differences": _differences(groups, base, articles, baseline, samples, seed),
               "dev_curves": dev_curve_points(curves, axes),
               "artifacts": _users(runs)}
    if base is not None:
        summary["base"] = {"questions": len(base["f1"]), "dev": base["dev"]}
        for metric in METRICS:
            summary["base"].update(_scores(np.array([base[metric]], dtype=float), articles, samples, seed, metric))
    return summary


def dev_curve_points(curves: dict[tuple, dict[int, dict[int, float]]], axes: list[str]) -> list[dict]:
    """Each (cell, system, budget)'s dev F1: per seed and the mean (summary["dev_curves"])."""
    return [{"system": system, **dict(zip(axes, key)), "budget": budget, "per_seed": dict(sorted(by_seed.items())),
             "f1": round(statistics.mean(by_seed.values()), 2)}
            for (key, system), by_budget in curves.items() for budget, by_seed in sorted(by_budget.items())]


def dev_screen(trials: list[Trial], choices: dict[tuple, int], axes: list[str], baseline: str,
               base_dev: dict | None) -> dict[str, Any]:
    """`laffi experiment --dev-only`: the dev numbers alone, for screening candidates before any held-out
    score exists. Per (cell, system): the chosen budget, its dev F1 per seed, and its difference from the
    baseline's dev F1 at the baseline's own chosen budget, paired by seed (percentage points)."""
    curves = dev_curves(trials)
    cells = []
    for (key, system), budget in choices.items():
        mine = curves[key, system][budget]
        theirs = curves.get((key, baseline), {}).get(choices.get((key, baseline)), {})
        shared = sorted(set(mine) & set(theirs))
        differences = [round(mine[s] - theirs[s], 2) for s in shared]
        cells.append({"system": system, **dict(zip(axes, key)), "budget": budget,
                        "f1": round(statistics.mean(mine.values()), 2),
                        "f1_sd": round(statistics.stdev(mine.values()), 2) if len(mine) > 1 else None,
                        "per_seed": dict(sorted(mine.items())),
                        "difference": ({"mean": round(statistics.mean(differences), 2), "seeds": shared,
                                        "per_seed": differences} if differences and system != baseline else None)})
    return {"dev_only": True, "axes": axes, "baseline": baseline, "cells": cells, "base": base_dev,
            "dev_curves": dev_curve_points(curves, axes)}


def _mark_best_of_family(cells: list[dict], axes: list[str]) -> None:
    """`best_of_family`: within each cell's coordinates, the system of each family with the best mean dev
    F1 at its chosen budget (dev numbers only; the first of ties). Marked only where the family has several."""
    groups: dict[tuple, list[dict]] = {}
    for cell in cells:
        groups.setdefault((tuple(cell[a] for a in axes), cell["family"]), []).append(cell)
    for members in groups.values():
        best = max(members, key=lambda c: c["dev"]["f1"]) if len(members) > 1 else None
        for cell in members:
            cell["best_of_family"] = cell is best


def _mark_shared(cells: list[dict]) -> None:
    """Each cell's `same_adapters_as`: the earlier cells trained on exactly its adapters (an SFT cell
    that the annotator or the feedback content cannot change), whose numbers it therefore repeats."""
    for i, cell in enumerate(cells):
        adapter = cell["artifacts"].get("adapter")
        cell["same_adapters_as"] = [j for j in range(i) if adapter and cells[j]["artifacts"].get("adapter") == adapter]


def _differences(groups: dict[tuple, list[CellRun]], base: dict | None, articles: list[str], baseline: str,
                 samples: int, seed: int) -> list[dict]:
    out = []
    for (key, system), group in groups.items():
        reference = groups.get((key, baseline))
        if system == baseline or not reference:
            continue
        shared = sorted({r.seed for r in group} & {r.seed for r in reference})
        if not shared:
            continue
        mine = {m: _grid([r for r in group if r.seed in shared], m, shared) for m in METRICS}
        theirs = {m: _grid([r for r in reference if r.seed in shared], m, shared) for m in METRICS}
        out.append({"system": system, **group[0].cell, "seeds": shared,
                    **_difference(mine, theirs, articles, samples, seed)})
    untrained_rows = []
    if base is not None:  # the untrained model against each baseline cell: its one answer per question, every seed
        for (key, system), reference in groups.items():
            if system != baseline:
                continue
            seeds = sorted(r.seed for r in reference)
            untrained = {m: np.array([base[m]] * len(seeds), dtype=float) for m in METRICS}
            theirs = {m: _grid(reference, m, seeds) for m in METRICS}
            untrained_rows.append({"system": base["name"], **reference[0].cell, "seeds": seeds,
                                   **_difference(untrained, theirs, articles, samples, seed)})
    return untrained_rows + out


def _users(runs: list[CellRun]) -> dict[str, dict]:
    users: dict[str, dict] = {}
    for run in runs:
        for kind, path in run.artifacts.items():
            entry = users.setdefault(path, {"kind": kind, "used_by": []})
            entry["used_by"].append(f"{label(run.cell, run.system)}, seed={run.seed}")
    return users

