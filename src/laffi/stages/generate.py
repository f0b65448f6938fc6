"""Stage 1: the model answers the questions of the train pool.

    laffi generate runs/demo [generate.batch_size=8] [model.name=...]

    laffi generate runs/demo generate.samples=4 [generate.temperature=0.7]   # 4 answers per question

Writes answers.jsonl (one Answer per question, or with generate.samples=K, K per question: sample 0
greedy, 1..K-1 sampled) and answers.config.yaml. Resumable: answers already on disk are kept and
only the missing (question, sample) answers are generated, the same ones a run without the stop
would have made (each sampled answer has its own seeded random stream).
"""

from __future__ import annotations

from typing import Callable

from laffi.backends.answering import answer_questions, load_backend
from laffi.config import DataConfig, GenerateConfig, ModelConfig, save_config
from laffi.distributed.shards import Shard
from laffi.layout import RunLayout, sidecar_config
from laffi.prompts import extract_answer
from laffi.records import Answer, QAExample, read_records


def generate(layout: RunLayout, model: ModelConfig, data: DataConfig, generate: GenerateConfig,
             backend: Callable[[], tuple] | None = None) -> list[Answer]:
    """`backend`: returns the (model, tokenizer) to answer with, loaded by the caller (`laffi run` and
    `laffi experiment` share the base model with the base evaluation); called only if questions are left."""
    examples = read_records(layout.train_examples, QAExample)
    shots = read_records(layout.shots, QAExample)
    shard = Shard.current(model.device)  # one process, or one of several under accelerate launch / torchrun
    shard.on_main(lambda: save_config(sidecar_config(layout.answers), {"model": model, "data": data,
                                                                       "generate": generate}, outputs=[layout.answers]))
    with shard.writer(layout.answers, Answer) as writer:
        if len(writer.done_keys) < len(examples) * generate.samples:
            lm, tokenizer = backend() if backend else load_backend(model, generate)
            shard.answer(answer_questions, lm, tokenizer, examples, shots, data, generate, writer,
                         lambda e, g: Answer(e.id, extract_answer(g.text), g.text, model.name, g.sample),
                         desc="generate", samples=generate.samples)
    return read_records(layout.answers, Answer)
