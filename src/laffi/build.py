"""Stage 3: the training sets, as prompt/completion JSONL that `datasets` and TRL read as is.

    laffi build runs/demo

- sets/laffi.jsonl: prompt = the QA prompt + the model's own answer + a request for feedback;
  completion = the annotator's feedback. The model learns to predict the feedback it gets.
- sets/sft.jsonl: prompt = the same QA prompt; completion = the gold answer.
Both hold the same questions: those with feedback, in the order of the train pool.
"""

from __future__ import annotations

from pathlib import Path

from laffi.config import DataConfig, check_resume
from laffi.hybrid import mix_metadata, write_metadata
from laffi.layout import RunLayout, failures_file
from laffi.metrics import majority_answer
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
    laffi, sft = [], []
    for example in examples:
        if example.id not in feedback:
            continue
        note = feedback[example.id]
        example_shots = choose_shots(example, shots, data.num_shots, data.seed)
        sft.append(TrainingExample(example.id, qa_messages(example, example_shots),
                                   [{"role": "assistant", "content": majority_answer(example.answers)}]))
        laffi.append(TrainingExample(example.id, feedback_messages(example, example_shots, note.answer),
                                     [{"role": "assistant", "content": note.text}]))
    if not laffi:
        raise ValueError(f"{layout.feedback}: no feedback on any train question; run `laffi annotate` first")
    write_records(layout.training_set("laffi"), laffi)
    write_records(layout.training_set("sft"), sft)
    # sets/laffi.meta.json: what the set is made of (a hybrid build writes its mix there too)
    write_metadata(run_dir, mix_metadata([feedback[t.id] for t in laffi], None, None))
    return {"laffi": laffi, "sft": sft}
