"""`generate.backend=openai`: the generate and evaluate stages on an OpenAI-compatible server.

    vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000
    laffi generate runs/qwen generate.backend=openai generate.base_url=http://localhost:8000/v1 \\
        model.name=Qwen/Qwen2.5-7B-Instruct generate.batch_size=64
    laffi evaluate runs/qwen --system base --backend openai --base-url http://localhost:8000/v1

Same prompts, same answer extraction, same records as in-process: the prompt is rendered and
tokenized here, by the same code and tokenizer (`model.name`), and sent as token ids to the
*completions* endpoint, so the server sees exactly the tokens the in-process model would. (The chat
endpoint would apply the server's own chat template, which cannot express `model.prompt_format=plain`
and may add or drop special tokens.) Decoding is greedy (temperature 0) with the same token limit
and the newline stop; the generated text goes through the same `extract_answer`. The server's own
batching does the rest: `generate.batch_size` requests are kept in flight.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator

from laffi.backends.openai_client import RetryingClient
from laffi.config import ConfigError, GenerateConfig, ModelConfig
from laffi.generate import Generation


class OpenAIGenerator:
    def __init__(self, client: RetryingClient, model: str) -> None:
        self.client, self.model = client, model

    @classmethod
    def from_config(cls, model: ModelConfig, config: GenerateConfig,
                    adapter: str | Path | None = None) -> "OpenAIGenerator":
        if adapter is not None:
            raise ConfigError("--adapter: generate.backend=openai cannot load an adapter into the server; serve it "
                              "there (vLLM: --enable-lora --lora-modules laffi=DIR) and set generate.served_model=laffi")
        client = RetryingClient(config.base_url, config.api_key_env, config.timeout, config.retries, option="generate")
        return cls(client, config.served_model or model.name)

    def greedy_batches(self, prompts: dict[str, list[int]], batch_size: int, max_new_tokens: int,
                       stop_strings: list[str] | None = None) -> Iterator[list[Generation]]:
        """Like `laffi.generate.greedy_generate`: yields finished generations, `batch_size` at a time.

        A request that fails for good raises RequestFailed: the stage stops, keeps what it wrote,
        and a rerun asks only for the rest.
        """
        def one(question_id: str) -> Generation:
            reply = self.client.complete(self.model, prompts[question_id], max_new_tokens, stop_strings)
            return Generation(question_id, reply.text, reply.completion_tokens)

        batch: list[Generation] = []
        with ThreadPoolExecutor(batch_size) as pool:
            futures = [pool.submit(one, question_id) for question_id in prompts]
            try:
                for future in as_completed(futures):
                    batch.append(future.result())
                    if len(batch) == batch_size:
                        yield batch
                        batch = []
            finally:
                for future in futures:  # after a failure, send nothing more
                    future.cancel()
        if batch:
            yield batch
