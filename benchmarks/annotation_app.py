"""How many concurrent submissions per second `laffi serve` holds on loopback.

    python benchmarks/annotation_app.py [--clients 32] [--seconds 10] [--db postgresql://...]

Starts `laffi serve` on a throwaway run directory (SQLite by default), signs in one annotator per
client, then for --seconds every client loops as fast as the server lets it, in two phases:

- annotate: GET /annotate (claims an item, redirects to its page) + POST the feedback, the
  whole cycle a person goes through;
- submit: POST feedback on an item already annotated (a revision), the write path alone.

Each phase prints requests, submissions per second and latency percentiles. Every request goes to
127.0.0.1 only; the loops stop by themselves. Client and server share this machine's cores, so
the numbers are a floor for a server with cores of its own.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from laffi.config import DataConfig, save_config
from laffi.layout import RunLayout
from laffi.records import Answer, QAExample, write_records

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_run(root: Path, items: int) -> None:
    examples = [QAExample(f"q{i:05d}", f"Article {i % 50}", f"Passage {i}: the Nile flows north. " * 8,
                          f"Question {i}: where does the Nile flow?", ["north"]) for i in range(items)]
    save_config(RunLayout(root).data_config, {"data": DataConfig()})  # what `laffi prepare` writes first: a run
    write_records(root / "data" / "train.jsonl", examples)
    write_records(root / "answers.jsonl", [Answer(e.id, "south", "south", "bench") for e in examples])


def sign_in(url: str, token: str) -> requests.Session:
    session = requests.Session()
    page = session.get(url)
    session.post(url, data={"token": token, "csrf_token": CSRF.search(page.text).group(1)}).raise_for_status()
    return session


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def phase(name: str, sessions: list[requests.Session], url: str, seconds: float, revise: bool) -> None:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(session: requests.Session) -> None:
        item = token = None
        while time.monotonic() < stop:
            began = time.perf_counter()
            if not revise or item is None:
                page = session.get(url + "annotate")
                if "/items/" not in page.url:
                    return  # nothing left
                item, token = page.url.split("/items/")[1].split("?")[0], CSRF.search(page.text).group(1)
            response = session.post(url + f"items/{item}", allow_redirects=False,
                                    data={"csrf_token": token, "verdict": "incorrect", "text": "It flows north."})
            with lock:
                if response.status_code == 303:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors.append(f"{response.status_code}")
            if not revise:
                item = None

    threads = [threading.Thread(target=client, args=(s,)) for s in sessions]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    print(f"{name:9} {len(sessions)} clients: {len(latencies)} submissions in {elapsed:.1f} s = "
          f"{len(latencies) / elapsed:.0f}/s; latency p50 {1000 * percentile(latencies, 0.5):.0f} ms, "
          f"p99 {1000 * percentile(latencies, 0.99):.0f} ms; errors {len(errors)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=8, help="server threads")
    parser.add_argument("--db", default="", help="database URL (default: SQLite in the run directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        make_run(run, args.items)
        db = ["--db", args.db] if args.db else []
        tokens = [subprocess.run([sys.executable, "-m", "laffi.cli", "annotators", "add", f"b{i}", "--run", tmp, *db],
                                 capture_output=True, text=True, check=True).stdout.strip()
                  for i in range(args.clients)]
        server = subprocess.Popen([sys.executable, "-m", "laffi.cli", "serve", tmp, "--port", "0",
                                   "--threads", str(args.threads), *db], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            url = re.search(r"(http://\S+/)", server.stdout.readline()).group(1)
            sessions = [sign_in(url, token) for token in tokens]
            phase("annotate", sessions, url, args.seconds, revise=False)
            phase("submit", sessions, url, args.seconds, revise=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
