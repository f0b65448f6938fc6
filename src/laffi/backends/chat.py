"""What a chat backend takes and gives, and the counters behind the LLM annotator's cost summary.

A chat backend has `name` ("openai:gpt-4o", "transformers:embedded": part of the cache key) and
`complete_many(requests) -> Iterator[(index, Reply | RequestFailed)]`, yielding each reply as soon as
it is there, so the caller can store it before the next one arrives (a killed run keeps what it paid for).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    seed: int | None = None  # varies the sampled reply when a reply is asked for again


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestFailed(RuntimeError):
    """A request that failed for good: its retries are used up, or no retry can fix it (HTTP 400)."""

    def __init__(self, message: str, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts, self.status = attempts, status  # status: the HTTP status of a refused request


@dataclass
class Counters:
    """What a backend has sent and received; shared by threads, so updated under a lock."""

    requests: int = 0  # requests sent, retries included
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: Counter = field(default_factory=Counter)  # by kind: "429", "500", "timeout", "malformed", ...
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def as_dict(self) -> dict:
        with self._lock:
            return {"requests": self.requests, "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "errors": dict(sorted(self.errors.items()))}
