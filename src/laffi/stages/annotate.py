"""Stage 2: feedback on the model's answers from an AI annotator.

    laffi annotate runs/demo [annotate.annotator=reference] [annotate.seed=0]
    laffi annotate runs/demo annotate.annotator=llm annotate.model=gpt-4o [--out feedback-gpt4o.jsonl]

Writes feedback.jsonl (one Feedback per answer, source "ai", annotator = the annotator's name; with
generate.samples=K, one per (question, sample) answer) and feedback.config.yaml. Resumable: answers
that already have feedback are skipped.
An annotator that can fail (the LLM annotator) also writes feedback.failed.jsonl, the answers that
got no feedback and why (rerunning retries them), and feedback.summary.json (requests, cache hits,
failures, tokens). `--out NAME.jsonl` writes a second annotator's feedback beside the first, e.g.
for `laffi stats`.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from laffi.annotators import llm
from laffi.annotators.reference import ReferenceAnnotator
from laffi.annotators.template import load_template
from laffi.config import AnnotateConfig, ConfigError, save_config
from laffi.layout import RunLayout, failures_file, sidecar_config, summary_file
from laffi.models import missing_local_model
from laffi.records import (
    AnnotationFailure,
    Answer,
    Feedback,
    Key,
    QAExample,
    RecordWriter,
    read_records,
    record_key,
    write_json,
    write_records,
)

BATCH = 32


def failed_answers(feedback: Path) -> set[Key]:
    """The answers whose annotation into `feedback` failed, as its failures file lists them (none without one)."""
    failed = failures_file(feedback)
    return {record_key(f) for f in read_records(failed, AnnotationFailure)} if failed.exists() else set()


def check_annotator(config: AnnotateConfig, option: str = "annotate") -> None:
    """What can be checked of an annotator before any work: its prompt template (a ConfigError naming
    OPTION.template) and a local model's folder (OPTION.model). `laffi run` and `laffi experiment` call it
    first, not after minutes of answering; `annotate` before it writes anything."""
    if config.annotator == "llm":
        load_template(config.template, option=f"{option}.template")
        if config.backend == "transformers" and (missing := missing_local_model(config.model)) is not None:
            raise ConfigError(f"{option}.model: {missing} does not exist")


def make_annotator(config: AnnotateConfig):
    if config.annotator == "llm":
        return llm.LLMAnnotator(config)
    return ReferenceAnnotator(seed=config.seed, name=config.annotator)


def annotator_settings(config: AnnotateConfig) -> dict:
    """The options that decide the feedback: saved beside it, and checked when a run resumes."""
    if config.annotator == "llm":
        return llm.settings(config)
    return {"annotator": config.annotator, "seed": config.seed}


def check_begun_feedback(out: Path, answers: list[Answer], annotator: str) -> None:
    """The feedback already in `out` must be on the answers there are now: answers generated again (another
    model, other settings) would otherwise count as annotated, and `laffi build` would pair the new answers'
    questions with feedback on the old ones. And by this annotator (its name holds an LLM template's version,
    which a template edited in place under the same path changes, and which the saved settings cannot see)."""
    now = {record_key(a): a.prediction for a in answers}
    for note in read_records(out, Feedback) if out.exists() else []:
        if now.get(record_key(note), note.answer) != note.answer:
            raise ValueError(f"{out}: its feedback on {note.id!r} (sample {note.sample}) is about the answer "
                             f"{note.answer!r}, but the answer now is {now[record_key(note)]!r}: the answers were "
                             f"generated again; delete {out.name} and {sidecar_config(out).name} to annotate them anew")
        if note.source == "ai" and note.annotator != annotator:
            raise ValueError(f"{out}: its feedback on {note.id!r} (sample {note.sample}) was written by "
                             f"{note.annotator}, and this annotator is {annotator} (another template version?); "
                             f"delete {out.name} and {sidecar_config(out).name} to annotate anew")


def annotate(layout: RunLayout, annotate: AnnotateConfig, out: str | Path | None = None) -> list[Feedback]:
    """Feedback on every answer into `out` (default RUN/feedback.jsonl; a relative path is in the run dir)."""
    out = layout.root / out if out else layout.feedback
    examples = {e.id: e for e in read_records(layout.train_examples, QAExample)}
    answers = read_records(layout.answers, Answer)
    if not answers:  # a generate stopped before its first batch leaves the file empty
        raise ValueError(f"{layout.answers} holds no answers; run `laffi generate {layout.root}` first")
    unknown = [a.id for a in answers if a.id not in examples]
    if unknown:
        raise ValueError(f"{layout.answers}: answer to unknown question {unknown[0]!r}, which "
                         f"{layout.train_examples} does not have; delete {layout.answers.name} and generate again")
    check_annotator(annotate)
    annotator = make_annotator(annotate)  # first: a missing API key must not leave a config behind
    save_config(sidecar_config(out), {"annotate": annotator_settings(annotate)}, outputs=[out])  # until written: replaced
    size = getattr(annotator, "batch_size", BATCH)
    failures: list[AnnotationFailure] = []
    with RecordWriter(out, Feedback) as writer:
        check_begun_feedback(out, answers, annotator.name)
        todo = [a for a in answers if record_key(a) not in writer.done_keys]
        with tqdm(total=len(answers), initial=len(answers) - len(todo), desc="annotate", unit="answer") as bar:
            for start in range(0, len(todo), size):
                batch = todo[start:start + size]
                results = annotator.annotate([(examples[a.id], a) for a in batch])
                writer.write(r for r in results if isinstance(r, Feedback))
                failures += [r for r in results if isinstance(r, AnnotationFailure)]
                bar.update(len(batch))
                if failures:
                    bar.set_postfix(failed=len(failures))
    # Rewritten each run: the answers still without feedback after this run's attempts.
    if failures or failures_file(out).exists():
        write_records(failures_file(out), failures)
    if hasattr(annotator, "summary"):
        summary = annotator.summary()
        write_json(summary_file(out), summary)
        print(f"annotate: {summary['feedback']} feedback, {len(failures)} failed, {summary['cache_hits']} from "
              f"the cache, {summary['requests']} requests ({summary['retries']} retries), "
              f"{summary['prompt_tokens'] + summary['completion_tokens']} tokens; {summary_file(out)}")
    written = read_records(out, Feedback)
    if failures and not written:  # every request failed (a wrong base_url, model, key): nothing to build from
        raise ValueError(f"annotate: no answer got feedback; all {len(failures)} failed ({failures_file(out)}), "
                         f"the first with: {failures[0].error[:300]}")
    if failures:
        print(f"annotate: {len(failures)} answers got no feedback; they are listed in {failures_file(out)} "
              "and later stages skip them; rerun `laffi annotate` to retry them")
    return written
