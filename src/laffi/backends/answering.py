"""Answering questions with any engine: pick the engine a config names, build the QA prompts, and
append one record per answer as each batch finishes (the generate and evaluate stages).

    model, tokenizer = load_backend(config.model, config.generate)
    answer_questions(model, tokenizer, examples, shots, config.data, config.generate, writer, make_record,
                     desc="generate", samples=config.generate.samples)

With `samples` K > 1 each question gets K answers (the generate stage's training answers): sample 0
greedy, samples 1..K-1 drawn at generate.temperature, each from its own random stream
(laffi.backends.sampling), so a record is (question, sample) and a resumed run makes the answers
it would have made.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from laffi.backends.local import Generation, greedy_generate
from laffi.backends.openai_backend import OpenAIGenerator
from laffi.backends.prefix_sharing import shared_prefix_generate
from laffi.backends.sampling import Sampling, stream_seed
from laffi.config import DataConfig, GenerateConfig, ModelConfig
from laffi.models import load_model, load_tokenizer
from laffi.packing import can_pack
from laffi.prompts import choose_shots, prompt_ids, qa_messages
from laffi.records import QAExample, RecordWriter, answer_name


def load_backend(model: ModelConfig, config: GenerateConfig, adapter: str | Path | None = None):
    """The in-process model (generate.backend=transformers), or a client of an OpenAI-compatible server
    that gets the same prompt tokens (generate.backend=openai); with the tokenizer that renders them."""
    if config.backend == "openai":
        tokenizer = load_tokenizer(model)
        return OpenAIGenerator.from_config(model, config, tokenizer, adapter), tokenizer
    return load_model(model, adapter=adapter)


def build_prompts(tokenizer: PreTrainedTokenizerBase, examples: list[QAExample],
                  shots: list[QAExample], data: DataConfig) -> dict[str, list[int]]:
    return {e.id: prompt_ids(tokenizer, qa_messages(e, choose_shots(e, shots, data.num_shots, data.seed)))
            for e in examples}


def decoder(model, config: GenerateConfig) -> Callable:
    """How to decode: the server (generate.backend=openai), shared-prefix packing, or padded batches."""
    server = getattr(model, "greedy_batches", None)
    if server:
        return lambda _model, _tokenizer, *args, **kwargs: server(*args, **kwargs)
    if config.share_prefix and can_pack(model, "generate.share_prefix", "answering in padded batches", tqdm.write):
        return shared_prefix_generate
    return greedy_generate


def answer_questions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     examples: list[QAExample], shots: list[QAExample], data: DataConfig,
                     config: GenerateConfig, writer: RecordWriter,
                     make_record: Callable[[QAExample, Generation], object], desc: str, samples: int = 1) -> dict:
    """Answer the examples not yet in `writer`, `samples` answers each (Generation.sample 0..samples-1; only
    the generate stage asks for more than 1), appending a record per answer; returns speed stats."""
    todo = [(e, sample) for e in examples for sample in range(samples) if (e.id, sample) not in writer.done_keys]
    questions = {e.id: e for e, _ in todo}
    prompts_of = build_prompts(tokenizer, list(questions.values()), shots, data)
    # the engines key prompts by name: the question id for sample 0, as before samples existed
    owner = {answer_name((e.id, sample)): (e, sample) for e, sample in todo}
    if len(owner) != len(todo):
        raise ValueError("a question id looks like another question's sampled answer (ID#sN); rename it")
    prompts = {name: prompts_of[e.id] for name, (e, _) in owner.items()}  # K samples: K equal prompts
    seeds = {name: stream_seed(config.seed, e.id, sample) for name, (e, sample) in owner.items() if sample}
    # no sampled prompt: the engines are called exactly as before samples existed
    sampled = {"sampling": Sampling(config.temperature, seeds)} if seeds else {}
    new_tokens = prompt_tokens = 0
    started = time.perf_counter()
    total = len(examples) * samples
    with tqdm(total=total, initial=total - len(todo), desc=desc, unit="q" if samples == 1 else "answer") as bar:
        stop_strings = ["\n"] if config.stop_at_newline else None
        batches = decoder(model, config)(model, tokenizer, prompts, config.batch_size, config.max_new_tokens,
                                         stop_strings, **sampled)
        for batch in batches:
            writer.write(make_record(owner[g.id][0], Generation(owner[g.id][0].id, g.text, g.new_tokens,
                                                                owner[g.id][1])) for g in batch)
            new_tokens += sum(g.new_tokens for g in batch)
            prompt_tokens += sum(len(prompts[g.id]) for g in batch)
            elapsed = time.perf_counter() - started
            bar.set_postfix(new_tok_s=f"{new_tokens / elapsed:.1f}")
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    answers = {"answers": len(todo)} if samples > 1 else {}
    return {"questions": len(questions), **answers, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "seconds": round(elapsed, 2), "new_tokens_per_s": round(new_tokens / elapsed, 2) if todo else None}
