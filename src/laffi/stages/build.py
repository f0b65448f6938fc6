"""Stage 3: the training sets, as prompt/completion JSONL that `datasets` and TRL read as is.

    laffi build runs/demo

- sets/laffi.jsonl: prompt = the QA prompt + the model's own answer + a request for feedback;
  completion = the annotator's feedback. The model learns to predict the feedback it gets.
- sets/sft.jsonl: prompt = the same QA prompt; completion = the gold answer.
Both hold the same questions: those with feedback, in the order of the train pool.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from laffi.analysis.metrics import majority_answer
from laffi.config import DataConfig, check_resume
from laffi.layout import RunLayout, failures_file
from laffi.prompts import choose_shots, feedback_messages, qa_messages
from laffi.records import AnnotationFailure, Feedback, QAExample, TrainingExample, read_records, write_records


def build(run_dir: str | Path, data: DataConfig) -> dict[str, list[TrainingExample]]:
    layout = RunLayout(run_dir)
    examples = read_records(layout.train_examples, QAExample)
    shots = read_records(layout.shots, QAExample)
    feedback = {f.id: f for f in read_records(layout.feedback, Feedback)}
    failed = failures_file(layout.feedback)  # answers the annotator could not give feedback on
    if failed.exists() and (skipped := len(read_records(failed, AnnotationFailure))):
        print(f"build: {skipped} answers have no feedback because their annotation failed ({failed}); "
              "both sets leave them out")
    check_resume(layout.root / "sets" / "config.yaml", {"data": data})
    chosen = {example.id: feedback[example.id] for example in examples if example.id in feedback}
    if not chosen:
        raise ValueError(f"{layout.feedback}: no feedback on any train question; run `laffi annotate` first")
    return write_sets(run_dir, examples, shots, chosen, data)


def write_sets(run_dir: str | Path, examples: list[QAExample], shots: list[QAExample], chosen: dict[str, Feedback],
               data: DataConfig, human_ratio: float | None = None) -> dict[str, list[TrainingExample]]:
    """Both sets on the questions that have `chosen` feedback, in train-pool order, and what the
    LaFFi set is made of (sets/laffi.meta.json)."""
    laffi, sft = [], []
    for example in (e for e in examples if e.id in chosen):
        example_shots = choose_shots(example, shots, data.num_shots, data.seed)
        sft.append(TrainingExample(example.id, qa_messages(example, example_shots),
                                   [{"role": "assistant", "content": majority_answer(example.answers)}]))
        note = chosen[example.id]
        laffi.append(TrainingExample(example.id, feedback_messages(example, example_shots, note.answer),
                                     [{"role": "assistant", "content": note.text}]))
    layout = RunLayout(run_dir)
    write_records(layout.training_set("laffi"), laffi)
    write_records(layout.training_set("sft"), sft)
    seed = None if human_ratio is None else data.seed  # only a hybrid mix is drawn at random
    write_metadata(run_dir, mix_metadata([chosen[t.id] for t in laffi], human_ratio, seed))
    return {"laffi": laffi, "sft": sft}


def metadata_path(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).training_set("laffi").with_suffix(".meta.json")


def write_metadata(run_dir: str | Path, meta: dict) -> Path:
    path = metadata_path(run_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def mix_metadata(feedback: list[Feedback], ratio: float | None, seed: int | None) -> dict:
    """What a LaFFi set is made of: sizes and question ids by source, and who wrote the human part."""
    human = [f for f in feedback if f.source == "human"]
    return {"set": "laffi", "size": len(feedback), "human_ratio": ratio,
            "human": len(human), "ai": len(feedback) - len(human), "seed": seed,
            "human_annotators": dict(sorted(Counter(f.annotator for f in human).items())),
            "human_ids": [f.id for f in human], "ai_ids": [f.id for f in feedback if f.source == "ai"]}
