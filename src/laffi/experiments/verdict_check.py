"""Does a model trained to predict feedback know when an answer is right? Feedback as a verifier, the first
cheap check, on an experiment directory made by `laffi experiment`:

    python -m laffi.experiments.verdict_check runs/experiment-n2
    python -m laffi.experiments.verdict_check runs/experiment-n2 --systems laffi,sft --limit 20

For every finished training in the experiment (jobs/SYSTEM-KEY/adapters/SYSTEM, each system and seed, one job per
training: `laffi.experiments.jobs.current_jobs`; or those of --systems) and for the base model (the experiment's untrained system, no adapter), it scores the
dev candidates: the model's own dev answers (eval-dev/SYSTEM/predictions.jsonl of its job) and the base
model's (eval-dev/BASE/predictions.jsonl), each distinct (question, answer) once. A candidate's score is
P(verdict) (laffi.stages.verdicts: the 12 verdict sentences of the reference annotator, teacher-forced
as the beginning of the feedback on the candidate, in the feedback prompt training used: the same
few-shot examples, `choose_shots` with the run's data.num_shots and data.seed). Its label is the verdict
the reference annotator gives it (a function of the gold answers and the answer) and its token F1.

Per model, over all its candidates and over each source (own, untrained): AUROC of P(correct) for the
verdict "correct" against the rest, AUROC of P(correct) for F1 >= 0.5 against the rest, how often the
most probable verdict is the reference verdict, and the mean log-probability that the feedback begins
with any verdict sentence at all (near 0 for a model that learnt the feedback's form; the base model's
is far below). An SFT model never saw feedback: it is the control that the feedback prompt alone gives.

Writes ExperimentLayout.verdict_check (verdict_check.json: every candidate's scores and each model's
numbers) after each model, so a rerun scores only the models not yet in it; prints a markdown table.
Cost: at most one forward pass per candidate (laffi.stages.verdicts), plus loading each model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from laffi.analysis.auroc import auroc
from laffi.annotators.reference import ReferenceAnnotator
from laffi.config import DataConfig, load_config, read_yaml
from laffi.experiments.aggregate import job_cell
from laffi.experiments.jobs import current_jobs, of_jobs
from laffi.layout import ExperimentLayout, RunLayout, adapter_finished
from laffi.models import answered_as_now, answering_of, load_model, release_memory
from laffi.prompts import choose_shots
from laffi.records import VERDICTS, Answer, Prediction, QAExample, read_records, write_json
from laffi.stages.evaluate import older_adapter_answers
from laffi.stages.verdicts import MAX_ROW_TOKENS, SENTENCES, sentence_logprobs, verdict_distribution, verdict_mass
from laffi.systems import family_of, load_systems

OWN, UNTRAINED = "own", "untrained"  # where a candidate answer comes from: the scored model, the base model
F1_RIGHT = 0.5  # a candidate counts as right by F1 from here on


@dataclass(frozen=True)
class Candidate:
    example: QAExample
    prediction: str
    sources: tuple[str, ...]  # OWN and/or UNTRAINED
    verdict: str  # the reference annotator's
    f1: float


def candidates(examples: list[QAExample], by_source: dict[str, list[Prediction]]) -> list[Candidate]:
    """The distinct (question, answer) pairs the sources answered, in question order, each with the sources
    that gave it, the reference verdict and the token F1 (as the evaluation scored it)."""
    answers = {source: {p.id: p for p in predictions} for source, predictions in by_source.items()}
    annotator = ReferenceAnnotator()
    found: list[Candidate] = []
    for example in examples:
        here: dict[str, tuple[Prediction, list[str]]] = {}
        for source in by_source:
            if (p := answers[source].get(example.id)) is not None:
                here.setdefault(p.prediction, (p, []))[1].append(source)
        for p, sources in here.values():
            note = annotator.annotate([(example, Answer(example.id, p.prediction, p.output, ""))])[0]
            found.append(Candidate(example, p.prediction, tuple(sources), note.verdict, p.f1))
    return found


def score(model, tokenizer, found: list[Candidate], shots: list[QAExample], data: DataConfig,
          max_row_tokens: int, desc: str) -> list[dict]:
    """Each candidate's record: who gave it, its labels, P(verdict), log P(any verdict sentence) and the
    log-probability of each sentence (in the order of the file's "sentences")."""
    items = [(c.example, choose_shots(c.example, shots, data.num_shots, data.seed), c.prediction) for c in found]
    with tqdm(total=len(items), desc=desc, unit="candidate") as bar:
        logprobs = sentence_logprobs(model, tokenizer, items, [s for _, s in SENTENCES], max_row_tokens, bar.update)
    return [{"id": c.example.id, "prediction": c.prediction, "sources": list(c.sources), "verdict": c.verdict,
             "f1": c.f1, "p": verdict_distribution(values), "log_mass": verdict_mass(values), "logprobs": values}
            for c, values in zip(found, logprobs)]


def summarise(scored: list[dict]) -> dict:
    """The numbers of one set of scored candidates."""
    p_correct = [s["p"]["correct"] for s in scored]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    counts = {v: sum(s["verdict"] == v for s in scored) for v in VERDICTS}
    argmax = [max(s["p"], key=s["p"].get) == s["verdict"] for s in scored]
    return {"candidates": len(scored), "verdicts": counts,
            "right_by_f1": sum(s["f1"] >= F1_RIGHT for s in scored),
            "auroc_correct": rounded(auroc(p_correct, [s["verdict"] == "correct" for s in scored])),
            "auroc_f1": rounded(auroc(p_correct, [s["f1"] >= F1_RIGHT for s in scored])),
            "argmax_accuracy": rounded(sum(argmax) / len(argmax)) if argmax else None,
            "mean_log_mass": rounded(sum(s["log_mass"] for s in scored) / len(scored)) if scored else None}


def metrics(scored: list[dict]) -> dict:
    """`summarise` over all candidates and over each source's."""
    return {"all": summarise(scored), **{source: summarise([s for s in scored if source in s["sources"]])
                                         for source in (OWN, UNTRAINED)}}


def untrained_system(experiment: ExperimentLayout) -> str:
    """The experiment's base model: its first system that answers with no adapter, directly."""
    names = read_yaml(experiment.experiment_config).get("systems") or []
    untrained = [s.name for s in load_systems(names) if s.adapter is None and not s.guided]
    if not untrained:
        raise ValueError(f"{experiment.experiment_config}: no system answers with the base model (e.g. base), "
                         "so there are no base-model dev answers to score")
    return untrained[0]


@dataclass(frozen=True)
class Model:
    key: str  # the adapter's folder relative to the experiment, or the base model's system name
    system: str
    adapter: Path | None
    predictions: Path  # its own dev answers
    seed: int | None
    steps: int | None
    cell: str | None = None  # its variant and train options (laffi.experiments.aggregate.job_cell)


def models(experiment: ExperimentLayout, untrained: str, systems: list[str] | None, jobs: list[Path]) -> list[Model]:
    """The base model, then the finished adapters with dev answers of `jobs` (`current_jobs`; of `systems` if
    given)."""
    shared = experiment.run
    found = [Model(untrained, untrained, None, shared.predictions(untrained, "dev"), None, None)]
    for root in jobs:
        job = RunLayout.of(root)
        for system in job.trained_systems():
            if systems is not None and system not in systems:
                continue
            # metrics.json is written once every dev question is answered; predictions.jsonl grows as they are
            if not (adapter_finished(job.adapter(system)) and job.metrics(system, "dev").exists()):
                print(f"verdict check: {root.name}: {system} is not trained and scored on dev yet; skipped", flush=True)
                continue
            config = load_config(job.config) if job.config.exists() else None
            if config and older_adapter_answers(job, system, "dev", config.model):  # its own answers, the old way
                print(f"verdict check: {root.name}: {system}'s dev answers were made with the adapter as an older laffi "
                      "applied it; rerun `laffi experiment` to answer again; skipped", flush=True)
                continue
            train = config and config.train
            found.append(Model(os.path.relpath(job.adapter(system), experiment.root), system, job.adapter(system),
                               job.predictions(system, "dev"), train and train.seed, train and train.steps,
                               train and job_cell(experiment.variant_of(job), train)))
    return found


def check(experiment_dir: str | Path, systems: list[str] | None = None, limit: int = 0,
          max_row_tokens: int = MAX_ROW_TOKENS) -> dict:
    """Score every model not yet in verdict_check.json and write it after each; returns the whole file."""
    experiment = ExperimentLayout(experiment_dir)
    shared = RunLayout.existing(experiment.root)
    if not experiment.experiment_config.exists():
        raise FileNotFoundError(f"{experiment.root}: not an experiment directory "
                                f"(no {experiment.experiment_config.name}); "
                                "make one with `laffi experiment`")
    config = load_config(shared.config)
    untrained = untrained_system(experiment)
    if not shared.metrics(untrained, "dev").exists():  # written once every answer is (predictions.jsonl grows)
        raise FileNotFoundError(f"{shared.metrics(untrained, 'dev')}: the base model's dev answers are missing or "
                                "unfinished; rerun `laffi experiment` first")
    examples = read_records(shared.dev_examples, QAExample)
    examples = examples[:limit] if limit else examples
    shots = read_records(shared.shots, QAExample)
    untrained_answers = read_records(shared.predictions(untrained, "dev"), Prediction)
    path = experiment.verdict_check
    header = {"untrained": untrained, "questions": len(examples), "f1_right": F1_RIGHT,
              "sentences": {v: [s for w, s in SENTENCES if w == v] for v in VERDICTS}}
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {**header, "models": {}}
    if any(results.get(k) != v for k, v in header.items()):
        raise ValueError(f"{path} was written for other settings (untrained system, dev questions: --limit, or "
                         f"sentences): {', '.join(k for k, v in header.items() if results.get(k) != v)}; "
                         "rerun with the same --limit, or delete it to start over")
    done = results["models"]  # an adapter's entry made as an older laffi applied it (models.ADAPTER_ANSWERING): again
    jobs = current_jobs(experiment)  # not a job replaced by another for the same training
    todo = [m for m in models(experiment, untrained, systems, jobs)
            if m.key not in done or m.adapter is not None and not answered_as_now(done[m.key], config.model)]
    for number, model in enumerate(todo, start=1):
        own = read_records(model.predictions, Prediction)
        found = candidates(examples, {OWN: own, UNTRAINED: untrained_answers})
        started = time.perf_counter()
        lm, tokenizer = load_model(config.model, adapter=model.adapter)
        scored = score(lm, tokenizer, found, shots, config.data, max_row_tokens,
                       f"verdicts {number}/{len(todo)} {model.key}")
        del lm
        release_memory()
        results["models"][model.key] = {
            "system": model.system, "family": family_of(model.system), "seed": model.seed, "steps": model.steps,
            "cell": model.cell,
            "adapter": None if model.adapter is None else model.key, "seconds": round(time.perf_counter() - started, 1),
            **(answering_of(config.model) if model.adapter is not None else {}),
            "metrics": metrics(scored), "candidates": scored}
        write_json(path, results)
    print(markdown({**results, "models": of_jobs(results["models"], experiment, jobs)}))  # not a replaced job's
    print(f"\nwritten to {path}")
    return results


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _mean(rows: list[dict], name: str) -> float | None:
    values = [r[name] for r in rows if r[name] is not None]
    return sum(values) / len(values) if values else None


def markdown(results: dict) -> str:
    """One row per model (base first, then by family, system, cell, budget and seed), then the mean over the seeds
    of each system, cell and budget (an entry from before cells were recorded has none: "–")."""
    def cell(e: dict) -> str:
        return e.get("cell") or "–"

    entries = sorted(results["models"].values(), key=lambda e: (e["adapter"] is not None, e["family"] or "",
                                                                e["system"], cell(e), e["steps"] or 0, e["seed"] or 0))
    lines = ["| system | cell | seed | steps | candidates | correct / partial / incorrect | AUROC P(correct): correct "
             "vs rest (all / own / untrained) | AUROC P(correct): F1 >= 0.5 | argmax = verdict | mean log P(any "
             "verdict) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        m, counts = e["metrics"], e["metrics"]["all"]["verdicts"]
        lines.append(f"| {e['system']} | {cell(e)} | {'–' if e['seed'] is None else e['seed']} | {e['steps'] or '–'} | "
                     f"{m['all']['candidates']} | {' / '.join(str(counts[v]) for v in VERDICTS)} | "
                     f"{' / '.join(_cell(m[s]['auroc_correct']) for s in ('all', OWN, UNTRAINED))} | "
                     f"{_cell(m['all']['auroc_f1'])} | {_cell(m['all']['argmax_accuracy'])} | "
                     f"{_cell(m['all']['mean_log_mass'])} |")
    by_group: dict[tuple, list[dict]] = {}
    for e in entries:
        by_group.setdefault((e["system"], cell(e), e["steps"] or "–"), []).append(e["metrics"]["all"])
    means = [(group, rows) for group, rows in by_group.items() if len(rows) > 1]
    if means:
        lines += ["", "| system | cell | steps | seeds | mean AUROC: correct vs rest | mean AUROC: F1 >= 0.5 "
                      "| mean argmax = verdict |",
                  "|---|---|---|---|---|---|---|"]
        for (system, where, steps), rows in means:
            lines.append(f"| {system} | {where} | {steps} | {len(rows)} | {_cell(_mean(rows, 'auroc_correct'))} | "
                         f"{_cell(_mean(rows, 'auroc_f1'))} | {_cell(_mean(rows, 'argmax_accuracy'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m laffi.experiments.verdict_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment_dir", help="a directory made by `laffi experiment`")
    parser.add_argument("--systems", help="comma-separated trained systems to score (default: every finished job's)")
    parser.add_argument("--limit", type=int, default=0, help="the first N dev questions only (default: all)")
    parser.add_argument("--max-row-tokens", type=int, default=MAX_ROW_TOKENS,
                        help=f"tokens of one packed row, at most (default {MAX_ROW_TOKENS})")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()] if args.systems else None
    return check(args.experiment_dir, systems, args.limit, args.max_row_tokens)


if __name__ == "__main__":
    main(sys.argv[1:])
