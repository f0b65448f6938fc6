"""`laffi ablate`: a grid of pipeline variants over several seeds, each artifact made once.

    laffi ablate configs/ablate/size-system.yaml --out runs/ablate-size
    laffi ablate configs/ablate/content.yaml grid.seeds=0,1 run.data.eval_size=50

The grid (laffi.experiments.grid) crosses system, training-set size, annotator, share of human
feedback and feedback content; every cell runs once per seed. Nothing is made twice: the split,
the model's answers and the base evaluation are shared by every cell, each annotator's feedback by
every cell that names it, and a training (with its evaluation) by every cell whose training set,
model and train settings are identical, e.g. the SFT cells of a content ablation, which the
feedback content cannot change. Every stage resumes, so rerunning after a crash, or with more
seeds, continues where it stopped. The stages run on real run directories laid out by
`laffi.layout.AblationLayout`: each variant and each job reads the shared split where it is, and
each job the training set of its variant.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import yaml

from laffi.annotators.content import with_content
from laffi.backends.answering import load_backend
from laffi.config import non_default, save_config
from laffi.experiments.aggregate import CellRun, aggregate, label
from laffi.experiments.clock import StageClock
from laffi.experiments.grid import AblateConfig, to_dict
from laffi.layout import AblationLayout, RunLayout, adapter_finished
from laffi.records import Feedback, Prediction, QAExample, read_records, write_atomic, write_json, write_records
from laffi.report.html import write_report
from laffi.report.tables import ablation_markdown
from laffi.stages.annotate import annotate, check_annotator
from laffi.stages.build import HybridConfig, build_hybrid
from laffi.stages.evaluate import evaluate
from laffi.stages.generate import generate
from laffi.stages.prepare import prepare
from laffi.stages.train import train_system
from laffi.systems import load_system


@dataclass(frozen=True)
class Job:
    """One training and its evaluation; `key` hashes everything that decides the adapter."""

    key: str
    system: str
    sets: Path  # the training sets of the (first) variant it trains on
    seed: int

    def layout(self, ablation: AblationLayout) -> RunLayout:
        return ablation.job(self.system, self.key, self.sets)


def build_variant(ablation: AblationLayout, config: AblateConfig, annotator: str, content: str, ratio: float,
                  size: int, seed: int) -> RunLayout:
    """The LaFFi and SFT sets of one variant, in a run directory of its own (sets/NAME/). The seed
    draws the questions (and their few-shot examples); `content` cuts the feedback to its parts."""
    variant = ablation.variant(annotator, content, ratio, size, seed)
    variant.record()  # its layout.json: the shared data/
    notes = read_records(ablation.feedback(annotator), Feedback)
    write_records(variant.feedback, [with_content(n, content) for n in notes])
    if ratio > 0:
        people = read_records(ablation.run.human_feedback, Feedback)
        write_records(variant.human_feedback, [with_content(n, content) for n in people])
    systems = [load_system(name) for name in config.grid.system]
    build_hybrid(variant, replace(config.run.data, seed=seed), HybridConfig(ratio, size), systems)
    return variant


def job_for(config: AblateConfig, system: str, variant: RunLayout, seed: int) -> Job:
    digest = hashlib.sha256()
    digest.update(system.encode())
    digest.update(variant.training_set(system).read_bytes())
    if variant.aux_set(system).exists():  # train.aux
        digest.update(variant.aux_set(system).read_bytes())
    for section in (config.run.model, replace(config.run.train, seed=seed)):
        # only options set away from their defaults: one a later version adds keeps existing jobs
        digest.update(yaml.safe_dump(non_default(section), sort_keys=False).encode())
    return Job(digest.hexdigest()[:12], system, variant.sets, seed)


def run_job(ablation: AblationLayout, config: AblateConfig, job: Job) -> bool:
    """Train and evaluate one job (each stage resumes); True if it had anything left to do."""
    layout = job.layout(ablation)
    layout.record()  # its layout.json: the shared data/ and its variant's sets/
    adapter = layout.adapter(job.system)
    if adapter_finished(adapter) and layout.metrics(job.system).exists():
        return False
    run = config.run
    training = replace(run.train, seed=job.seed)
    # the job's own config.yaml: stages run by hand in it (laffi attention, laffi report) read it
    save_config(layout.config, {**run.sections("model", "data", "generate"), "train": training, "eval": run.eval})
    system = load_system(job.system)  # the grid allows only systems that answer with their own adapter
    train_system(layout, system, run.model, run.data, run.generate, training)
    evaluate(layout, job.system, run.model, run.data, run.generate, run.eval, adapter=adapter,
             answering=system.answer, reviewer=adapter if system.guided else None)
    return True


def _scores(layout: RunLayout, system: str, examples: list[QAExample]) -> tuple[list[float], list[float]]:
    predictions = {p.id: p for p in read_records(layout.predictions(system), Prediction)}
    return [predictions[e.id].exact for e in examples], [predictions[e.id].f1 for e in examples]


def ablate(config: AblateConfig, out: str | Path) -> dict:
    ablation = AblationLayout(out)
    layout, root = ablation.run, ablation.root
    run, grid = config.run, config.grid
    for name in grid.annotator:
        check_annotator(config.annotate_config(name), option=f"annotators.{name}")
    # the shared run's settings may not change under existing artifacts; train and the grid may
    save_config(layout.config, run.sections("model", "data", "generate", "eval"))
    write_atomic(ablation.ablate_config, yaml.safe_dump(to_dict(config), sort_keys=False))
    timed = StageClock()
    timed("prepare", prepare, layout, run.data)
    # one base-model load for the base evaluation and the generation stage, as in `laffi run`
    base_backend = functools.cache(lambda: load_backend(run.model, run.generate))
    base = timed("evaluate base", evaluate, layout, "base", run.model, run.data, run.generate, run.eval,
                 backend=base_backend)
    timed("generate", generate, layout, run.model, run.data, run.generate, backend=base_backend)
    base_backend.cache_clear()  # free it before training
    for name in grid.annotator:
        timed(f"annotate {name}", annotate, layout, config.annotate_config(name), out=ablation.feedback(name).name)
    if any(grid.human_ratio) and not layout.human_feedback.exists():
        raise FileNotFoundError(
            f"grid.human_ratio: {layout.human_feedback} is missing. The answers are ready: let people annotate "
            f"them (`laffi annotators add NAME --run {root}`, `laffi serve {root}`), run `laffi export-feedback "
            f"{root}`, then this command again")

    # Plan: every (cell, seed) and the job it needs; cells with identical inputs share a job.
    cells, jobs = [], {}
    for seed, size, annotator, ratio, content in product(grid.seeds, grid.size, grid.annotator, grid.human_ratio,
                                                         grid.content):
        variant = build_variant(ablation, config, annotator, content, ratio, size, seed)
        for system in grid.system:
            job = jobs.setdefault((new := job_for(config, system, variant, seed)).key, new)
            cell = {"system": system, "size": size, "annotator": annotator, "human_ratio": ratio,
                    "content": content}
            cells.append((cell, seed, variant, job))
    print(f"ablate: {len(cells)} cell runs ({len(cells) // len(grid.seeds)} cells x {len(grid.seeds)} seeds) "
          f"need {len(jobs)} trainings", flush=True)
    ran = {}
    for number, job in enumerate(jobs.values(), start=1):
        ran[job.key] = timed(f"job {number}/{len(jobs)}: {job.layout(ablation).root.name}", run_job, ablation,
                             config, job)

    def relative(path: Path) -> str:
        return str(path.relative_to(root))

    examples = read_records(layout.eval_examples, QAExample)
    runs = []
    for cell, seed, variant, job in cells:
        trained = job.layout(ablation)
        exact, f1 = _scores(trained, job.system, examples)
        artifacts = {"answers": relative(layout.answers), "base_eval": relative(layout.evaluation("base")),
                     "feedback": relative(ablation.feedback(cell["annotator"])),
                     "set": relative(variant.training_set(job.system)),
                     "adapter": relative(trained.adapter(job.system)),
                     "eval": relative(trained.evaluation(job.system)),
                     "predictions": relative(trained.predictions(job.system))}
        if cell["human_ratio"] > 0:
            artifacts["human_feedback"] = relative(layout.human_feedback)
        runs.append(CellRun(cell, seed, exact, f1, artifacts))
    summary = aggregate(runs, run.eval.bootstrap_samples, run.eval.seed)
    summary["base"] = {k: base[k] for k in ("exact", "f1", "exact_ci95", "f1_ci95", "total")}
    summary["jobs"] = [{"dir": relative(job.layout(ablation).root), "system": job.system,
                        "seed": job.seed, "trained_this_run": ran[key],
                        "cell": next(c for c, _, _, j in cells if j.key == key),
                        "cells": [f"{label(c)}, seed={s}" for c, s, _, j in cells if j.key == key]}
                       for key, job in jobs.items()]
    summary["stage_seconds"] = timed.seconds
    write_summary(ablation, summary)
    write_report(root)
    return summary


def write_summary(ablation: AblationLayout, summary: dict) -> None:
    write_json(ablation.summary_json, summary)
    write_atomic(ablation.summary_md, ablation_markdown(summary))
