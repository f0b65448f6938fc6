"""`laffi ablate`: a grid of pipeline variants over several seeds, each artifact made once.

    laffi ablate configs/ablate/size-objective.yaml --out runs/ablate-size
    laffi ablate configs/ablate/content.yaml grid.seeds=0,1 run.data.eval_size=50

The grid (laffi.experiments.grid) crosses objective, training-set size, annotator, share of human
feedback and feedback content; every cell runs once per seed. Nothing is made twice: the split,
the model's answers and the base evaluation are shared by every cell, each annotator's feedback by
every cell that names it, and a training (with its evaluation) by every cell whose training set,
model and train settings are identical, e.g. the SFT cells of a content ablation, which the
feedback content cannot change. Every stage resumes, so rerunning after a crash, or with more
seeds, continues where it stopped. The ablation directory:

    ablate.yaml                       the resolved ablation config (written each run: grids may grow)
    config.yaml, data/, answers.jsonl, eval/base/    the shared run (a run directory of its own)
    feedback.NAME.jsonl               annotator NAME's feedback on the answers
    feedback.human.jsonl              people's feedback, for grid.human_ratio > 0 (`laffi serve` here,
                                      then `laffi export-feedback`)
    sets/ANNOTATOR.CONTENT.hRATIO.nSIZE.sSEED/   that variant's feedback and its LaFFi and SFT sets
                                      (the hybrid build: laffi.stages.hybrid), data/ linked to the shared one
    jobs/OBJECTIVE-HASH/              one training and its evaluation per distinct (set, model, train)
    ablation.json, ablation.md        per cell: mean and 95% interval over seeds, per-seed scores,
                                      artifacts; LaFFi - SFT differences (laffi.experiments.aggregate)
    report.html                       laffi report
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from laffi.annotators.content import with_content
from laffi.backends.answering import load_backend
from laffi.config import check_resume
from laffi.experiments.aggregate import CellRun, aggregate, label, markdown
from laffi.experiments.clock import StageClock
from laffi.experiments.grid import AblateConfig, to_dict
from laffi.human.config import human_feedback_path
from laffi.layout import RunLayout
from laffi.records import Feedback, Prediction, QAExample, read_records, write_records
from laffi.report.html import write_report
from laffi.stages.annotate import annotate
from laffi.stages.evaluate import evaluate
from laffi.stages.generate import generate
from laffi.stages.hybrid import HybridConfig, build_hybrid
from laffi.stages.prepare import prepare
from laffi.stages.train import train


@dataclass(frozen=True)
class Job:
    """One training and its evaluation; `key` hashes everything that decides the adapter."""

    key: str
    objective: str
    set_file: Path  # the training set it copies
    seed: int

    def directory(self, root: Path) -> Path:
        return root / "jobs" / f"{self.objective}-{self.key}"


def feedback_file(root: Path, annotator: str) -> Path:
    return root / f"feedback.{annotator}.jsonl"


def _link_data(run_dir: Path, root: Path) -> None:
    """run_dir/data -> the shared data/, so stages run there read the one split."""
    link = run_dir / "data"
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(root / "data", run_dir), target_is_directory=True)


def build_variant(root: Path, config: AblateConfig, annotator: str, content: str, ratio: float, size: int,
                  seed: int) -> Path:
    """The LaFFi and SFT sets of one variant, in a run directory of their own (sets/NAME/). The seed
    draws the questions (and their few-shot examples); `content` cuts the feedback to its parts."""
    run_dir = root / "sets" / f"{annotator}.{content}.h{ratio:g}.n{size}.s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    _link_data(run_dir, root)
    notes = read_records(feedback_file(root, annotator), Feedback)
    write_records(RunLayout(run_dir).feedback, [with_content(n, content) for n in notes])
    if ratio > 0:
        people = read_records(human_feedback_path(root), Feedback)
        write_records(human_feedback_path(run_dir), [with_content(n, content) for n in people])
    build_hybrid(run_dir, replace(config.run.data, seed=seed), HybridConfig(ratio, size))
    return run_dir


def job_for(config: AblateConfig, objective: str, set_file: Path, seed: int) -> Job:
    digest = hashlib.sha256()
    digest.update(objective.encode())
    digest.update(set_file.read_bytes())
    digest.update(changed_options(config.run.model).encode())
    digest.update(changed_options(replace(config.run.train, seed=seed)).encode())
    return Job(digest.hexdigest()[:12], objective, set_file, seed)


def changed_options(section: Any) -> str:
    """The options of a config section that differ from their defaults, as YAML: an option added
    in a later laffi version, left at its default, keeps the jobs of an existing ablation."""
    default = asdict(type(section)())
    return yaml.safe_dump({k: v for k, v in asdict(section).items() if v != default[k]}, sort_keys=False)


def run_job(root: Path, config: AblateConfig, job: Job) -> bool:
    """Train and evaluate one job (each stage resumes); True if it had anything left to do."""
    run_dir = job.directory(root)
    layout = RunLayout(run_dir)
    adapter, metrics = layout.adapter(job.objective), layout.evaluation(job.objective) / "metrics.json"
    if (adapter / "adapter_model.safetensors").exists() and metrics.exists():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    _link_data(run_dir, root)
    run = config.run
    # the job's own config.yaml: stages run by hand in it (laffi attention, laffi report) read it
    check_resume(layout.config, {"model": run.model, "data": run.data, "generate": run.generate,
                                 "train": replace(run.train, seed=job.seed), "eval": run.eval})
    if not layout.training_set(job.objective).exists():
        layout.training_set(job.objective).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job.set_file, layout.training_set(job.objective))
    train(run_dir, job.objective, run.model, replace(run.train, seed=job.seed))
    evaluate(run_dir, job.objective, run.model, run.data, run.generate, run.eval, adapter=adapter)
    return True


def _scores(run_dir: Path, system: str, examples: list[QAExample]) -> tuple[list[float], list[float]]:
    predictions = {p.id: p for p in read_records(RunLayout(run_dir).evaluation(system) / "predictions.jsonl",
                                                  Prediction)}
    return [predictions[e.id].exact for e in examples], [predictions[e.id].f1 for e in examples]


def ablate(config: AblateConfig, out: str | Path) -> dict:
    root = Path(out)
    layout = RunLayout(root)
    root.mkdir(parents=True, exist_ok=True)
    run = config.run
    # the shared run's settings may not change under existing artifacts; train and the grid may
    check_resume(layout.config, {"model": run.model, "data": run.data, "generate": run.generate, "eval": run.eval})
    (root / "ablate.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    grid = config.grid
    timed = StageClock()
    timed("prepare", prepare, root, run.data)
    # one base-model load for the base evaluation and the generation stage, as in `laffi run`
    base_backend = functools.cache(lambda: load_backend(run.model, run.generate))
    base = timed("evaluate base", evaluate, root, "base", run.model, run.data, run.generate, run.eval,
                 backend=base_backend)
    timed("generate", generate, root, run.model, run.data, run.generate, backend=base_backend)
    base_backend.cache_clear()  # free it before training
    for name in grid.annotator:
        timed(f"annotate {name}", annotate, root, config.annotate_config(name), out=feedback_file(root, name).name)
    if any(grid.human_ratio) and not human_feedback_path(root).exists():
        raise FileNotFoundError(
            f"grid.human_ratio: {human_feedback_path(root)} is missing. The answers are ready: let people annotate "
            f"them (`laffi annotators add NAME --run {root}`, `laffi serve {root}`), run `laffi export-feedback "
            f"{root}`, then this command again")

    # Plan: every (cell, seed) and the job it needs; cells with identical inputs share a job.
    cells, jobs = [], {}
    for seed, size, annotator, ratio, content in product(grid.seeds, grid.size, grid.annotator, grid.human_ratio,
                                                         grid.content):
        set_dir = build_variant(root, config, annotator, content, ratio, size, seed)
        for objective in grid.objective:
            job = job_for(config, objective, RunLayout(set_dir).training_set(objective), seed)
            jobs.setdefault(job.key, job)
            cell = {"objective": objective, "size": size, "annotator": annotator, "human_ratio": ratio,
                    "content": content}
            cells.append((cell, seed, set_dir, job))
    print(f"ablate: {len(cells)} cell runs ({len(cells) // len(grid.seeds)} cells x {len(grid.seeds)} seeds) "
          f"need {len(jobs)} trainings", flush=True)
    ran = {}
    for number, job in enumerate(jobs.values(), start=1):
        ran[job.key] = timed(f"job {number}/{len(jobs)}: {job.directory(root).name}", run_job, root, config, job)

    examples = read_records(layout.eval_examples, QAExample)
    runs = []
    for cell, seed, set_dir, job in cells:
        exact, f1 = _scores(job.directory(root), job.objective, examples)
        artifacts = {"answers": "answers.jsonl", "base_eval": "eval/base",
                     "feedback": feedback_file(root, cell["annotator"]).name,
                     "set": str(RunLayout(set_dir).training_set(job.objective).relative_to(root)),
                     "adapter": str(RunLayout(job.directory(root)).adapter(job.objective).relative_to(root)),
                     "eval": str(RunLayout(job.directory(root)).evaluation(job.objective).relative_to(root))}
        if cell["human_ratio"] > 0:
            artifacts["human_feedback"] = human_feedback_path(root).name
        runs.append(CellRun(cell, seed, exact, f1, artifacts))
    summary = aggregate(runs, run.eval.bootstrap_samples, run.eval.seed)
    summary["base"] = {k: base[k] for k in ("exact", "f1", "exact_ci95", "f1_ci95", "total")}
    summary["jobs"] = [{"dir": str(job.directory(root).relative_to(root)), "objective": job.objective,
                        "seed": job.seed, "trained_this_run": ran[key],
                        "cell": next(c for c, _, _, j in cells if j.key == key),
                        "cells": [f"{label(c)}, seed={s}" for c, s, _, j in cells if j.key == key]}
                       for key, job in jobs.items()]
    summary["stage_seconds"] = timed.seconds
    write_summary(root, summary)
    write_report(root)
    return summary


def ablation_json(root: str | Path) -> Path:
    return Path(root) / "ablation.json"


def write_summary(root: Path, summary: dict) -> None:
    ablation_json(root).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (root / "ablation.md").write_text("# LaFFi ablation\n\n" + markdown(summary, summary.get("base")),
                                      encoding="utf-8")
