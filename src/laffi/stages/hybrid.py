"""Stage 3, hybrid: a LaFFi set with an exact share of human feedback, the rest AI feedback.

    laffi export-feedback runs/demo                       # human feedback -> feedback.human.jsonl
    laffi build runs/demo --human-ratio 0.25 --size 64    # 16 human + 48 AI examples

Each question appears at most once: `round(R * N)` questions are drawn (seeded by data.seed)
from those with human feedback, where several people annotated a question one of them is
drawn, and the rest from other questions with AI feedback. Both sets keep train-pool order;
sets/sft.jsonl holds the same questions with their gold answers. sets/laffi.meta.json records the
mix: the sizes, the ratio, which questions came from people and which from the AI annotator.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from laffi.config import ConfigError, DataConfig, check_resume
from laffi.human.config import human_feedback_path
from laffi.layout import RunLayout
from laffi.records import Feedback, QAExample, TrainingExample, read_records
from laffi.stages.build import write_sets


@dataclass(frozen=True)
class HybridConfig:
    human_ratio: float  # R: the share of examples with human feedback, in [0, 1]
    size: int  # N: examples in the set

    def __post_init__(self) -> None:
        if not 0.0 <= self.human_ratio <= 1.0:
            raise ConfigError(f"--human-ratio: must be in [0, 1], got {self.human_ratio}")
        if self.size < 1:
            raise ConfigError(f"--size: must be >= 1, got {self.size}")
        share = self.human_ratio * self.size
        if abs(share - round(share)) > 1e-9:
            raise ConfigError(f"--human-ratio {self.human_ratio} of --size {self.size} is {share:g} examples; "
                              "choose a ratio and size whose product is a whole number")

    @property
    def human(self) -> int:
        return round(self.human_ratio * self.size)


def _read_all(paths: list[Path]) -> list[Feedback]:
    return [f for path in paths if path.exists() for f in read_records(path, Feedback)]


def build_hybrid(run_dir: str | Path, data: DataConfig, hybrid: HybridConfig) -> dict[str, list[TrainingExample]]:
    layout = RunLayout(run_dir)
    examples = read_records(layout.train_examples, QAExample)
    shots = read_records(layout.shots, QAExample)
    sources = [human_feedback_path(run_dir), layout.feedback]
    feedback = [f for f in _read_all(sources) if f.id in {e.id for e in examples}]
    check_resume(layout.root / "sets" / "config.yaml", {"data": data})

    human_by_id: dict[str, list[Feedback]] = defaultdict(list)
    ai_by_id: dict[str, Feedback] = {}
    for f in feedback:
        if f.source == "human":
            human_by_id[f.id].append(f)
        else:
            ai_by_id.setdefault(f.id, f)
    n_human, n_ai = hybrid.human, hybrid.size - hybrid.human
    if len(human_by_id) < n_human:
        raise ValueError(
            f"--human-ratio {hybrid.human_ratio} --size {hybrid.size} needs human feedback on {n_human} "
            f"questions; {sources[0]} and {sources[1]} have it on {len(human_by_id)}. Annotate more "
            f"(`laffi serve`), export it (`laffi export-feedback {run_dir}`), or lower --human-ratio or --size")

    rng = random.Random(data.seed)
    order = {e.id: position for position, e in enumerate(examples)}
    human_ids = rng.sample(sorted(human_by_id, key=order.__getitem__), n_human)
    chosen = {qid: rng.choice(sorted(human_by_id[qid], key=lambda f: f.annotator)) for qid in human_ids}
    ai_pool = [qid for qid in sorted(ai_by_id, key=order.__getitem__) if qid not in chosen]
    if len(ai_pool) < n_ai:
        raise ValueError(
            f"--size {hybrid.size} with {n_human} human examples needs AI feedback on {n_ai} other questions; "
            f"{layout.feedback} has it on {len(ai_pool)}. Run `laffi annotate` on more answers or lower --size")
    chosen.update({qid: ai_by_id[qid] for qid in rng.sample(ai_pool, n_ai)})

    return write_sets(run_dir, examples, shots, chosen, data, hybrid.human_ratio)
