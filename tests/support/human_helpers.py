"""Helpers for the annotation-app tests: a small run directory, a real `laffi serve` process, a client.

Not a test module; the test_human_*.py files import it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import requests

from laffi.cli import main
from laffi.config import DataConfig, save_config
from laffi.layout import RunLayout
from laffi.records import VERDICTS, Answer, Feedback, QAExample, write_records

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_run(root: Path, n_items: int = 6, context: str | None = None, ai_feedback: bool = True) -> Path:
    """A run directory with n train questions, the model's answers, few-shot pool and AI feedback."""
    examples = [QAExample(id=f"q{i:03d}", title=f"Article {i % 3}",
                          context=context or f"Passage {i}: the river Nile flows north through {i} countries.",
                          question=f"Question {i}: where does the Nile flow?", answers=["north", "north"])
                for i in range(n_items)]
    shots = [QAExample(id=f"s{i}", title=f"Shots {i}", context=f"Shot passage {i}.", question="What?",
                       answers=["shot"]) for i in range(3)]
    save_config(RunLayout(root).data_config, {"data": DataConfig()})  # what `laffi prepare` writes first
    write_records(root / "data" / "train.jsonl", examples)
    write_records(root / "data" / "shots.jsonl", shots)
    write_records(root / "answers.jsonl", [Answer(e.id, "north" if i % 2 else "south", "raw", "tiny")
                                           for i, e in enumerate(examples)])
    if ai_feedback:
        write_records(root / "feedback.jsonl", [
            Feedback(e.id, "north" if i % 2 else "south", VERDICTS[0] if i % 2 else VERDICTS[2],
                     f"AI feedback {i}", "ai", "reference") for i, e in enumerate(examples)])
    return root


def laffi(*argv: str) -> tuple[int, str, str]:
    """Run a laffi command in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def add_annotator(run: Path, name: str, *extra: str) -> str:
    code, out, err = laffi("annotators", "add", name, "--run", str(run), *extra)
    assert code == 0, err
    return out.strip()


@contextlib.contextmanager
def serve(run: Path, *extra: str) -> Iterator[str]:
    """`laffi serve RUN --port 0` in a child process; yields its base URL, stops it afterwards."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "laffi.cli", "serve", str(run), "--port", "0", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        match = re.search(r"(http://\S+/)", line)
        if not match:
            raise RuntimeError(f"laffi serve did not start: {line!r} {process.stderr.read()}")
        url = match.group(1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(url + "healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("laffi serve did not answer /healthz within 20 s")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sign_in(url: str, token: str) -> requests.Session:
    """A client signed in with `token` through the sign-in form, as a browser would."""
    session = requests.Session()
    page = session.get(url)
    assert page.status_code == 401
    response = session.post(url, data={"token": token, "csrf_token": csrf(page.text)})
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return session


def csrf(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def item_id_of(response: requests.Response) -> str:
    """The item a /annotate redirect landed on."""
    return requests.utils.unquote(response.url.split("/items/", 1)[1].split("?", 1)[0])


def _postgres_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's postgresql package); yields its URL.

    Skips where the package is missing, fails under CI (make test installs it there).
    """
    import shutil
    import socket
    import tempfile

    import pytest

    bin_dir = _postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed (make system-deps installs Debian's postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # initdb refuses to run as root: run the server as the package's postgres user then.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="laffi-pg-"))
    data.chmod(0o755)
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run(as_user + [str(bin_dir / cmd[0]), *cmd[1:]], check=True,  # noqa: E731
                                      capture_output=True, text=True)
    try:
        run("initdb", "-D", str(data / "db"), "-U", "laffi", "-A", "trust", "--no-sync")
        run("pg_ctl", "-D", str(data / "db"), "-l", str(data / "log"), "-w", "start", "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=100")
        yield f"postgresql://laffi@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
