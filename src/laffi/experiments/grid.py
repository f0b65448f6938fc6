"""The config of an experiment: the run every cell shares, the systems, seeds and step budgets, the
grid of variants, and the annotators.

    config = load_experiment_config("configs/experiments/budgets.yaml", ["seeds=0,1"])

A file has these sections (configs/experiments/ has one per question):

    run:          # the shared run: the sections of a `laffi run` config, on top of the default preset
      data: {eval_size: 200, dev_size: 100}
    systems: [base, sft, laffi, laffi-aux-half]   # laffi.systems; base: the model untrained
    baseline: sft         # every other system is paired against it, seed by seed and question by question
    seeds: [0, 1, 2]      # train.seed: the LoRA initialisation and the batch order
    budgets: [32, 64, 128]  # train.steps, each a training of its own with the whole schedule; each
                          # system's is chosen on the mean dev F1 over seeds
    grid:                 # optional: every combination of these values is a cell, each with its own choice
      size: [16, 64]                     # answers drawn (by run.data.seed) from those with feedback: the
                                         # unit is an answer, so with run.generate.samples 1 these are
                                         # questions; 0: all of them, as `laffi run` trains
      annotator: [reference]             # names: reference, or one of `annotators`
      human_ratio: [0.0]                 # share of human feedback (feedback.human.jsonl; hybrid build)
      content: [verdict+explanation+answer]   # laffi.annotators.content
      train: {lr: [1.0e-4, 3.0e-4]}      # any train option: its values (train.steps is `budgets`)
    annotators:   # optional: the `annotate` settings of each annotator the grid names (seed: run.annotate.seed's)
      llm: {annotator: llm, backend: transformers, model: embedded}

Everything is checked when the config is built, and errors name the option (`grid.size: ...`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from laffi.annotators.content import CONTENTS, FULL
from laffi.config import (
    PRESETS,
    AnnotateConfig,
    ConfigError,
    RunConfig,
    TrainConfig,
    build_section,
    merge_values,
    non_default,
    parse_overrides,
    read_yaml,
    require,
)
from laffi.systems import System, load_system, load_systems

AXES = ("size", "annotator", "human_ratio", "content")  # a cell's coordinates, then its train.* options
RESERVED = ("human",)  # feedback.human.jsonl is people's feedback, not an annotator's
NOT_AXES = ("steps", "seed")  # train.steps is `budgets`, train.seed is `seeds`


@dataclass
class GridConfig:
    size: list[int] = field(default_factory=lambda: [0])
    annotator: list[str] = field(default_factory=lambda: ["reference"])
    human_ratio: list[float] = field(default_factory=lambda: [0.0])
    content: list[str] = field(default_factory=lambda: [FULL])
    train: dict[str, list[Any]] = field(default_factory=dict)  # each value read as its train option's type

    def __post_init__(self) -> None:
        for name in AXES:
            values = getattr(self, name)
            require(bool(values), f"grid.{name}", "must list at least one value")
            require(len(set(values)) == len(values), f"grid.{name}", f"lists a value twice: {values}")
        for size in self.size:
            require(size >= 0, "grid.size", f"must be >= 0 (0: every question with feedback), got {size}")
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
                require(ratio == 0 or size > 0, "grid.size", "a share of human feedback needs a size (not 0)")
        if any(self.human_ratio) and "verdict+explanation" in self.content:
            raise ConfigError("grid.content: verdict+explanation needs feedback recorded in parts, and human feedback "
                              "is free text; with grid.human_ratio > 0 use verdict or verdict+explanation+answer")
        options = {f.name for f in fields(TrainConfig)}
        for key, values in self.train.items():
            require(key in options, f"grid.train.{key}", f"unknown train option; known: {', '.join(sorted(options))}")
            require(key not in NOT_AXES, f"grid.train.{key}", "train.steps are the budgets and train.seed the seeds")
            # each value as the train section reads it (an override's "1e-4,3e-4", YAML's "1e-4": floats)
            typed = [getattr(build_section(TrainConfig, {key: v}, "grid.train."), key) for v in values]
            require(not any(isinstance(v, list) for v in typed), f"grid.train.{key}",
                    "an option whose value is a list is not a grid axis; run one experiment per value")
            require(bool(typed), f"grid.train.{key}", "must list at least one value")
            require(len(set(map(str, typed))) == len(typed), f"grid.train.{key}", f"lists a value twice: {typed}")
            self.train[key] = typed

    def axes(self) -> list[str]:
        """A cell's coordinates in table order: the variant's, then `train.KEY` for each train axis."""
        return [*AXES, *(f"train.{key}" for key in self.train)]


@dataclass
class ExperimentConfig:
    run: RunConfig = field(default_factory=lambda: build_section(RunConfig, PRESETS["default"]))
    systems: list[str] = field(default_factory=lambda: ["base", "sft", "laffi", "laffi-aux-half"])
    baseline: str = "sft"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budgets: list[int] = field(default_factory=lambda: [32])
    grid: GridConfig = field(default_factory=GridConfig)
    annotators: dict[str, AnnotateConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # "reference" is always there, with the run's annotate.seed, unless the file sets it otherwise
        self.annotators = {"reference": AnnotateConfig("reference", seed=self.run.annotate.seed), **self.annotators}
        for name in ("seeds", "budgets"):
            values = getattr(self, name)
            require(bool(values), name, "must list at least one value")
            require(len(set(values)) == len(values), name, f"lists a value twice: {values}")
        require(all(b >= 1 for b in self.budgets), "budgets", f"train.steps values, each >= 1: {self.budgets}")
        if "warmup_steps" not in self.grid.train:  # else each cell's is checked with train_for below
            require(all(b >= self.run.train.warmup_steps for b in self.budgets), "budgets",
                    f"each must be >= run.train.warmup_steps ({self.run.train.warmup_steps})")
        preset = build_section(RunConfig, PRESETS["default"])
        for option, value, default, instead in (
                ("run.train.steps", self.run.train.steps, preset.train.steps, "budgets: [...]"),
                ("run.train.seed", self.run.train.seed, preset.train.seed, "seeds: [...]"),
                ("run.systems.names", self.run.systems.names, preset.systems.names, "systems: [...]")):
            require(value == default, option, f"an experiment does not read it; set {instead} instead")
        # the run's annotate section gives the "reference" annotator its seed and nothing else: feedback comes
        # from the annotators named in grid.annotator, each defined under annotators:
        refuse_annotate_options(sorted(set(non_default(self.run.annotate)) - {"seed"}))
        require(self.run.data.dev_size > 0, "run.data.dev_size", "the budgets are chosen on the dev set; must be > 0")
        # each system alone first: what an experiment refuses of a system itself comes before what the list lacks
        # (load_systems would advise adding laffi for laffi-then-sft, which is then refused for its train.init)
        each = [load_system(spec, "systems") for spec in self.systems]
        for system in (s for s in each if s.recipe):
            require(system.init is None, "systems",
                    f"{system.name} continues {system.init}'s adapter (train.init), which a budget cannot hold equal; "
                    "compare it with `laffi run` at equal steps")
            require(system.reviewer in (None, system.name), "systems",
                    f"{system.name} is reviewed by another system's adapter; an experiment answers with its own only")
        for system in (s for s in each if s.recipe):
            require(system.recipe.steps_multiple == 1, "systems",
                    f"{system.name} trains {system.recipe.steps_multiple}x the steps (train.steps_multiple); in an "
                    "experiment the steps are the budgets: list the larger budget for the system it repeats")
        untrained = [s for s in each if s.recipe is None]
        for system in untrained:
            require(system.adapter_of == "", "systems",
                    f"{system.name} answers with {system.adapter_of}'s adapter and has no train recipe of its own")
            require(not system.guided, "systems",
                    f"{system.name} has no training and answers feedback-guided; an experiment's untrained system "
                    "answers directly")
        self.load_systems()  # then the list as a whole: names unique, every adapter one of them
        require(len(untrained) <= 1, "systems",
                f"at most one untrained system (the base model), got {', '.join(s.name for s in untrained)}")
        require(self.baseline in self.systems, "baseline", f"{self.baseline!r} is not one of systems {self.systems}")
        require(any(s.name == self.baseline for s in self.trained()), "baseline",
                f"{self.baseline} has no train recipe; the baseline is trained (e.g. sft)")
        for name in self.grid.annotator:
            require(name in self.annotators, "grid.annotator",
                    f"unknown annotator {name!r}; name reference or add it under annotators")
            require(self.annotators[name].annotator != "llm" or "verdict+explanation" not in self.grid.content,
                    "grid.content", f"verdict+explanation needs feedback recorded in parts, and annotator {name} "
                    "(an LLM) writes free text; use verdict or verdict+explanation+answer")
        for name in self.annotators:
            require(name not in RESERVED and name.replace("-", "").replace("_", "").isalnum(),
                    f"annotators.{name}", "names are letters, digits, - and _, and not 'human'")
        pool = self.run.data.train_size * self.run.generate.samples  # answers: the unit the draw counts
        for size in self.grid.size:
            require(not pool or size <= pool, "grid.size", f"{size} is more than the train pool's answers, "
                    f"run.data.train_size={self.run.data.train_size} x run.generate.samples={self.run.generate.samples}")
        for values in self.train_cells():  # every train axis value, at every budget, builds a valid train section
            for budget in self.budgets:
                self.train_for(values, budget, self.seeds[0])

    def load_systems(self) -> list[System]:
        return load_systems(self.systems)

    def trained(self) -> list[System]:
        """The systems with a train recipe: one training per cell, budget and seed."""
        return [s for s in self.load_systems() if s.recipe]

    def train_cells(self) -> list[dict[str, Any]]:
        """Every combination of the grid's train options, {} when it has none."""
        combos: list[dict[str, Any]] = [{}]
        for key, values in self.grid.train.items():
            combos = [{**combo, key: value} for combo in combos for value in values]
        return combos

    def train_for(self, options: dict[str, Any], budget: int, seed: int) -> TrainConfig:
        """The run's train section with a cell's train options, a budget and a seed."""
        values = {**asdict(self.run.train), **options, "steps": budget, "seed": seed}
        return build_section(TrainConfig, values, "grid.train.")

    def annotate_config(self, name: str) -> AnnotateConfig:
        return self.annotators[name]


MOVED = {"system": "systems", "seeds": "seeds"}  # grid keys of `laffi ablate` that are top-level now


# a `laffi run` config's sections, given to `laffi experiment` (systems: an experiment's own, top-level list)
RUN_SECTIONS = {f.name for f in fields(RunConfig)} - {"systems"}


def experiment_config_from(values: Any) -> ExperimentConfig:
    if not isinstance(values, dict):
        raise ConfigError("experiment config: expected a YAML mapping with run, systems, seeds, budgets, grid")
    grid = values.get("grid")
    grid = {} if grid is None else grid
    for old, new in MOVED.items():
        if isinstance(grid, dict) and old in grid:
            raise ConfigError(f"grid.{old}: now a top-level `{new}:` (every cell runs every system and seed)")
    if not isinstance(values.get("run") or {}, dict):
        raise ConfigError(f"run: expected a mapping of a `laffi run` config's sections (model:, data:, train:, ...), "
                          f"got {values['run']!r:.80}")
    annotate = (values.get("run") or {}).get("annotate")
    if isinstance(annotate, dict):  # before the section's own checks, which would ask for what is not read
        defaults = {f.name: f.default for f in fields(AnnotateConfig)}
        refuse_annotate_options(sorted(k for k, v in annotate.items() if k in defaults and v != defaults[k]
                                       and k not in ("seed", *AnnotateConfig.OPERATIONAL)))
    if RUN_SECTIONS & set(values):
        raise ConfigError(f"{sorted(RUN_SECTIONS & set(values))[0]}: a `laffi run` config's section; in an experiment "
                          "config it goes under run:")
    # the shared run starts from the default preset, as `laffi run` does
    run = merge_values(PRESETS["default"], values.get("run") or {})
    annotators = values.get("annotators") or {}
    if isinstance(annotators, dict):  # each draws with the run's annotate.seed, as reference does, unless it sets one
        annotate = run.get("annotate") or {}  # not a mapping: refused as run.annotate when the run section is built
        seed = annotate.get("seed", AnnotateConfig.seed) if isinstance(annotate, dict) else AnnotateConfig.seed
        annotators = {name: {"seed": seed, **a} if isinstance(a, dict) else a for name, a in annotators.items()}
    return build_section(ExperimentConfig, {**values, "run": run, "grid": grid, "annotators": annotators})


def refuse_annotate_options(ignored: list[str]) -> None:
    """The run's annotate section gives the "reference" annotator its seed and nothing else."""
    require(not ignored, f"run.annotate.{ignored[0] if ignored else ''}",
            "an experiment does not read it (only run.annotate.seed); define the annotator under "
            "annotators: and list its name in grid.annotator instead")


def load_experiment_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The file, then key=value overrides with dotted keys (`run.train.lr=1e-4`, `seeds=0,1`, `budgets=32,64`)."""
    return experiment_config_from(merge_values(read_yaml(path), parse_overrides(overrides or [])))


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return asdict(config)
