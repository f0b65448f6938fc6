"""Stage 1: the model answers the questions of the train pool.

    laffi generate runs/demo [generate.batch_size=8] [model.name=...]

Writes answers.jsonl (one Answer per question) and answers.config.yaml. Resumable: answers
already on disk are kept and only the missing questions are generated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from laffi.config import DataConfig, GenerateConfig, ModelConfig, check_resume
from laffi.layout import RunLayout, sidecar_config
from laffi.models import load_model, load_tokenizer
from laffi.prompts import choose_shots, extract_answer, prompt_ids, qa_messages
from laffi.records import Answer, QAExample, RecordWriter, read_records


@dataclass
class Generation:
    id: str
    text: str
    new_tokens: int


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    ids.add(tokenizer.eos_token_id)
    return sorted(i for i in ids if i is not None)


def tokens_containing(tokenizer: PreTrainedTokenizerBase, characters: list[str]) -> list[int]:
    """Ids of the tokens whose text contains one of `characters`.

    Stopping on them is what `generate(stop_strings=...)` does for a one-character stop string
    (it stops on any token that contains the string), without the 0.3-0.4 s that building its
    StopStringCriteria from the whole vocabulary costs on every call, that is every batch.
    """
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if any(c in text for c in characters)]


@torch.inference_mode()
def greedy_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    prompts: dict[str, list[int]], batch_size: int, max_new_tokens: int,
                    stop_strings: list[str] | None = None) -> Iterator[list[Generation]]:
    """Greedy decoding in length-sorted batches; yields each batch as soon as it is done."""
    order = sorted(prompts, key=lambda i: len(prompts[i]))  # similar lengths: little padding
    eos = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    stop_strings = stop_strings or []
    single = [s for s in stop_strings if len(s) == 1]  # as stop tokens, computed once per call
    stop_strings = [s for s in stop_strings if len(s) > 1] or None
    stops = sorted(set(eos) | set(tokens_containing(tokenizer, single) if single else []))
    stop_set = set(stops)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in ids)
        # left padding, so every row's next token comes right after its prompt
        input_ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in ids], device=device)
        attention = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in ids],
                                 device=device)
        output = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                                stop_strings=stop_strings, tokenizer=tokenizer if stop_strings else None)
        batch = []
        for row, question_id in zip(output[:, width:].tolist(), ids):
            new = row[: next((k + 1 for k, t in enumerate(row) if t in stop_set), len(row))]
            batch.append(Generation(question_id, tokenizer.decode(new, skip_special_tokens=True), len(new)))
        yield batch


def load_backend(model: ModelConfig, config: GenerateConfig, adapter: str | Path | None = None):
    """The in-process model (generate.backend=transformers), or a client of an OpenAI-compatible server
    that gets the same prompt tokens (generate.backend=openai); with the tokenizer that renders them."""
    if config.backend == "openai":
        from laffi.backends.openai_backend import OpenAIGenerator

        tokenizer = load_tokenizer(model)
        return OpenAIGenerator.from_config(model, config, tokenizer, adapter), tokenizer
    return load_model(model, adapter=adapter)


def build_prompts(tokenizer: PreTrainedTokenizerBase, examples: list[QAExample],
                  shots: list[QAExample], data: DataConfig) -> dict[str, list[int]]:
    return {e.id: prompt_ids(tokenizer, qa_messages(e, choose_shots(e, shots, data.num_shots, data.seed)))
            for e in examples}


def answer_questions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     examples: list[QAExample], shots: list[QAExample], data: DataConfig,
                     config: GenerateConfig, writer: RecordWriter,
                     make_record: Callable[[QAExample, Generation], object], desc: str) -> dict:
    """Answer the examples not yet in `writer`, appending a record per answer; returns speed stats."""
    todo = [e for e in examples if e.id not in writer.done_ids]
    by_id = {e.id: e for e in todo}
    prompts = build_prompts(tokenizer, todo, shots, data)
    new_tokens = prompt_tokens = 0
    started = time.perf_counter()
    with tqdm(total=len(examples), initial=len(examples) - len(todo), desc=desc, unit="q") as bar:
        stop_strings = ["\n"] if config.stop_at_newline else None
        server = getattr(model, "greedy_batches", None)  # generate.backend=openai
        batches = (server(prompts, config.batch_size, config.max_new_tokens, stop_strings) if server else
                   greedy_generate(model, tokenizer, prompts, config.batch_size, config.max_new_tokens, stop_strings))
        for batch in batches:
            writer.write(make_record(by_id[g.id], g) for g in batch)
            new_tokens += sum(g.new_tokens for g in batch)
            prompt_tokens += sum(len(prompts[g.id]) for g in batch)
            elapsed = time.perf_counter() - started
            bar.set_postfix(new_tok_s=f"{new_tokens / elapsed:.1f}")
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    return {"questions": len(todo), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "seconds": round(elapsed, 2), "new_tokens_per_s": round(new_tokens / elapsed, 2) if todo else None}


def generate(run_dir: str | Path, model: ModelConfig, data: DataConfig, config: GenerateConfig,
             backend: Callable[[], tuple] | None = None) -> list[Answer]:
    """`backend`: returns the (model, tokenizer) to answer with, loaded by the caller (`laffi run` and
    `laffi ablate` share the base model with the base evaluation); called only if questions are left."""
    layout = RunLayout(run_dir)
    examples = read_records(layout.train_examples, QAExample)
    shots = read_records(layout.shots, QAExample)
    check_resume(sidecar_config(layout.answers), {"model": model, "data": data, "generate": config})
    with RecordWriter(layout.answers, Answer) as writer:
        if len(writer.done_ids) < len(examples):
            lm, tokenizer = backend() if backend else load_backend(model, config)
            answer_questions(lm, tokenizer, examples, shots, data, config, writer,
                             lambda e, g: Answer(e.id, extract_answer(g.text), g.text, model.name),
                             desc="generate")
    return read_records(layout.answers, Answer)
