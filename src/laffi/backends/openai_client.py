"""The official `openai` client against any OpenAI-compatible server, with laffi's failure policy.

    client = RetryingClient(base_url="http://localhost:8000/v1", api_key_env="OPENAI_API_KEY",
                            timeout=60, retries=5, option="annotate")
    client.chat("gpt-4o", ChatRequest(messages, temperature=0, max_tokens=256))   # -> Reply
    client.complete("Qwen/Qwen2.5-7B", prompt_ids, max_tokens=24, stop=["\\n"])   # -> Reply
    OpenAIChat(client, "gpt-4o", concurrency=8).complete_many(requests)           # a chat backend

The client's own retries are off (max_retries=0) so that every attempt is counted and the policy is
ours: 429, 408/409, 5xx, timeouts, connection errors and malformed replies are retried with
exponential backoff and jitter (a Retry-After header wins); 400/413/422 fail that request at once;
401/403/404 mean a wrong key, URL or model name, so they stop the run. So does a request none of whose
attempts could connect (refused, no such host: a server down or not started), which would otherwise cost
every remaining request its whole backoff (15-30 s each at retries=5 and backoff 1 s) before the run ended with nothing;
what arrived is kept. A server that takes a request and drops it fails that request only.
"""

from __future__ import annotations

import json
import os
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

from laffi.backends.chat import ChatRequest, Counters, Reply, RequestFailed
from laffi.config import ConfigError

MAX_BACKOFF = 60.0
NO_KEY = "not-needed"  # local servers (vLLM, llama.cpp, Ollama) take any key unless told otherwise


class Malformed(ValueError):
    """A 200 reply that is not a completion (HTML from a proxy, truncated JSON, no choices)."""


class RetryingClient:
    def __init__(self, base_url: str, api_key_env: str, timeout: float, retries: int,
                 backoff: float = 1.0, option: str = "annotate") -> None:
        import openai  # imported here so that `laffi` starts fast when no server is used

        key = os.environ.get(api_key_env)
        if not key and not base_url and not os.environ.get("OPENAI_BASE_URL"):
            raise ConfigError(f"{option}.api_key_env: set {api_key_env} to your API key "
                              f"(or point {option}.base_url at a server of your own)")
        self._openai = openai
        self.client = openai.OpenAI(api_key=key or NO_KEY, base_url=base_url or None, timeout=timeout,
                                    max_retries=0)
        self.base_url = str(self.client.base_url)
        self.retries, self.backoff, self.option = retries, backoff, option
        self.counters = Counters()

    def chat(self, model: str, request: ChatRequest) -> Reply:
        extra = {} if request.seed is None else {"seed": request.seed}
        return self._call(lambda: self.client.chat.completions.create(
            model=model, messages=request.messages, temperature=request.temperature,
            max_tokens=request.max_tokens, **extra), _chat_text)

    def complete(self, model: str, prompt: list[int] | str, max_tokens: int, stop: list[str] | None,
                 retries: int | None = None, extra_body: dict | None = None, temperature: float = 0.0,
                 seed: int | None = None, final: tuple[int, ...] = ()) -> Reply:
        """Greedy, or sampled at `temperature` from the server's random stream `seed` (vLLM and llama.cpp seed
        each request's sampler with it, so its reply does not depend on what else the server is decoding).
        `final`: HTTP statuses that fail at once, with their status, though the policy would retry them."""
        extra = {"stop": stop} if stop else {}
        if seed is not None:
            extra["seed"] = seed
        return self._call(lambda: self.client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature, extra_body=extra_body,
            **extra), _completion_text, retries, final)

    def _call(self, send: Callable[[], Any], read: Callable[[Any], str], retries: int | None = None,
              final: tuple[int, ...] = ()) -> Reply:
        openai = self._openai
        retries = self.retries if retries is None else retries
        unreachable = 0  # attempts that could not connect
        for attempt in range(retries + 1):
            self.counters.add(requests=1, retries=1 if attempt else 0)
            wait = None
            try:
                response = send()
                text = read(response)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as error:
                raise ConfigError(f"{self.option}.base_url / {self.option}.model / {self.option}.api_key_env: "
                                  f"{self.base_url} answered {error.status_code}: {_short(error)}") from error
            except openai.APIStatusError as error:
                status = error.status_code
                self.counters.error(str(status))
                if status not in (408, 409, 429) and status < 500 or status in final:
                    raise RequestFailed(f"HTTP {status}: {_short(error)}", attempt + 1, status) from error
                wait = _retry_after(error.response)
                last = f"HTTP {status}: {_short(error)}"
            except openai.APITimeoutError:
                self.counters.error("timeout")
                last = f"no reply within {self.client.timeout} s"
            except openai.APIConnectionError as error:
                self.counters.error("connection")
                last = f"connection error: {error.__cause__ or error}"
                unreachable += _could_not_connect(error)
            except (Malformed, ValueError) as error:  # json/pydantic errors are ValueErrors too
                self.counters.error("malformed")
                last = f"malformed reply: {str(error)[:200]}"
            else:
                usage = getattr(response, "usage", None)
                prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
                completion_tokens = getattr(usage, "completion_tokens", 0) or 0
                self.counters.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
                return Reply(text, prompt_tokens, completion_tokens)
            if attempt < retries:
                time.sleep(min(MAX_BACKOFF, wait if wait is not None
                               else self.backoff * 2 ** attempt * random.uniform(0.5, 1.0)))
        if unreachable == retries + 1:
            raise ConfigError(f"{self.option}.base_url: cannot connect to {self.base_url} ({last}, {retries + 1} "
                              f"attempt(s)); is the server running? Rerunning goes on from the replies that arrived")
        raise RequestFailed(f"{last} (after {retries + 1} attempts)", retries + 1)


class OpenAIChat:
    """A chat backend: `concurrency` requests in flight against an OpenAI-compatible chat endpoint."""

    def __init__(self, client: RetryingClient, model: str, concurrency: int) -> None:
        self.client, self.model, self.concurrency = client, model, concurrency
        self.name = f"openai:{model}"
        self.counters = client.counters

    def complete_many(self, requests: list[ChatRequest]) -> Iterator[tuple[int, Reply | RequestFailed]]:
        """Each reply as it arrives. A worker takes its next request only once the caller has handled
        (cached) the reply it yielded: a kill at any moment loses at most the replies still in flight,
        never one that arrived while its worker had already moved on. An error that stops the run (a wrong
        key or URL, a server nothing connects to) is raised once the requests in flight have come back and
        been handled, and no request is sent after it: replies already paid for are kept."""
        arrived: queue.Queue = queue.Queue()
        abandoned = threading.Event()  # the caller stopped iterating: no worker waits on it any more
        stopped = threading.Event()  # a request stopped the run: the ones not yet sent are not

        def one(index: int) -> None:
            result: Any = (index, None)  # not sent
            try:
                if not stopped.is_set():
                    result = (index, self.client.chat(self.model, requests[index]))
            except RequestFailed as error:
                result = (index, error)
            except BaseException as error:  # raised in the caller, after the replies in flight
                stopped.set()
                result = error
            handled = threading.Event()
            arrived.put((result, handled))
            while not handled.wait(0.1) and not abandoned.is_set():
                pass

        pool = ThreadPoolExecutor(self.concurrency)
        try:
            for i in range(len(requests)):
                pool.submit(one, i)
            failure = None
            for _ in range(len(requests)):
                result, handled = arrived.get()
                try:
                    if isinstance(result, BaseException):
                        failure = failure or result
                    elif result[1] is not None:
                        yield result
                finally:
                    handled.set()
            if failure is not None:
                raise failure
        finally:
            abandoned.set()
            pool.shutdown(wait=True, cancel_futures=True)


def _chat_text(response: Any) -> str:
    choices = getattr(response, "choices", None)
    if not choices:
        raise Malformed(f"no choices in {str(response)[:120]!r}")
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(content, str):
        raise Malformed("the first choice has no message content")
    return content


def _completion_text(response: Any) -> str:
    choices = getattr(response, "choices", None)
    if not choices or not isinstance(getattr(choices[0], "text", None), str):
        raise Malformed(f"no completion text in {str(response)[:120]!r}")
    return choices[0].text


def _could_not_connect(error: Exception) -> bool:
    """No connection was made (refused, no such host): not a server that took the request and dropped it, which
    fails that answer only. By the class's name: openai raises it from httpx or, in newer versions, httpx2."""
    return any(cls.__name__ == "ConnectError" for cls in type(error.__cause__).__mro__)


def _retry_after(response: Any) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after")))
    except (TypeError, ValueError, AttributeError):
        return None


def _short(error: Any) -> str:
    body = getattr(error, "body", None)
    text = json.dumps(body) if isinstance(body, (dict, list)) else str(body or error)
    return text[:300]
