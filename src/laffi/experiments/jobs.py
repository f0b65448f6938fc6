"""Which jobs an experiment directory holds, and which of them count: one per training (a job an older laffi or
older inputs left under another key is not another seed), the ones a full plan scored on the held-out set, and
the variants some job has begun training on.

    current_jobs(ExperimentLayout("runs/ablation"))   # what rerank and the verdict check read
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from laffi.config import load_config
from laffi.experiments.aggregate import job_cell
from laffi.layout import ExperimentLayout, RunLayout, adapter_weights
from laffi.stages.train import training_begun


def heldout_jobs(experiment: ExperimentLayout) -> set[Path]:
    """The jobs whose held-out set a full plan scored: the budgets each plan chose on dev when it last ran (its
    summaries/PLAN.json lists them), not every job with held-out files on disk."""
    found: set[Path] = set()
    for path in experiment.plan_summaries():
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not summary.get("dev_only"):
            found.update(experiment.root / job["dir"] for job in summary["jobs"] if job.get("heldout"))
    return found


def current_jobs(experiment: ExperimentLayout) -> list[Path]:
    """Every job directory, one per training: where two jobs trained a system on the same cell, budget and seed
    (a job an older laffi or older inputs made under another key stays on disk beside the one made since), the
    one whose adapter finished last. What reads every training of an experiment (rerank, the verdict check) reads
    these, so a replaced job is not averaged with its replacement as another seed."""
    latest: dict[tuple, tuple[float, Path]] = {}
    for root in experiment.job_dirs():
        job = RunLayout.of(root)
        if not job.config.exists():
            continue
        train = load_config(job.config).train
        for system in job.trained_systems():
            finished = _finished_at(job, system)
            key = (system, job_cell(experiment.variant_of(job), train), train.steps, train.seed)
            if key not in latest or finished > latest[key][0]:
                latest[key] = (finished, root)
    return sorted({root for _, root in latest.values()})


def _finished_at(job: RunLayout, system: str) -> float:
    """When a training finished, as its summary says (a laffi from before 2026-12-08 wrote no time there: its
    weights file's time, which a copy that keeps no file times makes arbitrary); -inf when it has not."""
    weights = adapter_weights(job.adapter(system))
    if not weights.exists():
        return float("-inf")
    try:
        return datetime.fromisoformat(json.loads(job.train_summary(system).read_text())["finished_at"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return weights.stat().st_mtime


def of_jobs(entries: dict[str, dict], experiment: ExperimentLayout, jobs: list[Path]) -> dict[str, dict]:
    """The entries of a results file keyed by an adapter's path (jobs/JOB/adapters/SYSTEM, maybe followed by
    |...) whose job is one of `jobs`; an entry of no job (the base model's, keyed by its name) stays."""
    kept = {root.relative_to(experiment.root).parts for root in jobs}
    return {key: entry for key, entry in entries.items()
            if (parts := Path(key.split("|")[0]).parts)[0] != "jobs" or parts[:2] in kept}


def begun_variants(layout: ExperimentLayout) -> set[str]:
    """The variants (ANNOTATOR.CONTENT.hRATIO.nSIZE) some job has begun training on (`training_begun`; a system
    of rounds begins in its first round's directory)."""
    variants = set()
    for root in layout.job_dirs():
        job = RunLayout.of(root)
        trainings = [(job, p.name) for p in (root / "adapters").glob("*")]
        trainings += [(job.round_training(p.name, 1, 2), p.name) for p in (root / "rounds").glob("*")]
        if any(training_begun(where, system) for where, system in trainings):
            variants.add(layout.variant_of(job))
    return variants
