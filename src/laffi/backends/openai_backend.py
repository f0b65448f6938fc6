"""`generate.backend=openai`: the generate and evaluate stages on an OpenAI-compatible server.

    vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000
    laffi generate runs/qwen generate.backend=openai generate.base_url=http://localhost:8000/v1 \\
        model.name=Qwen/Qwen2.5-7B-Instruct generate.batch_size=64
    laffi evaluate runs/qwen --system base --backend openai --base-url http://localhost:8000/v1 \\
        model.name=Qwen/Qwen2.5-7B-Instruct

Same prompts, same answer extraction, same records as in-process: the prompt is rendered and
tokenized here, by the same code and tokenizer (`model.name`), and sent as token ids to the
*completions* endpoint, so the server sees exactly the tokens the in-process model would. (The chat
endpoint would apply the server's own chat template, which cannot express `model.prompt_format=plain`
and may add or drop special tokens.) One probe request (a one-token prompt) tells whether the server
takes token ids: a refusal (HTTP 4xx other than 408, 409 and 429, or 500 and 501) says no, except 401,
403 and 404, which stop the run as a wrong key, URL or model name would (laffi.backends.openai_client),
while a busy or unreachable server is retried as every request is (one never reached stops the run). A server that takes only text
(llama-cpp-python's answers HTTP 500) gets the text those ids decode to, and then every reply's
prompt token count must equal ours: a different count means the server saw a different prompt (an
extra BOS, special tokens read as plain text, another split of a rare character). The run stops
there, or with generate.exact_prompts=false keeps the answer and names the question. Plain greedy
decoding also means no repetition penalty: llama.cpp's servers apply one by default (`repeat_penalty`
1.1 in llama-cpp-python's), and vLLM applies the one in a model's generation_config.json (Qwen2.5's
Instruct models: 1.05), so every request says `repeat_penalty: 1.0` and `repetition_penalty: 1.0`;
servers ignore the field they do not know. Decoding is greedy (temperature 0) with the same token
limit and the newline stop; the generated text goes through the same `extract_answer`. The server's
own batching does the rest: `generate.batch_size` requests are kept in flight.

Sampled answers (`generate.samples`) go to the server with `generate.temperature` and a seed per
answer (laffi.backends.sampling.stream_seed, cut to 31 bits, which every server takes): a server
that seeds each request's sampler (vLLM, llama.cpp) answers a (question, sample) the same way
however it batches, though not with the in-process engine's draws.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Hashable, Iterator

from tqdm import tqdm

from laffi.backends.chat import Reply, RequestFailed
from laffi.backends.local import Generation
from laffi.backends.openai_client import RetryingClient
from laffi.backends.sampling import Sampling
from laffi.config import ConfigError, GenerateConfig, ModelConfig

# llama.cpp's name and vLLM's: their servers penalise repeats unless told not to (see above)
GREEDY = {"repeat_penalty": 1.0, "repetition_penalty": 1.0}


class OpenAIGenerator:
    def __init__(self, client: RetryingClient, model: str, tokenizer, exact_prompts: bool = True) -> None:
        self.client, self.model, self.tokenizer, self.exact_prompts = client, model, tokenizer, exact_prompts
        self.mismatched: list[str] = []  # questions whose prompt the server tokenized differently
        self.token_ids: bool | None = None  # whether the server takes token-id prompts; None: not probed yet
        self._probe_lock = threading.Lock()

    @classmethod
    def from_config(cls, model: ModelConfig, config: GenerateConfig, tokenizer,
                    adapter: str | Path | None = None) -> "OpenAIGenerator":
        if adapter is not None:
            raise ConfigError("--adapter: generate.backend=openai cannot load an adapter into the server; serve it "
                              "there (vLLM: --enable-lora --lora-modules laffi=DIR) and set generate.served_model=laffi")
        client = RetryingClient(config.base_url, config.api_key_env, config.timeout, config.retries, option="generate")
        return cls(client, config.served_model or model.name, tokenizer, config.exact_prompts)

    def _takes_token_ids(self, ids: list[int]) -> bool:
        with self._probe_lock:
            if self.token_ids is None:
                try:  # 500 is a refusal too, llama-cpp-python's; what the policy retries is retried
                    self.client.complete(self.model, ids[:1], 1, None, extra_body=GREEDY, final=(500, 501))
                    self.token_ids = True
                except RequestFailed as error:
                    if error.status is None:  # no answer (busy, starting, unreachable): nothing learnt
                        raise
                    self.token_ids = False
            return self.token_ids

    def complete(self, question_id: Hashable, ids: list[int], max_new_tokens: int,
                 stop_strings: list[str] | None, temperature: float = 0.0, seed: int | None = None) -> Reply:
        """Greedy, or sampled at `temperature` with the server's sampler seeded by `seed`."""
        decoding = {"extra_body": GREEDY, "temperature": temperature, "seed": seed}
        if self._takes_token_ids(ids):
            return self.client.complete(self.model, ids, max_new_tokens, stop_strings, **decoding)
        text = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # special tokens included
        reply = self.client.complete(self.model, text, max_new_tokens, stop_strings, **decoding)
        if reply.prompt_tokens and reply.prompt_tokens != len(ids):
            message = (f"the server made {reply.prompt_tokens} tokens of the prompt of question {question_id!r}, "
                       f"which is {len(ids)} tokens for laffi (model.name's tokenizer)")
            if self.exact_prompts:
                raise ConfigError(f"generate.exact_prompts: {message}, so it did not answer the same prompt; use a "
                                  "server that takes token ids (vLLM), or set generate.exact_prompts=false")
            self.mismatched.append(question_id)
            tqdm.write(f"generate: warning: {message}; answer kept (generate.exact_prompts=false)")
        return reply

    def greedy_batches(self, prompts: dict[Hashable, list[int]], batch_size: int, max_new_tokens: int,
                       stop_strings: list[str] | None = None,
                       sampling: Sampling | None = None) -> Iterator[list[Generation]]:
        """Like `laffi.backends.local.greedy_generate`: yields finished generations, `batch_size` at a time
        (the prompts `sampling` names: sampled).

        A request that fails for good stops the sending of the rest; the replies that arrived meanwhile
        (those in flight finish) are yielded first, then its error is raised: the stage stops, keeps what
        it wrote, and a rerun asks only for the rest.
        """
        seeds = sampling.seeds if sampling else {}

        def one(question_id: Hashable) -> Generation:
            sampled = {"temperature": sampling.temperature, "seed": seeds[question_id] % 2**31} \
                if question_id in seeds else {}
            try:
                reply = self.complete(question_id, prompts[question_id], max_new_tokens, stop_strings, **sampled)
            except RequestFailed as error:  # which question, and which server, for a reply such as a 400
                raise RequestFailed(f"generate.base_url {self.client.base_url}, question {question_id!r} "
                                    f"({len(prompts[question_id])} prompt tokens, generate.max_new_tokens "
                                    f"{max_new_tokens}): {error}", error.attempts, error.status) from error
            return Generation(question_id, reply.text, reply.completion_tokens)

        batch: list[Generation] = []
        failure: BaseException | None = None
        with ThreadPoolExecutor(batch_size) as pool:
            futures = [pool.submit(one, question_id) for question_id in prompts]
            try:
                for future in as_completed(futures):
                    if future.cancelled():
                        continue
                    error = future.exception()
                    if error is not None:
                        if failure is None:  # send nothing more; what is in flight still arrives
                            failure = error
                            for pending in futures:
                                pending.cancel()
                        continue
                    batch.append(future.result())
                    if len(batch) == batch_size:
                        yield batch
                        batch = []
            finally:
                for future in futures:  # the caller stopped early: send nothing more
                    future.cancel()
        if batch:
            yield batch
        if failure is not None:
            raise failure
