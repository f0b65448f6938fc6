"""The stages of `laffi run` and `laffi experiment`, announced as they start and timed: the seconds
each took go into run_info.json and results.md (`laffi run`) or experiment.json (`laffi experiment`), so
a slow stage shows up in the numbers, not only in the log. The peak resident memory of the process (or of
a launched child) at the end of each stage goes into run_info.json too: it only grows, so the stage
that raised it is the one whose number jumps."""

from __future__ import annotations

import resource
import time
from typing import Any, Callable

from laffi.models import release_memory


class StageClock:
    """Call it with a stage's name and function; `.seconds` holds each finished stage's wall time and
    `.peak_mb` the process's peak resident memory when it ended."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    def __call__(self, stage: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` as the stage named `stage`; return what it returns."""
        print(f"== {stage}", flush=True)
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        release_memory()  # so one stage's peak memory does not stay on top of the next one's
        self.seconds[stage] = round(time.perf_counter() - started, 1)
        peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        self.peak_mb[stage] = round(peak / 1024, 1)  # Linux reports KiB; children: a launched training
        return result
