"""A training killed right after its first checkpoint, in this process (not a test module):

    with killed_after_a_checkpoint(monkeypatch):
        train(layout, "sft", config.model, config.train)   # saves the checkpoint, then raises Crash
    train(layout, "sft", config.model, config.train)       # resumes from it
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

import laffi.stages.train as train_module


class Crash(Exception):
    pass


@contextlib.contextmanager
def killed_after_a_checkpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The body's training saves its first checkpoint and dies (Crash, which this expects); after the
    body, checkpoints are saved as usual again."""
    real = train_module.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        raise Crash("killed right after a checkpoint")

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        yield
    monkeypatch.setattr(train_module, "save_checkpoint", real)
