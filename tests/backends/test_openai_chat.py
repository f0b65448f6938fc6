"""OpenAIChat against a real HTTP server: a worker sends its next request only after the caller has
handled the reply before it, so a run killed at any moment has cached every reply that arrived
while its worker moved on (what made the kill-and-resume test flaky on a loaded CI machine)."""

import time

from support.fault_server import FaultServer

from laffi.backends.chat import ChatRequest, Reply
from laffi.backends.openai_client import OpenAIChat, RetryingClient


def requests_for(*items: str) -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": f"Question: {item}?"}], temperature=0, max_tokens=8)
            for item in items]


def chat(server: FaultServer, concurrency: int) -> OpenAIChat:
    client = RetryingClient(base_url=server.url, api_key_env="LAFFI_TEST_NO_KEY", timeout=10, retries=0)
    return OpenAIChat(client, "fault", concurrency)


def test_a_worker_waits_for_the_caller_before_its_next_request():
    with FaultServer(lambda item, n: "ok") as server:
        replies = chat(server, concurrency=1).complete_many(requests_for("q0", "q1", "q2"))
        index, reply = next(replies)
        assert isinstance(reply, Reply)
        time.sleep(0.5)  # the caller is still storing reply 0: nothing else may be asked meanwhile
        assert sum(server.requests.values()) == 1
        rest = list(replies)
        assert sorted([index] + [i for i, _ in rest]) == [0, 1, 2]
        assert all(server.served[item] == 1 for item in ("q0", "q1", "q2"))


def test_a_caller_that_stops_early_does_not_hang_and_the_rest_are_not_sent():
    with FaultServer(lambda item, n: "ok") as server:
        replies = chat(server, concurrency=2).complete_many(requests_for(*(f"q{i}" for i in range(10))))
        next(replies)
        started = time.monotonic()
        replies.close()
        assert time.monotonic() - started < 5
        assert sum(server.requests.values()) <= 3  # the two in flight at most, never the queued ones


def test_a_server_no_attempt_connects_to_stops_the_run_at_the_first_request_and_an_erring_one_does_not():
    import socket

    import pytest

    from laffi.backends.chat import RequestFailed
    from laffi.config import ConfigError

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{free.getsockname()[1]}/v1"
    client = RetryingClient(base_url=dead, api_key_env="LAFFI_TEST_NO_KEY", timeout=10, retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"annotate\.base_url: cannot connect to .* 3 attempt\(s\)\); is the server"):
        list(OpenAIChat(client, "fault", concurrency=2).complete_many(requests_for(*(f"q{i}" for i in range(40)))))
    assert time.monotonic() - started < 5 and client.counters.requests <= 2 * 3  # the two in flight, not all 40
    # a server that answers, if badly (a 500; a connection it takes and closes with no reply): that request
    # fails, and the run goes on
    for action, said in (("500", "HTTP 500"), ("drop", "connection error")):
        with FaultServer(lambda item, n: action if item == "q0" else "ok") as server:
            client = RetryingClient(base_url=server.url, api_key_env="LAFFI_TEST_NO_KEY", timeout=10, retries=1,
                                    backoff=0.01)
            results = dict(OpenAIChat(client, "fault", concurrency=1).complete_many(requests_for("q0", "q1", "q2")))
            assert isinstance(results[0], RequestFailed) and said in str(results[0])
            assert isinstance(results[1], Reply) and isinstance(results[2], Reply)


def test_a_request_that_stops_the_run_lets_the_replies_in_flight_arrive_and_sends_nothing_after(monkeypatch):
    import pytest

    from laffi.config import ConfigError

    # q0 is refused (a wrong key); q1, already in flight, is answered after it: paid for, so it must reach the caller
    with FaultServer(lambda item, n: {"q0": "401", "q1": "slow"}.get(item, "ok"), slow_seconds=0.5) as server:
        client = RetryingClient(base_url=server.url, api_key_env="LAFFI_TEST_NO_KEY", timeout=10, retries=0)
        got = []
        with pytest.raises(ConfigError, match="answered 401"):
            for index, reply in OpenAIChat(client, "fault", concurrency=2).complete_many(
                    requests_for(*(f"q{i}" for i in range(10)))):
                got.append(index)
        assert got == [1]
        assert sum(server.requests.values()) == 2  # q0 and q1: none sent after the refusal
