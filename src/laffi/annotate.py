"""Stage 2: feedback on the model's answers from an AI annotator.

    laffi annotate runs/demo [annotate.annotator=reference] [annotate.seed=0]

Writes feedback.jsonl (one Feedback per answer, source "ai", annotator = the annotator's name)
and feedback.config.yaml. Resumable: answers that already have feedback are skipped.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from laffi.annotators.reference import ReferenceAnnotator
from laffi.config import AnnotateConfig, check_resume
from laffi.layout import RunLayout, sidecar_config
from laffi.records import Answer, Feedback, QAExample, RecordWriter, read_records

BATCH = 32


def make_annotator(config: AnnotateConfig) -> ReferenceAnnotator:
    return ReferenceAnnotator(seed=config.seed)


def annotate(run_dir: str | Path, config: AnnotateConfig) -> list[Feedback]:
    layout = RunLayout(run_dir)
    examples = {e.id: e for e in read_records(layout.train_examples, QAExample)}
    answers = read_records(layout.answers, Answer)
    unknown = [a.id for a in answers if a.id not in examples]
    if unknown:
        raise ValueError(f"{layout.answers}: answer to unknown question {unknown[0]!r}")
    check_resume(sidecar_config(layout.feedback), {"annotate": config})
    annotator = make_annotator(config)
    with RecordWriter(layout.feedback, Feedback) as writer:
        todo = [a for a in answers if a.id not in writer.done_ids]
        with tqdm(total=len(answers), initial=len(answers) - len(todo), desc="annotate", unit="answer") as bar:
            for start in range(0, len(todo), BATCH):
                batch = todo[start:start + BATCH]
                writer.write(annotator.annotate([(examples[a.id], a) for a in batch]))
                bar.update(len(batch))
    return read_records(layout.feedback, Feedback)
