"""The config of an ablation: the run every cell shares, the grid of variants, and the annotators.

    config = load_ablate_config("configs/ablate/size-system.yaml", ["grid.seeds=0,1"])

A file has three sections (configs/ablate/ has one per axis):

    run:          # the shared run: the sections of a `laffi run` config, on top of the default preset
      data: {eval_size: 100, train_size: 64}
    grid:         # every combination of these values is a cell, each run once per seed
      system: [sft, laffi]                 # systems with a train recipe (laffi.systems)
      size: [16, 64]                     # training examples (questions), drawn from the train pool
      seeds: [0, 1, 2]                   # the draw, the LoRA initialisation and the batch order
      annotator: [reference]             # names: reference, or one of `annotators`
      human_ratio: [0.0]                 # share of human feedback (feedback.human.jsonl; hybrid build)
      content: [verdict+explanation+answer]   # laffi.annotators.content
    annotators:   # optional: the `annotate` settings of each annotator the grid names
      llm: {annotator: llm, backend: transformers, model: embedded}

Everything is checked when the config is built, and errors name the option (`grid.size: ...`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laffi.annotators.content import CONTENTS, FULL
from laffi.config import (
    PRESETS,
    AnnotateConfig,
    ConfigError,
    RunConfig,
    build_section,
    merge_values,
    parse_overrides,
    read_yaml,
    require,
)
from laffi.systems import load_system

TRAINED_SYSTEMS = ("sft", "laffi")
AXES = ("system", "size", "annotator", "human_ratio", "content")  # a cell's coordinates, in table order
RESERVED = ("human",)  # feedback.human.jsonl is people's feedback, not an annotator's


@dataclass
class GridConfig:
    system: list[str] = field(default_factory=lambda: list(TRAINED_SYSTEMS))
    size: list[int] = field(default_factory=lambda: [32])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    annotator: list[str] = field(default_factory=lambda: ["reference"])
    human_ratio: list[float] = field(default_factory=lambda: [0.0])
    content: list[str] = field(default_factory=lambda: [FULL])

    def __post_init__(self) -> None:
        for name in ("system", "size", "seeds", "annotator", "human_ratio", "content"):
            values = getattr(self, name)
            require(bool(values), f"grid.{name}", "must list at least one value")
            require(len(set(values)) == len(values), f"grid.{name}", f"lists a value twice: {values}")
        for name in self.system:
            system = load_system(name, option="grid.system")
            require(system.recipe is not None, "grid.system",
                    f"{name} has no train recipe of its own; a grid cell trains one (e.g. sft, laffi, laffi-mix)")
            require(system.init is None, "grid.system",
                    f"{name} continues {system.init}'s adapter (train.init), which a grid cell does not train")
            require(system.reviewer in (None, system.name), "grid.system",
                    f"{name} is reviewed by another system's adapter; a grid cell answers with its own only")
        for size in self.size:
            require(size >= 1, "grid.size", f"must be >= 1, got {size}")
        for content in self.content:
            require(content in CONTENTS, "grid.content",
                    f"unknown content {content!r}; available: {', '.join(CONTENTS)}")
        for ratio in self.human_ratio:
            require(0.0 <= ratio <= 1.0, "grid.human_ratio", f"must be in [0, 1], got {ratio}")
            for size in self.size:
                share = ratio * size
                require(abs(share - round(share)) < 1e-9, "grid.human_ratio",
                        f"{ratio} of grid.size {size} is {share:g} examples; choose ratios and sizes whose "
                        "products are whole numbers")
        if any(self.human_ratio) and "verdict+explanation" in self.content:
            raise ConfigError("grid.content: verdict+explanation needs feedback recorded in parts, and human feedback "
                              "is free text; with grid.human_ratio > 0 use verdict or verdict+explanation+answer")


@dataclass
class AblateConfig:
    run: RunConfig = field(default_factory=lambda: build_section(RunConfig, PRESETS["default"]))
    grid: GridConfig = field(default_factory=GridConfig)
    annotators: dict[str, AnnotateConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # "reference" is always there, with the run's annotate.seed, unless the file sets it otherwise
        self.annotators = {"reference": AnnotateConfig("reference", seed=self.run.annotate.seed), **self.annotators}
        for name in self.grid.annotator:
            require(name in self.annotators, "grid.annotator",
                    f"unknown annotator {name!r}; name reference or add it under annotators")
        for name in self.annotators:
            require(name not in RESERVED and name.replace("-", "").replace("_", "").isalnum(),
                    f"annotators.{name}", "names are letters, digits, - and _, and not 'human'")
        pool = self.run.data.train_size
        for size in self.grid.size:
            require(not pool or size <= pool, "grid.size",
                    f"{size} is more than the train pool, run.data.train_size={pool}")

    def annotate_config(self, name: str) -> AnnotateConfig:
        return self.annotators[name]


def ablate_config_from(values: Any) -> AblateConfig:
    if not isinstance(values, dict):
        raise ConfigError("ablation config: expected a YAML mapping with run, grid and annotators")
    if isinstance(values.get("grid"), dict) and "objective" in values["grid"]:
        raise ConfigError("grid.objective: now called grid.system (which systems to train: sft, laffi)")
    # the shared run starts from the default preset, as `laffi run` does
    return build_section(AblateConfig, {**values, "run": merge_values(PRESETS["default"], values.get("run") or {}),
                                        "grid": values.get("grid") or {}, "annotators": values.get("annotators") or {}})


def load_ablate_config(path: str | Path, overrides: list[str] | None = None) -> AblateConfig:
    """The file, then key=value overrides with dotted keys (`run.train.steps=8`, `grid.seeds=0,1`)."""
    return ablate_config_from(merge_values(read_yaml(path), parse_overrides(overrides or [])))


def to_dict(config: AblateConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
