"""Answering questions with any engine: pick the engine a config names, build the QA prompts, and
append one record per answer as each batch finishes (the generate and evaluate stages).

    model, tokenizer = load_backend(config.model, config.generate)
    answer_questions(model, tokenizer, examples, shots, config.data, config.generate, writer, make_record,
                     desc="generate")
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
from laffi.config import DataConfig, GenerateConfig, ModelConfig
from laffi.models import load_model, load_tokenizer
from laffi.packing import can_pack
from laffi.prompts import choose_shots, prompt_ids, qa_messages
from laffi.records import QAExample, RecordWriter


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
        return lambda _model, _tokenizer, *args: server(*args)
    if config.share_prefix and can_pack(model, "generate.share_prefix", "answering in padded batches", tqdm.write):
        return shared_prefix_generate
    return greedy_generate


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
        batches = decoder(model, config)(model, tokenizer, prompts, config.batch_size, config.max_new_tokens,
                                         stop_strings)
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
