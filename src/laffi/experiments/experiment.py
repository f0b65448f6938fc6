"""`laffi experiment`: which system gives the best model from this data? Each system at its step budget
chosen on dev, over seeds, scored on the held-out set once.

    laffi experiment configs/experiments/budgets.yaml --out runs/budgets
    laffi experiment configs/experiments/equal-steps.yaml --dry-run          # the plan and its time
    laffi experiment configs/experiments/size.yaml seeds=0,1 run.data.eval_size=50

For every cell of the grid (laffi.experiments.grid), every system with a train recipe, every budget
(train.steps, each a training of its own with the whole learning-rate schedule) and every seed
(train.seed), it trains and scores the dev set with the finished adapter, exactly as `laffi
evaluate ... eval.split=dev` does. Then it chooses each system's budget on the mean dev F1 over
seeds (laffi.experiments.aggregate.choose_budgets, which reads dev scores only), scores the held-out
set with the chosen adapters, and writes the summary: per system its budget, dev F1, held-out EM/F1
with intervals, the paired difference from the baseline, and the cost (training seconds and tokens).

Nothing is made twice: the split, the model's answers and the base model's evaluations are shared
by every cell, each annotator's feedback by every cell that names it, and a training (with its
evaluations) by every cell whose training set, model and train settings are identical (the SFT
cells of a content grid). Every stage resumes, so rerunning after a crash, or with more seeds or
budgets, continues where it stopped. A held-out score, once written, stays; when more budgets or
seeds change a choice, the new choice is scored too and the command says so (selections.jsonl
lists every choice scored). The directory is laid out by `laffi.layout.ExperimentLayout`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from laffi.annotators.content import with_content
from laffi.backends.answering import load_backend
from laffi.config import TrainConfig, non_default, save_config
from laffi.experiments.aggregate import CellRun, Trial, aggregate, cell_key, choose_budgets, dev_screen, label
from laffi.experiments.clock import StageClock
from laffi.experiments.grid import ExperimentConfig, to_dict
from laffi.experiments.jobs import begun_variants
from laffi.layout import ExperimentLayout, RunLayout, adapter_finished, failures_file
from laffi.models import check_trainable
from laffi.records import (
    Feedback,
    Prediction,
    QAExample,
    TrainLogEntry,
    read_records,
    write_atomic,
    write_json,
    write_records,
)
from laffi.report.html import write_report
from laffi.report.tables import dev_screen_markdown, experiment_markdown
from laffi.stages.annotate import annotate, annotator_settings, check_annotator, failed_answers
from laffi.stages.build import HybridConfig, build, build_hybrid
from laffi.stages.evaluate import evaluate, evaluate_system, older_adapter_answers
from laffi.stages.generate import generate
from laffi.stages.prepare import prepare
from laffi.stages.rounds import RoundFeedback, train_rounds
from laffi.stages.train import NUMERICS, train_system
from laffi.systems import System

# what a step of 4 and an answer take on the embedded model on 2 CPU cores in bf16, for --dry-run's estimate
# where this directory has no finished training of a system yet: the ends of what `make demo` measured on the
# kinds of CPU it ran on (docs/speed.md), which differ by more than 3x: a step from 1.9 s (SFT, the AMD EPYC
# with 880-980 GFLOP/s of bf16 matmuls) to 6.9 s (laffi-aux-half, the AMD EPYC with 435-443), an answer
# from 0.2 s to 0.48 s (an evaluation of 200 questions in 40 s and in 95 s)
SECONDS_PER_STEP = (1.9, 6.9)
SECONDS_PER_QUESTION = (0.2, 0.48)


@dataclass(frozen=True)
class Job:
    """One training and its evaluations; `key` hashes everything that decides the adapter."""

    key: str
    system: str
    sets: Path  # the training sets of the (first) variant it trains on
    train: TrainConfig  # with the budget (train.steps) and the seed
    feedback: RoundFeedback | None = None  # train.rounds: who judges its later rounds' answers (None: one round)

    def layout(self, experiment: ExperimentLayout) -> RunLayout:
        return experiment.job(self.system, self.key, self.sets)


@dataclass(frozen=True)
class Cell:
    """A grid point: its coordinates (axis -> value), the variant's training sets, its train options."""

    coordinates: dict[str, Any]
    variant: RunLayout
    train: dict[str, Any]


def build_variant(experiment: ExperimentLayout, config: ExperimentConfig, annotator: str, content: str,
                  ratio: float, size: int) -> RunLayout:
    """The training sets of one variant, in a run directory of its own (sets/NAME/). `size` answers are
    drawn by run.data.seed (questions where there is one answer a question; 0: all those with feedback, as `laffi
    run` builds); `content` cuts the feedback
    to its parts."""
    variant = experiment.variant(annotator, content, ratio, size)
    variant.record()  # its layout.json: the shared data/
    notes = read_records(experiment.feedback(annotator), Feedback)
    write_records(variant.feedback, [with_content(n, content) for n in notes])
    if ratio > 0:
        people = read_records(experiment.run.human_feedback, Feedback)
        before = variant.human_feedback.read_bytes() if variant.human_feedback.exists() else None
        write_records(variant.human_feedback, [with_content(n, content) for n in people])
        if before is not None and before != variant.human_feedback.read_bytes():  # exported again since
            print(f"{variant.root.name}: {experiment.run.human_feedback.name} changed since its sets were built; they "
                  "are drawn again, and the jobs on them train anew", flush=True)
    systems = config.trained()
    if size:
        build_hybrid(variant, config.run.data, HybridConfig(ratio, size), systems,
                     options=("grid.human_ratio", "grid.size"), people=experiment.run)
    else:
        build(variant, config.run.data, systems)
    return variant


# train.preference options added after jobs with a preference term were keyed, at their defaults
NEWER_PREFERENCE = {"loss": "dpo", "desirable_weight": 0.0}


def job_for(config: ExperimentConfig, system: System, variant: RunLayout, train: TrainConfig,
            feedback: RoundFeedback | None = None) -> Job:
    """The job that trains `system` on `variant`'s set with `train`, keyed by everything that decides its
    adapter and its answers: the set (and aux set), the model and train settings, and what the system's
    recipe and answering add beyond the set (an aux weight, the review settings), so a system file edited
    under the same name makes a new job instead of reporting the old one's. A system with train.rounds
    also needs `feedback`, the cell's annotator and content, which judge its later rounds (and key it)."""
    name = system.name
    digest = hashlib.sha256()
    digest.update(name.encode())
    digest.update(variant.training_set(name).read_bytes())
    if variant.aux_set(name).exists():  # train.aux
        digest.update(variant.aux_set(name).read_bytes())
    if system.preference:  # train.preference: the pairs or labelled answers its term reads
        digest.update(variant.preference_set(name, system.preference.loss).read_bytes())
    digest.update(f"numerics {NUMERICS}".encode())  # an older laffi's kernels and defaults made other adapters
    for section in (config.run.model, train):
        # only options set away from their defaults: one a later version adds keeps existing jobs
        digest.update(yaml.safe_dump(non_default(section), sort_keys=False).encode())
    extra = {k: v for k, v in non_default(system.recipe).items() if k != "sets"}  # the sets are in the bytes
    if "preference" in extra:  # its options newer than laffi-dpo's first jobs count only away from their defaults
        extra["preference"] = {k: v for k, v in extra["preference"].items()
                               if k not in NEWER_PREFERENCE or NEWER_PREFERENCE[k] != v}
    extra.update({f"answer.{k}": v for k, v in non_default(system.answer).items()})
    rounds = system.training_rounds > 1
    if rounds:  # the later rounds' sets come from this annotator, not from the variant's bytes
        if feedback is None:
            raise ValueError(f"{name} trains in rounds (train.rounds): its job needs the annotator of its cell")
        extra.update({"rounds.annotate": annotator_settings(feedback.annotate), "rounds.content": feedback.content})
    if extra:  # none for a plain recipe: the keys of earlier versions stay
        digest.update(yaml.safe_dump(extra, sort_keys=True).encode())
    return Job(digest.hexdigest()[:12], name, variant.sets, train, feedback if rounds else None)


def run_job(experiment: ExperimentLayout, config: ExperimentConfig, job: Job, system: System, split: str) -> bool:
    """Train one job and score it on `split` (each stage resumes); True if it had anything left to do."""
    layout = job.layout(experiment)
    layout.record()  # its layout.json: the shared data/ and its variant's sets/
    if older_adapter_answers(layout, job.system, split, config.run.model):  # the adapter as an older laffi applied it: answered again
        print(f"{layout.root.name}: {split} answers made with the adapter applied as an older laffi did; answering "
              "again", flush=True)
        shutil.rmtree(layout.evaluation(job.system, split))
    if adapter_finished(layout.adapter(job.system)) and layout.metrics(job.system, split).exists():
        return False
    run = config.run
    # the job's own config.yaml: stages run by hand in it (laffi attention, laffi report, laffi train) read it
    rounds = {"annotate": job.feedback.annotate} if job.feedback else {}  # who judges the later rounds
    save_config(layout.config, {**run.sections("model", "data", "generate"), "train": job.train, "eval": run.eval,
                                **rounds})
    if job.feedback:  # train.rounds: each round's answers, feedback, sets and training (laffi.stages.rounds)
        train_rounds(layout, system, run.model, run.data, run.generate, job.train, job.feedback)
    else:
        train_system(layout, system, run.model, run.data, run.generate, job.train)
    evaluate_system(layout, system, run.model, run.data, run.generate, replace(run.eval, split=split))
    return True


def dev_scores(layout: RunLayout, system: str) -> dict[str, float]:
    """{"exact", "f1"} of `system`'s dev evaluation in `layout` (percent), as `laffi evaluate` wrote them."""
    dev = json.loads(layout.metrics(system, "dev").read_text(encoding="utf-8"))
    return {"exact": dev["exact"], "f1": dev["f1"]}


def training_seconds(summary: dict) -> float:
    """A training's seconds as its summary.json (or a round's entry in it) says: the steps, and a preference
    term's reference pass before step 1 (recorded since 2026-12-07)."""
    return summary["seconds_this_process"] + (summary.get("reference_seconds_this_process") or 0)


def training_cost(layout: RunLayout, system: str) -> tuple[float, int]:
    """(seconds, tokens) of a finished training as its summary.json says (what its last session ran: a
    resumed training counts what it ran after the resume); the seconds include a preference term's reference
    pass (recorded since 2026-12-07), the tokens are those trained on; train.rounds: the sum over every round's
    training (laffi.stages.rounds lists them in the last round's summary); an older summary without tokens:
    from its log."""
    summary = json.loads(layout.train_summary(system).read_text(encoding="utf-8"))
    if "rounds" in summary:
        rounds = summary["rounds"]
        return round(sum(training_seconds(r) for r in rounds), 2), sum(r["tokens_this_process"] for r in rounds)
    if "tokens_this_process" in summary:
        return round(training_seconds(summary), 2), summary["tokens_this_process"]
    last = read_records(layout.train_log(system), TrainLogEntry)[-1]
    return summary["seconds_this_process"], round(last.tokens_per_s * last.elapsed_s)


def _scores(layout: RunLayout, system: str, examples: list[QAExample]) -> tuple[list[float], list[float]]:
    predictions = {p.id: p for p in read_records(layout.predictions(system), Prediction)}
    return [predictions[e.id].exact for e in examples], [predictions[e.id].f1 for e in examples]


def plan_id(config: ExperimentConfig) -> str:
    """A short name for what one invocation compares (systems, baseline, seeds, budgets, grid, run)."""
    plan = {k: v for k, v in to_dict(config).items() if k != "annotators"}
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:10]


def check_annotators(config: ExperimentConfig) -> None:
    """What can be checked of the grid's annotators before any work (`check_annotator`): by an experiment first,
    and by its dry run, which refuses what the experiment would."""
    for name in config.grid.annotator:
        check_annotator(config.annotate_config(name), option=f"annotators.{name}")


def estimate(config: ExperimentConfig, experiment: ExperimentLayout, dev_only: bool = False) -> dict[str, Any]:
    """The plan before anything runs: how many trainings and evaluations at most (cells with identical
    inputs share them once their sets exist), and a time as a range: each system's measured seconds a step
    where this directory has a finished training of it, else SECONDS_PER_STEP; SECONDS_PER_QUESTION an answer.
    `dev_only`: the screen's, which answers no held-out question."""
    measured: dict[str, list[float]] = {}
    for summary in experiment.root.glob("jobs/*/adapters/*/summary.json"):
        done = json.loads(summary.read_text(encoding="utf-8"))
        if done.get("steps") and done.get("seconds_this_process") and not done.get("resumed_from_step"):
            measured.setdefault(done["system"], []).append(training_seconds(done) / done["steps"])
    grid = config.grid
    variants = len(grid.size) * len(grid.annotator) * len(grid.human_ratio) * len(grid.content)
    cells = variants * len(config.train_cells())
    trained = config.trained()
    # a budget is train.steps per round: R rounds (train.rounds) train R times it, and answer the training
    # questions R - 1 times more
    steps = {s.name: cells * len(config.seeds) * sum(b * s.recipe.steps_multiple * s.recipe.rounds
                                                     for b in config.budgets) for s in trained}
    per_step = {name: ((sum(measured[name]) / len(measured[name]),) * 2 if name in measured else SECONDS_PER_STEP)
                for name in steps}
    trainings = cells * len(trained) * len(config.budgets) * len(config.seeds)
    data = config.run.data
    pool = data.train_size or (len(read_records(experiment.run.train_examples, QAExample))
                               if experiment.run.train_examples.exists() else 0)  # 0: the whole pool, not split yet
    samples = config.run.generate.samples  # answers per training question, in round 1 and in every later round
    heldout = 0 if dev_only else data.eval_size
    # a later round answers its variant's training questions: at most grid.size's draw (0: the whole pool)
    drawn = sum(size or pool for size in grid.size) * (cells // len(grid.size))
    answers = (trainings * data.dev_size + cells * len(trained) * len(config.seeds) * heldout
               + data.dev_size + heldout + pool * samples  # the trainings', the base model's and the train answers
               + drawn * samples * len(config.seeds) * len(config.budgets) * sum(s.recipe.rounds - 1 for s in trained))
    minutes = [round((sum(steps[n] * per_step[n][end] for n in steps) + answers * SECONDS_PER_QUESTION[end]) / 60, 1)
               for end in (0, 1)]
    return {"cells": cells, "systems": config.systems, "seeds": config.seeds, "budgets": config.budgets,
            "trainings_at_most": trainings, "steps_by_system": steps,
            "seconds_per_step": {n: [round(v, 2) for v in per_step[n]] for n in steps},
            "measured_here": sorted(measured), "answers": answers, "estimate_minutes": minutes}


def describe_plan(plan: dict[str, Any]) -> str:
    def span(low: float, high: float) -> str:  # of seconds or minutes
        return f"{low}" if low == high else f"{low}-{high}"

    steps = ", ".join(f"{n} {s} ({span(*plan['seconds_per_step'][n])} s/step"
                      f"{', measured here' if n in plan['measured_here'] else ', assumed'})"
                      for n, s in plan["steps_by_system"].items())
    return (f"plan: {plan['cells']} cell(s) x systems {', '.join(plan['systems'])} x seeds "
            f"{', '.join(map(str, plan['seeds']))} x budgets {', '.join(map(str, plan['budgets']))}: at most "
            f"{plan['trainings_at_most']} trainings; steps: {steps}; about {plan['answers']} answers to generate\n"
            f"estimate: {span(*plan['estimate_minutes'])} min from scratch (training steps, and answers at "
            f"{span(*SECONDS_PER_QUESTION)} s each; the assumed times are the embedded model's on the 2-core CPUs "
            "measured so far, which differ by more than 3x; what this directory has finished is not subtracted; "
            "more cores or a GPU take less)")


def _selections(experiment: ExperimentLayout) -> list[dict]:
    path = experiment.selections
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def changed_choices(experiment: ExperimentLayout, choices: dict[str, int]) -> list[str]:
    """The (cell, system) labels whose budget differs from one of an earlier choice in selections.jsonl:
    held-out scores of another budget of theirs are on disk (they stay, and are said so on every run)."""
    return sorted({name for line in _selections(experiment) for name, budget in line["choices"].items()
                   if name in choices and choices[name] != budget})


def record_selection(experiment: ExperimentLayout, choices: dict[str, int]) -> None:
    """Append a choice whose held-out scores are written to selections.jsonl, unless the last line holds it."""
    earlier = _selections(experiment)
    if not earlier or earlier[-1]["choices"] != choices:
        line = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "choices": choices}
        write_atomic(experiment.selections, "".join(json.dumps(e) + "\n" for e in [*earlier, line]))


def shared_stages(layout: ExperimentLayout, config: ExperimentConfig, timed: StageClock,
                  untrained: list[System], splits: tuple[str, ...] = ("dev", "heldout")) -> None:
    """What every cell shares: the split, the untrained systems' scores, the answers, each annotator's feedback."""
    shared, run, grid = layout.run, config.run, config.grid
    timed("prepare", prepare, shared, run.data)
    # one base-model load for the base evaluations and the generation stage, as in `laffi run`
    base_backend = functools.cache(lambda: load_backend(run.model, run.generate))
    for system in untrained:  # the base model: no budget, no seed; nothing is chosen on its held-out score
        for split in splits:
            timed(f"evaluate {system.name} ({split})", evaluate, shared, system.name, run.model, run.data,
                  run.generate, replace(run.eval, split=split), backend=base_backend)
    timed("generate", generate, shared, run.model, run.data, run.generate, backend=base_backend)
    base_backend.cache_clear()  # free it before training
    begun = begun_variants(layout)
    for name in grid.annotator:
        trained = [v for v in begun if v.startswith(f"{name}.")]
        if trained and (left := len(failed_answers(layout.feedback(name)))):
            # as in `laffi run`: feedback got now would change these sets, and every job on them would be trained
            # again under a new key
            print(f"annotate {name}: {left} answers without feedback ({failures_file(layout.feedback(name))}) are "
                  f"not retried: jobs began training on {', '.join(sorted(trained))} without them; `laffi annotate "
                  f"{layout.root} --out "
                  f"{layout.feedback(name).name}` with this annotator's settings retries them, for jobs begun afresh",
                  flush=True)
            continue
        timed(f"annotate {name}", annotate, shared, config.annotate_config(name), out=layout.feedback(name).name)
    if any(grid.human_ratio) and not shared.human_feedback.exists():
        raise FileNotFoundError(
            f"grid.human_ratio: {shared.human_feedback} is missing. The answers are ready: let people annotate "
            f"them (`laffi annotators add NAME --run {layout.root}`, `laffi serve {layout.root}`), run `laffi "
            f"export-feedback {layout.root}`, then this command again")


@dataclass(frozen=True)
class Planned:
    """One training asked for: a system in a cell at a budget and a seed, and the job that makes it."""

    cell: Cell
    system: str
    budget: int
    seed: int
    job: Job

    @property
    def key(self) -> tuple:
        return cell_key(self.cell.coordinates), self.system


def plan_trainings(layout: ExperimentLayout, config: ExperimentConfig) -> tuple[list[Cell], list[Planned], dict[str, Job]]:
    """Every cell (its variant's sets built), every training asked for, and the distinct jobs by key:
    cells with identical inputs share a job."""
    grid = config.grid
    cells = []
    for size, annotator, ratio, content in product(grid.size, grid.annotator, grid.human_ratio, grid.content):
        variant = build_variant(layout, config, annotator, content, ratio, size)
        for options in config.train_cells():
            coordinates = {"size": size, "annotator": annotator, "human_ratio": ratio, "content": content,
                           **{f"train.{k}": v for k, v in options.items()}}
            cells.append(Cell(coordinates, variant, options))
    planned, jobs = [], {}
    for cell, system, budget, seed in product(cells, config.trained(), config.budgets, config.seeds):
        judge = RoundFeedback(config.annotate_config(cell.coordinates["annotator"]), cell.coordinates["content"])
        new = job_for(config, system, cell.variant, config.train_for(cell.train, budget, seed), judge)
        planned.append(Planned(cell, system.name, budget, seed, jobs.setdefault(new.key, new)))
    return cells, planned, jobs


def dev_trials(layout: ExperimentLayout, planned: list[Planned]) -> list[Trial]:
    """Each planned training's dev scores and cost, as its job wrote them: all that the choice reads."""
    trials = []
    for p in planned:
        trained = p.job.layout(layout)
        seconds, tokens = training_cost(trained, p.system)
        trials.append(Trial(p.cell.coordinates, p.system, p.budget, p.seed, dev_scores(trained, p.system),
                            seconds, tokens, str(trained.root.relative_to(layout.root))))
    return trials


def heldout_runs(layout: ExperimentLayout, chosen: list[Planned], examples: list[QAExample]) -> list[CellRun]:
    """The chosen trainings' per-question held-out scores and the artifacts each used."""
    shared, runs = layout.run, []

    def relative(path: Path) -> str:
        return str(path.relative_to(layout.root))

    for p in chosen:
        trained, system, coordinates = p.job.layout(layout), p.system, p.cell.coordinates
        exact, f1 = _scores(trained, system, examples)
        artifacts = {"answers": relative(shared.answers), "feedback": relative(layout.feedback(coordinates["annotator"])),
                     "set": relative(p.cell.variant.training_set(system)), "adapter": relative(trained.adapter(system)),
                     "dev_eval": relative(trained.evaluation(system, "dev")),
                     "eval": relative(trained.evaluation(system)), "predictions": relative(trained.predictions(system))}
        if coordinates["human_ratio"] > 0:
            artifacts["human_feedback"] = relative(shared.human_feedback)
        runs.append(CellRun(coordinates, system, p.seed, exact, f1, artifacts))
    return runs


def experiment(config: ExperimentConfig, out: str | Path, dev_only: bool = False) -> dict:
    """The summary (experiment.json); `dev_only`: stop after the dev scores and the choice of budgets,
    score no held-out question, and return the screen (summaries/PLAN.dev.json) instead."""
    layout = ExperimentLayout(out)
    shared, run = layout.run, config.run
    systems = config.load_systems()
    by_name = {s.name: s for s in systems}
    check_annotators(config)
    untrained = [s for s in systems if not s.recipe]
    if len(untrained) < len(systems):  # a chat template training cannot use fails now, not after the answers
        check_trainable(run.model)
    # the shared run's settings may not change under existing artifacts (until the model has written any, a
    # mistyped option is fixed by running again); train and the grid may
    save_config(shared.config, run.sections("model", "data", "generate", "eval"), outputs=shared.model_outputs())
    resolved = yaml.safe_dump(to_dict(config), sort_keys=False)
    write_atomic(layout.experiment_config, resolved)  # the latest invocation's
    write_atomic(layout.plan_summary(plan_id(config), ".yaml"), resolved)  # this plan's, which its summary names
    print(describe_plan(estimate(config, layout, dev_only)), flush=True)
    timed = StageClock()
    shared_stages(layout, config, timed, untrained, ("dev",) if dev_only else ("dev", "heldout"))
    cells, planned, jobs = plan_trainings(layout, config)
    print(f"experiment: {len(planned)} trainings asked for, {len(jobs)} different ones", flush=True)
    ran = {key: timed(f"train and score dev {number}/{len(jobs)}: {job.layout(layout).root.name}", run_job,
                      layout, config, job, by_name[job.system], "dev")
           for number, (key, job) in enumerate(jobs.items(), start=1)}

    trials = dev_trials(layout, planned)
    choices = choose_budgets(trials)  # dev scores only
    names = {(cell_key(c.coordinates), s.name): label(c.coordinates, s.name) for c in cells for s in config.trained()}
    choice = {names[key]: budget for key, budget in choices.items()}
    if dev_only:
        return write_screen(layout, config, trials, choices, untrained)
    changed = changed_choices(layout, choice)
    for name in changed:
        print(f"note: the budget chosen for {name} differs from an earlier choice whose held-out scores were "
              f"written ({layout.selections}); those stay on disk, and this summary reports the new choice",
              flush=True)
    chosen = [p for p in planned if choices[p.key] == p.budget]
    scored = {p.job.key: p.job for p in chosen}  # one held-out evaluation per chosen job
    for number, job in enumerate(scored.values(), start=1):
        timed(f"score held-out {number}/{len(scored)}: {job.layout(layout).root.name}", run_job, layout, config,
              job, by_name[job.system], "heldout")
    record_selection(layout, choice)  # now that its held-out scores are written

    examples = read_records(shared.eval_examples, QAExample)
    base = None
    if untrained:
        name = untrained[0].name
        exact, f1 = _scores(shared, name, examples)
        base = {"name": name, "exact": exact, "f1": f1, "dev": dev_scores(shared, name)}
    summary = aggregate(heldout_runs(layout, chosen, examples), trials, choices, base, config.grid.axes(),
                        [e.title for e in examples], config.baseline, {s.name: s.family for s in systems},
                        run.eval.bootstrap_samples, run.eval.seed)
    if base is not None:
        summary["base"]["system"] = base["name"]
    summary["plan"] = plan_id(config)
    summary["seeds"], summary["budgets"], summary["dev_questions"] = config.seeds, config.budgets, run.data.dev_size
    summary["reselected"] = changed
    summary["jobs"] = [{"dir": str(job.layout(layout).root.relative_to(layout.root)), "system": job.system,
                        "steps": job.train.steps, "seed": job.train.seed, "trained_this_run": ran[key],
                        "heldout": key in scored,
                        "cells": [f"{label(p.cell.coordinates, p.system)}, budget={p.budget}, seed={p.seed}"
                                  for p in planned if p.job.key == key]}
                       for key, job in jobs.items()]
    summary["stage_seconds"] = timed.seconds
    write_summary(layout, summary)
    write_report(layout.root)
    return summary


def write_screen(layout: ExperimentLayout, config: ExperimentConfig, trials: list[Trial], choices: dict[tuple, int],
                 untrained: list[System]) -> dict:
    """--dev-only: the dev screen into summaries/PLAN.dev.{json,md}; experiment.json, the last full summary
    (what report.html shows), stays as it is."""
    base = None
    if untrained:
        base = {"system": untrained[0].name, **dev_scores(layout.run, untrained[0].name)}
    screen = dev_screen(trials, choices, config.grid.axes(), config.baseline, base)
    screen.update(plan=plan_id(config), seeds=config.seeds, budgets=config.budgets,
                  dev_questions=config.run.data.dev_size, jobs=sorted({t.job for t in trials}))
    write_json(layout.plan_summary(screen["plan"], ".dev.json"), screen)
    write_atomic(layout.plan_summary(screen["plan"], ".dev.md"), dev_screen_markdown(screen))
    return screen


def write_summary(experiment: ExperimentLayout, summary: dict) -> None:
    table = experiment_markdown(summary)
    for json_path, md_path in ((experiment.summary_json, experiment.summary_md),
                               (experiment.plan_summary(summary["plan"], ".json"),
                                experiment.plan_summary(summary["plan"], ".md"))):
        write_json(json_path, summary)
        write_atomic(md_path, table)
