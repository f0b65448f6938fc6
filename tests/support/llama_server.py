"""Start llama.cpp's OpenAI-compatible server (PyPI `llama-cpp-python[server]`) on 127.0.0.1.

    with LlamaServer(embedded_gguf(), alias="smollm2") as server:
        server.url   # http://127.0.0.1:PORT/v1

Used by the tests that need a real server process, and by benchmarks/llm_annotator.py. The server
answers one request at a time; concurrent requests wait in its queue.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, gguf: Path, alias: str, n_ctx: int = 4096, threads: int = 2, start_timeout: float = 120) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
                        "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
                        "--n_threads", str(threads), "--n_threads_batch", str(threads)]
        self.start_timeout = start_timeout
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    def __enter__(self) -> "LlamaServer":
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.process.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"llama.cpp server not up after {self.start_timeout} s: {self.tail()}")
            time.sleep(0.25)

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
