"""The LLM annotator: an LLM reads the passage, the question, the model's answer and (unless
reference-free) the gold answers, and writes the verdict and the feedback.

    laffi annotate runs/demo annotate.annotator=llm annotate.model=gpt-4o          # OPENAI_API_KEY set
    laffi annotate runs/demo annotate.annotator=llm annotate.base_url=http://localhost:8000/v1 \\
        annotate.model=Qwen/Qwen2.5-72B-Instruct annotate.concurrency=32           # a vLLM server
    laffi annotate runs/demo annotate.annotator=llm annotate.backend=transformers annotate.model=embedded

The annotator is data: a prompt template file (laffi/annotators/templates/, or your own) and the
`annotate.*` options. Each answer gets one request; a reply the template's parser cannot read is
asked again, sampled (`annotate.parse_retries` times), and then recorded as an AnnotationFailure,
never dropped. Every reply is stored in the on-disk cache the moment it arrives, keyed by template
version, backend, model, rendered prompt and decoding settings: a rerun, or a run killed midway and
started again, never pays for a reply twice. With several answers per question (generate.samples),
each (question, sample) answer is one request, and its Feedback carries the sample; answers that
repeat one another word for word are asked once (the same prompt, the same cache entry).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from laffi.annotators.cache import ReplyCache
from laffi.annotators.template import ReplyError, Template, load_template
from laffi.backends.chat import ChatRequest, Reply
from laffi.backends.local_chat import LocalChat
from laffi.backends.openai_client import OpenAIChat, RetryingClient
from laffi.config import AnnotateConfig
from laffi.models import cache_dir
from laffi.records import AnnotationFailure, Answer, Feedback, QAExample

RETRY_TEMPERATURE = 0.7  # a re-ask at temperature 0 would get the same unreadable reply back
# Options that change how replies are fetched but not what they say: a run may change them and resume;
# the seed too, which only the reference annotator draws from.
OPERATIONAL = (*AnnotateConfig.OPERATIONAL, "seed")


def cache_root(config: AnnotateConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    return cache_dir() / "llm"


def settings(config: AnnotateConfig) -> dict:
    """The options that decide the feedback, saved beside it and checked when a run resumes."""
    return {k: v for k, v in asdict(config).items() if k not in OPERATIONAL}


def make_backend(config: AnnotateConfig):
    if config.backend == "transformers":
        return LocalChat(config.model, config.concurrency)
    client = RetryingClient(config.base_url, config.api_key_env, config.timeout, config.retries, config.backoff)
    return OpenAIChat(client, config.model, config.concurrency)


class LLMAnnotator:
    def __init__(self, config: AnnotateConfig, backend=None, template: Template | None = None,
                 cache: ReplyCache | None = None) -> None:
        self.config = config
        self.template = template or load_template(config.template)
        self.backend = backend or make_backend(config)
        self.cache = cache or ReplyCache(cache_root(config))
        self.name = f"llm:{config.model}:{self.template.version}" + (":reference-free" if config.reference_free else "")
        # answers per annotate() call: enough to keep every request slot busy
        self.batch_size = max(32, 4 * config.concurrency)
        self.stats = {"items": 0, "feedback": 0, "failed_unparseable": 0, "failed_request": 0,
                      "cache_hits": 0, "reasks": 0, "cached_tokens": 0}
        self._started = time.perf_counter()

    def _request(self, example: QAExample, answer: Answer, attempt: int) -> tuple[dict, ChatRequest]:
        messages = self.template.render(example, answer, self.config.reference_free)
        temperature = self.config.temperature if attempt == 0 else max(self.config.temperature, RETRY_TEMPERATURE)
        seed = attempt or None
        key = {"template": self.template.version, "backend": self.backend.name, "messages": messages,
               "temperature": temperature, "max_tokens": self.config.max_tokens, "seed": seed}
        return key, ChatRequest(messages, temperature, self.config.max_tokens, seed)

    def annotate(self, pairs: list[tuple[QAExample, Answer]]) -> list[Feedback | AnnotationFailure]:
        """One result per pair, in order: its Feedback, or the AnnotationFailure saying why there is none."""
        for example, answer in pairs:
            if example.id != answer.id:
                raise ValueError(f"answer {answer.id!r} paired with question {example.id!r}")
        results: list[Feedback | AnnotationFailure | None] = [None] * len(pairs)
        pending, last_error = list(range(len(pairs))), {}
        for attempt in range(self.config.parse_retries + 1):
            self.stats["reasks"] += len(pending) if attempt else 0
            replies = self._replies([pairs[i] for i in pending], attempt)
            still = []
            for i, reply in zip(pending, replies):
                example, answer = pairs[i]
                if not isinstance(reply, Reply):
                    results[i] = AnnotationFailure(example.id, answer.prediction, self.name, "request", str(reply),
                                                   reply.attempts, answer.sample)
                    continue
                try:
                    parsed = self.template.parse(reply.text)
                except ReplyError as error:
                    last_error[i] = f"{error}; last reply: {reply.text[:500]!r}"
                    still.append(i)
                    continue
                # the right answer it names is the corrected one; a correct answer is its own right answer
                corrected = parsed.answer if parsed.verdict != "correct" else None
                results[i] = Feedback(id=example.id, answer=answer.prediction, verdict=parsed.verdict, text=parsed.text,
                                      source="ai", annotator=self.name, corrected_answer=corrected,
                                      sample=answer.sample)
            pending = still
        for i in pending:
            example, answer = pairs[i]
            results[i] = AnnotationFailure(example.id, answer.prediction, self.name, "unparseable", last_error[i],
                                           self.config.parse_retries + 1, answer.sample)
        self.stats["items"] += len(pairs)
        for result in results:
            key = "feedback" if isinstance(result, Feedback) else f"failed_{result.reason}"
            self.stats[key] += 1
        return results

    def _replies(self, pairs: list[tuple[QAExample, Answer]], attempt: int) -> list:
        """A Reply (or the RequestFailed) per pair: from the cache, else from the backend, cached on arrival."""
        keys, requests = [], {}
        out: list = [None] * len(pairs)
        for example, answer in pairs:
            payload, request = self._request(example, answer, attempt)
            keys.append(ReplyCache.key(payload))
            requests.setdefault(keys[-1], (payload, request))  # identical inputs are asked once
        cached = {key: reply for key in requests if (reply := self._cached(key)) is not None}
        for i, key in enumerate(keys):
            if key in cached:
                out[i] = cached[key]
                self.stats["cache_hits"] += 1
                self.stats["cached_tokens"] += out[i].prompt_tokens + out[i].completion_tokens
        todo = [key for key in requests if key not in cached]
        for j, reply in self.backend.complete_many([requests[key][1] for key in todo]):
            if isinstance(reply, Reply):
                self.cache.put(todo[j], requests[todo[j]][0], asdict(reply))
            for i, key in enumerate(keys):
                if key == todo[j]:
                    out[i] = reply
        return out

    def _cached(self, key: str) -> Reply | None:
        """The reply stored under `key`; None if there is none, or one of another shape (another version's),
        which is then asked again and overwritten."""
        hit = self.cache.get(key)
        try:
            return None if hit is None else Reply(**hit)
        except TypeError:
            return None

    def summary(self) -> dict:
        seconds = time.perf_counter() - self._started
        sent = self.backend.counters.as_dict()
        return {"annotator": self.name, "backend": self.backend.name, "template": str(self.template.path),
                "cache": str(self.cache.root), **self.stats, **sent, "seconds": round(seconds, 2),
                "requests_per_s": round(sent["requests"] / seconds, 3) if seconds else None}
