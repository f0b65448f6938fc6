"""A small HTTP server on 127.0.0.1 that answers OpenAI-style chat requests badly on purpose.

Only for fault injection (the real-server tests use llama.cpp's server): per item, a script says
what the n-th request gets: a good reply, 429, 500, 400, 401, a garbage body, an HTML page, a reply too
slow for the client's timeout, a reply the annotator cannot parse, a connection closed with no reply,
or no reply at all until the server is released (to kill a client while requests are in flight). It counts every request per
item and every good reply it delivered, which is what a paid API would bill.

    with FaultServer(lambda item, n: "500" if n == 0 else "ok") as server:
        ... base_url=server.url ...
        server.requests["q3"], server.served["q3"]

The legacy completions endpoint answers with `completions(body) -> (status, json)` when given.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Script = Callable[[str, int], str]  # (item, how many requests for it came before) -> action


def item_of(body: dict) -> str:
    """The item a request is about: the question the prompt asks ("Question: q3?" -> "q3")."""
    text = "\n".join(m.get("content", "") for m in body.get("messages", []))
    match = re.search(r"Question: (\S+?)\?", text)
    return match.group(1) if match else "?"


class FaultServer:
    def __init__(self, script: Script, slow_seconds: float = 2.0,
                 completions: Callable[[dict], tuple[int, dict]] | None = None,
                 reply: Callable[[str], str] | None = None) -> None:
        """`reply(item)`: the text of an "ok" reply (default: a verdict "correct" in feedback-v1's format)."""
        self.script, self.slow_seconds, self.completions = script, slow_seconds, completions
        self.reply = reply or (lambda item: f"Verdict: correct\nFeedback: The answer to {item} is right.")
        self.requests: Counter = Counter()
        self.served: Counter = Counter()
        self.held: Counter = Counter()
        self.release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/v1/completions") and server.completions:
                    status, payload = server.completions(body)
                    server._send(self, status, json.dumps(payload).encode(), "application/json")
                    return
                item = item_of(body)
                with server._lock:
                    n = server.requests[item]
                    server.requests[item] += 1
                action = server.script(item, n)
                try:
                    server._answer(self, action, item, body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, kill)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _answer(self, handler: BaseHTTPRequestHandler, action: str, item: str, body: dict) -> None:
        if action == "hold":
            with self._lock:
                self.held[item] += 1
            self.release.wait()
            return
        if action == "drop":  # the connection closed with no reply (a worker crashing on a prompt, a proxy reset)
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "slow":
            time.sleep(self.slow_seconds)
        if action in ("ok", "slow", "unparseable"):
            content = self.reply(item) if action != "unparseable" else "I think it is fine, more or less."
            payload = {"id": f"chatcmpl-{item}", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}],
                       "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}
            self._send(handler, 200, json.dumps(payload).encode(), "application/json")
            if action == "ok":
                with self._lock:
                    self.served[item] += 1
        elif action == "429":
            self._send(handler, 429, b'{"error": {"message": "slow down"}}', "application/json", {"Retry-After": "0"})
        elif action in ("500", "400", "401"):
            self._send(handler, int(action), b'{"error": {"message": "injected"}}', "application/json")
        elif action == "garbage":
            self._send(handler, 200, b'{"choices": [{"message": {"content": "trunc', "application/json")
        elif action == "html":
            self._send(handler, 200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        else:
            raise ValueError(f"unknown action {action!r}")

    @staticmethod
    def _send(handler, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def __enter__(self) -> "FaultServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
