"""Where each artifact of a run lives. A run directory reads as the story of the experiment:

    config.yaml                     the resolved config of the whole run (`laffi run`)
    data/{train,eval,shots}.jsonl   QA examples: train pool, held-out set, few-shot pool
    answers.jsonl (+ .config.yaml)  the model's answers on the train pool
    feedback.jsonl (+ .config.yaml) feedback on those answers (source human | ai)
    sets/{laffi,sft}.jsonl          prompt/completion training sets
    adapters/{laffi,sft}/           LoRA adapters in PEFT format, train_log.jsonl, checkpoint/
    eval/{base,sft,laffi}/          predictions.jsonl, metrics.json, config.yaml
    results.{json,md}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train_examples(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def eval_examples(self) -> Path:
        return self.data / "eval.jsonl"

    @property
    def shots(self) -> Path:
        return self.data / "shots.jsonl"

    @property
    def answers(self) -> Path:
        return self.root / "answers.jsonl"

    @property
    def feedback(self) -> Path:
        return self.root / "feedback.jsonl"

    def training_set(self, name: str) -> Path:
        return self.root / "sets" / f"{name}.jsonl"

    def adapter(self, name: str) -> Path:
        return self.root / "adapters" / name

    def evaluation(self, system: str) -> Path:
        return self.root / "eval" / system

    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"


def sidecar_config(artifact: Path) -> Path:
    """`answers.jsonl` -> `answers.config.yaml`: the config saved next to a file artifact."""
    return artifact.with_name(artifact.stem + ".config.yaml")


def failures_file(artifact: Path) -> Path:
    """`feedback.jsonl` -> `feedback.failed.jsonl`: the answers an annotator could not give feedback on."""
    return artifact.with_name(artifact.stem + ".failed.jsonl")


def summary_file(artifact: Path) -> Path:
    """`feedback.jsonl` -> `feedback.summary.json`: requests, cache hits, failures and tokens of the last run."""
    return artifact.with_name(artifact.stem + ".summary.json")
