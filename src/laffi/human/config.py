"""Settings of the annotation app (`laffi serve`), checked when built; errors name the flag.

    ServeConfig(run_dir="runs/demo", port=8000, per_item=2)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from laffi.config import ConfigError, require
from laffi.layout import RunLayout


def default_db_url(run_dir: str | Path) -> str:
    """SQLite in the run directory, so the annotations travel with the run."""
    return f"sqlite:///{RunLayout(run_dir).annotations_db.resolve()}"


def check_db_url(url: str, option: str = "--db") -> str:
    if not (url.startswith("sqlite:///") or url.startswith(("postgresql://", "postgresql+psycopg://"))):
        raise ConfigError(f"{option}: expected sqlite:///PATH or postgresql://USER@HOST/DB, got {url!r}")
    return url


@dataclass
class ServeConfig:
    run_dir: str
    db: str = ""  # empty: RUN_DIR/annotations.db
    host: str = "127.0.0.1"  # loopback unless the user asks: the app holds people's work
    port: int = 8000  # 0 picks a free port (the URL is printed)
    # the address of an HTTPS proxy in front (nginx, Caddy), whose X-Forwarded-Proto/-Host/-Port waitress then
    # takes as the request's: the browser's Origin is https://PUBLIC-HOST, and forms check it against them
    trusted_proxy: str = ""
    per_item: int = 1  # K: human annotations wanted per item
    threads: int = 8  # waitress worker threads
    max_feedback_chars: int = 4000
    max_answer_chars: int = 1000  # the corrected answer
    max_body_bytes: int = 64 * 1024  # any request body above this is refused with 413

    def __post_init__(self) -> None:
        RunLayout.existing(self.run_dir)  # its answers are the items; a directory that is not a run is refused
        self.db = check_db_url(self.db or default_db_url(self.run_dir))
        require(bool(self.host), "--host", "must not be empty")
        require(0 <= self.port <= 65535, "--port", f"must be in [0, 65535], got {self.port}")
        require(1 <= self.per_item <= 100, "--per-item", f"must be in [1, 100], got {self.per_item}")
        require(1 <= self.threads <= 256, "--threads", f"must be in [1, 256], got {self.threads}")
        require(1 <= self.max_feedback_chars <= 100_000, "max_feedback_chars",
                f"must be in [1, 100000], got {self.max_feedback_chars}")
        require(1 <= self.max_answer_chars <= 10_000, "max_answer_chars",
                f"must be in [1, 10000], got {self.max_answer_chars}")
        # Room for both text fields at their longest when percent-encoded (up to 4 UTF-8 bytes a
        # character, 3 characters a byte), plus the other fields.
        least = 12 * (self.max_feedback_chars + self.max_answer_chars) + 1024
        require(self.max_body_bytes >= least, "max_body_bytes",
                f"must be >= {least} to fit the longest allowed feedback")
