"""An ablation's numbers: mean and 95% interval per cell over seeds, paired LaFFi - SFT differences,
and which cells share which artifacts.

    from laffi.experiments.aggregate import CellRun, aggregate
    summary = aggregate(runs, samples=1000, seed=0)     # runs: one CellRun per (cell, seed)

A cell's score varies with the seed (which questions are trained on, the LoRA initialisation, the
batch order) and with the held-out questions it happens to be scored on. The interval covers both:
the two-level bootstrap of laffi.analysis.bootstrap over seeds and held-out questions. With one
seed it is exactly the per-question interval of `laffi evaluate` (same draws).

System - SFT differences pair each cell of another system (LaFFi, or any laffi.systems one) with
the SFT cell that differs only in the system, seed by seed and question by question, and resample
the pairs the same way.

The summary (ablation.json) names its grid's axes under "axes"; laffi.report.tables renders it
(ablation.md, the ablation section of report.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from laffi.analysis.bootstrap import bootstrap_interval, paired_bootstrap_difference
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


def _scores(runs: list[CellRun], metric: str) -> np.ndarray:
    lengths = {len(getattr(r, metric)) for r in runs}
    if len(lengths) != 1:
        raise ValueError(f"runs of one cell were scored on different numbers of questions: {sorted(lengths)}")
    return np.array([getattr(r, metric) for r in sorted(runs, key=lambda r: r.seed)], dtype=float)


def _summary(scores: dict[str, np.ndarray], samples: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric, values in scores.items():
        low, high = bootstrap_interval(values, samples, seed)
        out[metric] = round(100 * float(values.mean()), 2)
        out[f"{metric}_ci95"] = [round(100 * low, 2), round(100 * high, 2)]
    return out


def aggregate(runs: list[CellRun], samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """{"axes": [...], "cells": [...], "differences": [...], "artifacts": {path: {"kind", "used_by"}}};
    scores in percent."""
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
    return {"axes": list(AXES), "cells": cells, "differences": _differences(by_cell, samples, seed),
            "artifacts": _users(runs)}


def _mark_shared(cells: list[dict]) -> None:
    """Each cell's `same_adapters_as`: the earlier cells trained on exactly its adapters (a SFT cell
    that the annotator or the feedback content cannot change), whose numbers it therefore repeats."""
    for i, cell in enumerate(cells):
        cell["same_adapters_as"] = [j for j in range(i) if cells[j]["artifacts"].get("adapter")
                                    == cell["artifacts"].get("adapter")]


def _differences(by_cell: dict[tuple, list[CellRun]], samples: int, seed: int) -> list[dict]:
    system = AXES.index("system")
    out = []
    for key, laffi in by_cell.items():
        if key[system] == "sft":
            continue
        sft = by_cell.get(key[:system] + ("sft",) + key[system + 1:])
        if not sft:
            continue
        shared = sorted({r.seed for r in laffi} & {r.seed for r in sft})
        if not shared:
            continue
        pick = lambda group: [r for r in group if r.seed in shared]  # noqa: E731
        entry = {axis: value for axis, value in zip(AXES, key) if axis != "system"}
        entry["system"], entry["seeds"] = key[system], shared
        for metric in METRICS:
            mean, low, high = paired_bootstrap_difference(_scores(pick(laffi), metric), _scores(pick(sft), metric),
                                                          samples, seed)
            entry[metric] = [round(100 * mean, 2), round(100 * low, 2), round(100 * high, 2)]
        out.append(entry)
    return out


def _users(runs: list[CellRun]) -> dict[str, dict]:
    users: dict[str, dict] = {}
    for run in runs:
        for kind, path in run.artifacts.items():
            entry = users.setdefault(path, {"kind": kind, "used_by": []})
            entry["used_by"].append(f"{label(run.cell)}, seed={run.seed}")
    return users
