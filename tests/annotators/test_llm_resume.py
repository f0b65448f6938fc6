"""Kill an LLM annotation run midway (SIGKILL, a real subprocess), rerun it, and check that every
answer's reply was paid for exactly once and every answer has its feedback exactly once."""

import json
import subprocess
import sys
import threading
import time

from support.fault_server import FaultServer
from test_llm_annotator import make_run

from laffi.layout import RunLayout, summary_file
from laffi.records import Feedback, read_records

ITEMS, ANSWER_FIRST = 40, 35  # the first annotate() batch is 32 answers; the kill lands in the second


def annotate_command(run_dir, url, cache) -> list[str]:
    return [sys.executable, "-m", "laffi.cli", "annotate", str(run_dir), "--annotator", "llm", "--base-url", url,
            "--model", "fault", f"annotate.cache_dir={cache}", "annotate.concurrency=2", "annotate.timeout=30"]


def test_a_killed_run_resumes_without_paying_twice(tmp_path):
    ids = make_run(tmp_path / "run", ITEMS)
    layout = RunLayout(tmp_path / "run")
    lock, phase = threading.Lock(), {"killed": False, "granted": 0}

    def script(item: str, n: int) -> str:
        # before the kill: answer the first ANSWER_FIRST requests, then hold every request unanswered
        with lock:
            if phase["killed"] or phase["granted"] < ANSWER_FIRST:
                phase["granted"] += 1
                return "ok"
            return "hold"

    with FaultServer(script) as server:
        command = annotate_command(tmp_path / "run", server.url, tmp_path / "cache")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not (sum(server.held.values()) >= 2 and sum(server.served.values()) >= ANSWER_FIRST):
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the annotation run never reached the point to kill it"
            time.sleep(0.05)
        process.kill()  # SIGKILL: no cleanup, no flush, requests in flight
        process.wait()
        served_before = {i for i, n in server.served.items() if n}
        written_before = {f.id for f in read_records(layout.feedback, Feedback)}
        assert len(written_before) == 32  # the first batch was on disk; the second was in flight
        assert served_before - written_before  # paid-for replies that only the cache holds

        with lock:
            phase["killed"] = True
        server.release.set()
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr

        feedback = read_records(layout.feedback, Feedback)
        assert sorted(f.id for f in feedback) == sorted(ids)  # every answer, none twice
        assert all(server.served[i] == 1 for i in ids)  # each reply delivered (paid) once
        held = {i for i, n in server.held.items() if n}
        assert held and not held & served_before  # only requests that were never answered were sent again
        summary = json.loads(summary_file(layout.feedback).read_text())
        assert summary["cache_hits"] == len(served_before - written_before)
        assert summary["requests"] == ITEMS - len(served_before) and summary["feedback"] == ITEMS - 32
