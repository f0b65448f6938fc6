"""Feedback as a verifier at test time: each trained model answers every question K times and keeps one
answer by a rule (laffi.stages.rerank), on an experiment directory made by `laffi experiment`:

    python -m laffi.experiments.rerank runs/experiment-n2 --systems laffi-verify --candidates 4
    python -m laffi.experiments.rerank runs/experiment-n2 --systems laffi-verify,sft --split heldout
    python -m laffi.experiments.rerank runs/experiment-n2 --systems sft --steps 32 --seeds 0   # some trainings

For every finished training of --systems (jobs/SYSTEM-KEY/adapters/SYSTEM, each budget and seed), its
model (the adapter loaded as `laffi evaluate` loads it) answers the split's questions K times: the
greedy answer (sample 0, the answer direct answering gives) and K-1 sampled at --temperature, each from
a random stream of its own (laffi.backends.sampling), into JOB/rerank/SYSTEM/SPLIT.kK.tT.jsonl
(resumable; its sidecar .config.yaml records how the adapter was applied: with 16-bit weights,
candidates begun without one, by an older laffi, are answered again). Then every distinct candidate
of a question is scored once: P(verdict "correct") from the feedback the model predicts for it (the
verdict lines of a model trained on a verify set, else the reference annotator's sentences), and the
mean log-probability per token of the candidate as its answer. Each rule of laffi.stages.rerank picks
one candidate per question: verifier, likelihood (the control that spends the same test-time compute),
vote, first (greedy) and oracle (pass@K, a bound).

Choose a rule on dev (the default split); score the held-out set once, for the rule chosen, with
--split heldout, which answers with the trainings `laffi experiment` scored on the held-out set (the
budgets it chose on dev, as each plan last chose them) only. One job per training
(`laffi.experiments.jobs.current_jobs`): a job an older laffi made for the same training, under another key,
neither answers nor shows in the table beside the one made since. A model's entry records its cell (its variant and train options), and
the table's means are over the seeds of one system, cell and budget. Writes ExperimentLayout.rerank
(rerank.json: each model's EM/F1 per rule and its costs: answers decoded, scoring forward passes and
seconds per question) after each model, so a rerun does only what is missing; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from laffi.analysis.auroc import auroc
from laffi.analysis.metrics import score_example
from laffi.backends.answering import answer_questions
from laffi.config import RunConfig, load_config, save_config
from laffi.experiments.aggregate import job_cell
from laffi.experiments.jobs import current_jobs, heldout_jobs, of_jobs
from laffi.layout import ExperimentLayout, RunLayout, adapter_finished, sidecar_config
from laffi.models import answered_as_now, answering_of, load_model, recorded_answering, release_memory
from laffi.prompts import choose_shots, extract_answer
from laffi.records import Answer, QAExample, RecordWriter, read_records, write_json
from laffi.stages.rerank import METHODS, Scores, candidate_scores, choose
from laffi.stages.verdicts import LINES, SENTENCES
from laffi.systems import load_systems


def openings_for(system: str) -> tuple[tuple[str, str], ...]:
    """The verdict openings `system` was trained to begin its feedback with."""
    recipe = load_systems([system])[0].recipe
    trained_on = set(recipe.sets) | {recipe.aux} if recipe else set()
    return LINES if "verify" in trained_on else SENTENCES


def candidates(lm, tokenizer, job: RunLayout, config: RunConfig, system: str, split: str, k: int, temperature: float,
               examples: list[QAExample], shots: list[QAExample]) -> tuple[dict[str, list[str]], float | None]:
    """Each question's K answers in sample order (greedy first), and the seconds decoding K answers takes, at the
    rate of every call that decoded some (None where no call that decoded recorded its time: a crash right after
    decoding, or candidates an older laffi decoded)."""
    generate = replace(config.generate, samples=k, temperature=temperature)
    path, timing = job.rerank_candidates(system, split, k, temperature), job.rerank_decoding(system, split, k, temperature)
    # Candidates begun with the adapter applied as an older laffi applied it (merged into 16-bit weights; that
    # laffi wrote no sidecar) are answered again, not resumed: a crash can leave them without a rerank.json entry.
    sidecar = sidecar_config(path)
    if path.exists() and not answered_as_now(recorded_answering(sidecar), config.model):
        path.unlink()
        timing.unlink(missing_ok=True)
    save_config(sidecar, {"adapter": answering_of(config.model)}, outputs=[path])
    started = time.perf_counter()
    with RecordWriter(path, Answer) as writer:
        before = len(writer.done_keys)
        answer_questions(lm, tokenizer, examples, shots, config.data, generate, writer,
                         lambda e, g: Answer(e.id, extract_answer(g.text), g.text, system, g.sample),
                         desc=f"rerank: answer {split} x{k}", samples=k)
        decoded = len(writer.done_keys) - before
    seconds = time.perf_counter() - started
    spent = json.loads(timing.read_text()) if timing.exists() else {"seconds": 0.0, "answers": 0}
    if decoded:
        spent = {"seconds": round(spent["seconds"] + seconds, 3), "answers": spent["answers"] + decoded}
        write_json(timing, spent)
    by_question: dict[str, list[str]] = defaultdict(list)
    for answer in sorted(read_records(path, Answer), key=lambda a: a.sample):
        by_question[answer.id].append(answer.prediction)
    return by_question, k * spent["seconds"] / spent["answers"] if spent["answers"] else None


def rerank_model(job: RunLayout, config: RunConfig, system: str, split: str, k: int, temperature: float) -> dict:
    """One model's numbers: per rule EM and F1 (percent), and its costs per question."""
    examples = read_records(job.dev_examples if split == "dev" else job.eval_examples, QAExample)
    shots = read_records(job.shots, QAExample)
    lm, tokenizer = load_model(config.model, adapter=job.adapter(system))
    answers, decode_seconds = candidates(lm, tokenizer, job, config, system, split, k, temperature, examples, shots)
    # a question's K answers (decode_seconds) against the seconds of one question's scoring below
    distinct = [(e, choose_shots(e, shots, config.data.num_shots, config.data.seed), c)
                for e in examples for c in dict.fromkeys(answers[e.id])]
    started = time.perf_counter()
    scores = candidate_scores(lm, tokenizer, distinct, openings_for(system))
    score_seconds = time.perf_counter() - started
    del lm
    release_memory()
    by_candidate = {(e.id, c): (p, l) for (e, _, c), p, l in zip(distinct, scores.p_correct, scores.mean_logprob)}
    graded = {(e.id, c): score_example(e, c) for e, _, c in distinct}  # each distinct candidate's (EM, F1)
    totals = {method: [0.0, 0.0] for method in METHODS}  # summed EM and F1
    for e in examples:
        options = answers[e.id]
        p_correct, mean_logprob = zip(*(by_candidate[e.id, c] for c in options))
        question_scores = Scores(list(p_correct), list(mean_logprob))
        for method in METHODS:
            exact, f1 = graded[e.id, options[choose(method, options, question_scores, e.answers)]]
            totals[method][0] += exact
            totals[method][1] += f1
    results = {method: {"exact": round(100 * exact / len(examples), 2), "f1": round(100 * f1 / len(examples), 2)}
               for method, (exact, f1) in totals.items()}
    right = [graded[e.id, c][0] == 1 for e, _, c in distinct]  # each distinct candidate: an exact match?
    separation = {name: None if (value := auroc(list(values), right)) is None else round(value, 3)
                  for name, values in (("verifier", scores.p_correct), ("likelihood", scores.mean_logprob))}
    return {"questions": len(examples), "candidates": k, "distinct_per_question": round(len(distinct) / len(examples), 2),
            "methods": results,
            # how well each score tells exact-match-right distinct candidates from wrong ones (0.5: not at all)
            "auroc_exact": separation, "right_candidates": sum(right), "distinct_candidates": len(right),
            "cost": {"answers_decoded_per_question": k, "scoring_passes_per_question": round(2 * len(distinct) / len(examples), 2),
                     "decode_seconds_per_question": None if decode_seconds is None else round(decode_seconds, 3),
                     "score_seconds_per_question": round(score_seconds / len(examples), 3)}}


def rerank(experiment_dir: str | Path, systems: list[str], k: int = 4, temperature: float = 0.7,
           split: str = "dev", steps: list[int] | None = None, seeds: list[int] | None = None) -> dict:
    """`steps`, `seeds`: only the trainings of these budgets and seeds (None: every one)."""
    experiment = ExperimentLayout(experiment_dir)
    if not experiment.experiment_config.exists():
        raise FileNotFoundError(f"{experiment.root}: not an experiment directory (no {experiment.experiment_config.name})")
    path = experiment.rerank
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"models": {}}
    current = current_jobs(experiment)
    scored_heldout = heldout_jobs(experiment) if split == "heldout" else set()
    for root in current:
        job = RunLayout.of(root)
        for system in job.trained_systems():
            key = f"{os.path.relpath(job.adapter(system), experiment.root)}|{split}|k{k}|t{temperature:g}"
            if system not in systems or not adapter_finished(job.adapter(system)):
                continue
            config = load_config(job.config)
            if (steps and config.train.steps not in steps) or (seeds and config.train.seed not in seeds):
                continue
            if key in results["models"] and answered_as_now(results["models"][key], config.model):
                continue
            if split == "heldout" and root not in scored_heldout:
                print(f"rerank: {root.name}: not scored on the held-out set by `laffi experiment` (its budget was "
                      "not chosen on dev); skipped", flush=True)
                continue
            numbers = rerank_model(job, config, system, split, k, temperature)
            results["models"][key] = {"system": system, "cell": job_cell(experiment.variant_of(job), config.train),
                                      **answering_of(config.model),
                                      "split": split, "k": k, "temperature": temperature,
                                      "seed": config.train.seed, "steps": config.train.steps, **numbers}
            write_json(path, results)
    print(markdown({"models": of_jobs(results["models"], experiment, current)}))  # not a replaced job's entries
    print(f"\nwritten to {path}")
    return results


def separation(entries: list[dict], name: str) -> str:
    """The mean AUROC of one score over the trainings that have it (entries from before it was recorded don't)."""
    values = [e["auroc_exact"][name] for e in entries if e.get("auroc_exact", {}).get(name) is not None]
    return f"{sum(values) / len(values):.3f}" if values else "-"


def markdown(results: dict) -> str:
    """Per system, cell, split, K and budget: each rule's F1 (EM), the mean over the trainings (seeds), and the
    costs. (An entry from before cells were recorded has none: "-".)"""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for entry in results["models"].values():
        groups[entry["system"], entry.get("cell", "-"), entry["split"], entry["k"], entry["temperature"],
               entry["steps"]].append(entry)
    lines = ["| system | cell | split | K | steps | seeds | " + " | ".join(f"{m} F1 (EM)" for m in METHODS)
             + " | AUROC (EM): verifier / likelihood | distinct candidates | s/question: decode + score |",
             "|---|---|---|---:|---:|---:|" + "---:|" * len(METHODS) + "---|---:|---:|"]
    for (system, cell, split, k, _, steps), entries in sorted(groups.items()):
        def mean(method: str, metric: str) -> float:
            return sum(e["methods"][method][metric] for e in entries) / len(entries)

        cost = [e["cost"] for e in entries]
        seconds = ("n/a" if any(c["decode_seconds_per_question"] is None for c in cost) else  # decoding's time unknown
                   f"{sum(c['decode_seconds_per_question'] + c['score_seconds_per_question'] for c in cost) / len(cost):.2f}")
        lines.append(f"| {system} | {cell} | {split} | {k} | {steps} | {len(entries)} | "
                     + " | ".join(f"{mean(m, 'f1'):.2f} ({mean(m, 'exact'):.1f})" for m in METHODS)
                     + f" | {' / '.join(separation(entries, name) for name in ('verifier', 'likelihood'))}"
                     + f" | {sum(e['distinct_per_question'] for e in entries) / len(entries):.2f} | {seconds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m laffi.experiments.rerank", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment_dir", help="a directory made by `laffi experiment`")
    parser.add_argument("--systems", required=True, help="comma-separated trained systems whose models answer")
    parser.add_argument("--candidates", type=int, default=4, help="K answers per question (default 4)")
    parser.add_argument("--temperature", type=float, default=0.7, help="of the K-1 sampled answers (default 0.7)")
    parser.add_argument("--split", choices=("dev", "heldout"), default="dev")
    parser.add_argument("--steps", default="", help="comma-separated budgets: only their trainings (default: all)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds: only their trainings (default: all)")
    args = parser.parse_args(argv)
    if args.candidates < 1:
        parser.error("--candidates: must be >= 1")
    def numbers(option: str, text: str) -> list[int]:
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            parser.error(f"{option}: comma-separated whole numbers, got {text!r}")

    return rerank(args.experiment_dir, [s.strip() for s in args.systems.split(",") if s.strip()], args.candidates,
                  args.temperature, args.split, numbers("--steps", args.steps), numbers("--seeds", args.seeds))


if __name__ == "__main__":
    main(sys.argv[1:])
