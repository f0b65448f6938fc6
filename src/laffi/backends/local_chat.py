"""Chat replies from a local transformers model: the LLM annotator without a server.

    laffi annotate runs/demo annotate.annotator=llm annotate.backend=transformers \\
        annotate.model=Qwen/Qwen2.5-7B-Instruct annotate.concurrency=8

`annotate.model` takes what `model.name` takes (the embedded model, a hub id, a directory, a .gguf).
Requests are rendered with the model's own chat template and decoded `concurrency` at a time:
greedy ones in length-sorted batches (`laffi.backends.local.greedy_generate`), sampled ones (asked again
after an unparseable reply) one by one with their own seed. The model is loaded on the first
request that the cache cannot answer, so a fully cached rerun loads nothing.
"""

from __future__ import annotations

from typing import Iterator

import torch

from laffi.backends.chat import ChatRequest, Counters, Reply, RequestFailed
from laffi.backends.local import greedy_generate
from laffi.config import ModelConfig
from laffi.models import load_model


class LocalChat:
    def __init__(self, model: str, concurrency: int) -> None:
        self.model_name, self.concurrency = model, concurrency
        self.name = f"transformers:{model}"
        self.counters = Counters()
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            # the model's own chat template: the annotator is an instruction model talking to us
            self._loaded = load_model(ModelConfig(name=self.model_name, prompt_format="chat"), option="annotate.model")
        return self._loaded

    def complete_many(self, requests: list[ChatRequest]) -> Iterator[tuple[int, Reply | RequestFailed]]:
        if not requests:
            return

        model, tokenizer = self._load()
        prompts = {str(i): tokenizer(tokenizer.apply_chat_template(r.messages, add_generation_prompt=True,
                                                                     tokenize=False),
                                     add_special_tokens=False)["input_ids"]
                   for i, r in enumerate(requests)}
        greedy = [str(i) for i, r in enumerate(requests) if r.temperature == 0]
        for max_tokens in sorted({requests[int(i)].max_tokens for i in greedy}):
            group = {i: prompts[i] for i in greedy if requests[int(i)].max_tokens == max_tokens}
            for batch in greedy_generate(model, tokenizer, group, self.concurrency, max_tokens):
                for generation in batch:
                    yield self._reply(int(generation.id), generation.text, len(prompts[generation.id]),
                                      generation.new_tokens)
        for i, request in enumerate(requests):
            if request.temperature == 0:
                continue
            torch.manual_seed(request.seed or 0)
            ids = torch.tensor([prompts[str(i)]], device=next(model.parameters()).device)
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=request.temperature, max_new_tokens=request.max_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[0, ids.shape[1]:].tolist()
            yield self._reply(i, tokenizer.decode(new, skip_special_tokens=True), ids.shape[1], len(new))

    def _reply(self, index: int, text: str, prompt_tokens: int, new_tokens: int) -> tuple[int, Reply]:
        self.counters.add(requests=1, prompt_tokens=prompt_tokens, completion_tokens=new_tokens)
        return index, Reply(text, prompt_tokens, new_tokens)
