"""An ablation's numbers: mean and 95% interval per cell over seeds, paired LaFFi - SFT differences,
and which cells share which artifacts.

    from laffi.experiments.aggregate import CellRun, aggregate, markdown
    summary = aggregate(runs, samples=1000, seed=0)     # runs: one CellRun per (cell, seed)

A cell's score varies with the seed (which questions are trained on, the LoRA initialisation, the
batch order) and with the held-out questions it happens to be scored on. The interval covers both:
a two-level bootstrap draws seeds with replacement and, independently, held-out questions with
replacement (the same draw for every seed, since every seed is scored on the same questions), and
takes the mean score of each draw. With one seed it is exactly the per-question interval of
`laffi evaluate` (metrics.bootstrap_interval, same draws). With 3 seeds it is still a small-sample
interval: it shows the spread that was seen, not what 30 seeds would show.

LaFFi - SFT differences pair each LaFFi cell with the SFT cell that differs only in the objective,
seed by seed and question by question, and resample the pairs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from laffi.experiments.grid import AXES

METRICS = ("exact", "f1")


@dataclass(frozen=True)
class CellRun:
    """One cell of the grid under one seed: its per-question scores and the artifacts it used."""

    cell: dict[str, Any]  # axis -> value, AXES
    seed: int
    exact: list[float]  # per held-out question, in question order, 0 or 1
    f1: list[float]  # per held-out question, in [0, 1]
    artifacts: dict[str, str]  # kind (answers, feedback, set, adapter, ...) -> path in the ablation directory


def cell_key(cell: dict[str, Any]) -> tuple:
    return tuple(cell[axis] for axis in AXES)


def label(cell: dict[str, Any]) -> str:
    return ", ".join(f"{axis}={cell[axis]}" for axis in AXES)


def two_level_interval(scores: np.ndarray, samples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `scores` (seeds x questions), resampling seeds and questions."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"need a seeds x questions array of scores, got shape {scores.shape}")
    n_seeds, n_questions = scores.shape
    rng = np.random.default_rng(seed)
    # questions first, drawn as metrics.bootstrap_interval draws them: one seed gives its interval exactly
    questions = rng.integers(0, n_questions, size=(samples, n_questions))
    seeds = rng.integers(0, n_seeds, size=(samples, n_seeds))
    question_weights = np.zeros((samples, n_questions))
    np.add.at(question_weights, (np.arange(samples)[:, None], questions), 1.0)
    seed_weights = np.zeros((samples, n_seeds))
    np.add.at(seed_weights, (np.arange(samples)[:, None], seeds), 1.0)
    means = np.einsum("bs,sq,bq->b", seed_weights, scores, question_weights) / (n_seeds * n_questions)
    tail = 50.0 * (1 - confidence)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def _scores(runs: list[CellRun], metric: str) -> np.ndarray:
    lengths = {len(getattr(r, metric)) for r in runs}
    if len(lengths) != 1:
        raise ValueError(f"runs of one cell were scored on different numbers of questions: {sorted(lengths)}")
    return np.array([getattr(r, metric) for r in sorted(runs, key=lambda r: r.seed)], dtype=float)


def _summary(scores: dict[str, np.ndarray], samples: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric, values in scores.items():
        low, high = two_level_interval(values, samples, seed)
        out[metric] = round(100 * float(values.mean()), 2)
        out[f"{metric}_ci95"] = [round(100 * low, 2), round(100 * high, 2)]
    return out


def aggregate(runs: list[CellRun], samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """{"cells": [...], "differences": [...], "artifacts": {path: {"kind", "used_by"}}}; scores in percent."""
    by_cell: dict[tuple, list[CellRun]] = {}
    for run in runs:
        by_cell.setdefault(cell_key(run.cell), []).append(run)
    cells = []
    for key, group in by_cell.items():
        seeds = sorted(r.seed for r in group)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"cell {label(group[0].cell)} has seed {seeds} twice")
        summary = _summary({m: _scores(group, m) for m in METRICS}, samples, seed)
        per_seed = [{"seed": r.seed, **{m: round(100 * float(np.mean(getattr(r, m))), 2) for m in METRICS}}
                    for r in sorted(group, key=lambda r: r.seed)]
        by_seed = sorted(group, key=lambda r: r.seed)  # each kind's paths in seed order, each once
        artifacts = {kind: list(dict.fromkeys(r.artifacts[kind] for r in by_seed)) for kind in group[0].artifacts}
        cells.append({**dict(zip(AXES, key)), "seeds": seeds, "questions": len(group[0].exact), **summary,
                      "per_seed": per_seed, "artifacts": artifacts})
    _mark_shared(cells)
    return {"cells": cells, "differences": _differences(by_cell, samples, seed), "artifacts": _users(runs)}


def _mark_shared(cells: list[dict]) -> None:
    """Each cell's `same_adapters_as`: the earlier cells trained on exactly its adapters (a SFT cell
    that the annotator or the feedback content cannot change), whose numbers it therefore repeats."""
    for i, cell in enumerate(cells):
        cell["same_adapters_as"] = [j for j in range(i) if cells[j]["artifacts"].get("adapter")
                                    == cell["artifacts"].get("adapter")]


def _differences(by_cell: dict[tuple, list[CellRun]], samples: int, seed: int) -> list[dict]:
    objective = AXES.index("objective")
    out = []
    for key, laffi in by_cell.items():
        if key[objective] != "laffi":
            continue
        sft = by_cell.get(key[:objective] + ("sft",) + key[objective + 1:])
        if not sft:
            continue
        shared = sorted({r.seed for r in laffi} & {r.seed for r in sft})
        if not shared:
            continue
        pick = lambda group: [r for r in group if r.seed in shared]  # noqa: E731
        entry = {axis: value for axis, value in zip(AXES, key) if axis != "objective"}
        entry["seeds"] = shared
        for metric in METRICS:
            diff = _scores(pick(laffi), metric) - _scores(pick(sft), metric)
            low, high = two_level_interval(diff, samples, seed)
            entry[metric] = [round(100 * float(diff.mean()), 2), round(100 * low, 2), round(100 * high, 2)]
        out.append(entry)
    return out


def _users(runs: list[CellRun]) -> dict[str, dict]:
    users: dict[str, dict] = {}
    for run in runs:
        for kind, path in run.artifacts.items():
            entry = users.setdefault(path, {"kind": kind, "used_by": []})
            entry["used_by"].append(f"{label(run.cell)}, seed={run.seed}")
    return users


def varying_axes(cells: list[dict]) -> list[str]:
    """The axes with more than one value in the grid (objective always): the columns worth showing."""
    return [a for a in AXES if a == "objective" or len({c[a] for c in cells}) > 1]


def markdown(summary: dict, base: dict | None = None) -> str:
    cells = summary["cells"]
    axes = varying_axes(cells)
    fixed = [f"{a}={cells[0][a]}" for a in AXES if a not in axes]
    lines = [f"Held-out questions: {cells[0]['questions']}; seeds: {', '.join(map(str, cells[0]['seeds']))}"
             + (f"; fixed: {', '.join(fixed)}" if fixed else ""), "",
             "Mean over seeds, 95% interval over seeds and held-out questions (percent).", "",
             "| # | " + " | ".join(axes) + " | EM | EM 95% CI | F1 | F1 95% CI | EM per seed | note |",
             "|---:|" + "---|" * len(axes) + "---:|---|---:|---|---|---|"]
    if base:
        lines.append("| | " + " | ".join(["base"] + [""] * (len(axes) - 1))
                     + f" | {base['exact']:.2f} | {base['exact_ci95'][0]:.2f}-{base['exact_ci95'][1]:.2f} "
                       f"| {base['f1']:.2f} | {base['f1_ci95'][0]:.2f}-{base['f1_ci95'][1]:.2f} | | no training |")
    for i, c in enumerate(cells):
        note = f"same adapters as #{c['same_adapters_as'][0]}" if c["same_adapters_as"] else ""
        per_seed = " / ".join(f"{s['exact']:.1f}" for s in c["per_seed"])
        lines.append(f"| {i} | " + " | ".join(str(c[a]) for a in axes)
                     + f" | {c['exact']:.2f} | {c['exact_ci95'][0]:.2f}-{c['exact_ci95'][1]:.2f} "
                       f"| {c['f1']:.2f} | {c['f1_ci95'][0]:.2f}-{c['f1_ci95'][1]:.2f} "
                       f"| {per_seed} | {note} |")
    if summary["differences"]:
        others = [a for a in axes if a != "objective"]
        lines += ["", "LaFFi - SFT, paired by seed and question (percentage points, 95% interval):", "",
                  "| " + " | ".join(others) + (" | " if others else "") + "EM diff | EM 95% CI | F1 diff | F1 95% CI |",
                  "|" + "---|" * len(others) + "---:|---|---:|---|"]
        for d in summary["differences"]:
            lines.append("| " + " | ".join(str(d[a]) for a in others) + (" | " if others else "")
                         + f"{d['exact'][0]:+.2f} | {d['exact'][1]:+.2f} to {d['exact'][2]:+.2f} "
                           f"| {d['f1'][0]:+.2f} | {d['f1'][1]:+.2f} to {d['f1'][2]:+.2f} |")
    return "\n".join(lines) + "\n"
