"""Systems as data: what a system trains on and how it answers, one small YAML file each.

    from laffi.systems import load_systems
    # or paths to .yaml files; a guided system needs the system whose adapter it answers with
    systems = load_systems(["base", "sft", "laffi", "laffi-refine-mix", "laffi-refine-mix-guided"])

A system is a training recipe (which training sets, and the share of each in its examples) and an
answering procedure (direct, or feedback-guided: answer, predict the feedback on that answer, take
the revised answer the feedback names where its verdict is not "correct", up to `rounds` times). A
system without a recipe answers with another system's adapter (`adapter_of`), or with the base model.
Every system trains with the run's `train` section, so all of them get the same steps, LoRA settings,
learning-rate schedule and seed: the budget held equal is optimizer steps of train.batch_size
examples, not tokens. Two recipe options change that budget, and a system that uses them says so:
`init` continues another system's adapter (a second stage: that system's steps, then these), and
`steps_multiple` trains for that many times train.steps (the control with as many steps). A third
adds tokens, not steps: `aux` puts, next to each step's examples, the same questions' examples in
another set's format, as an auxiliary loss (each loss averaged over its own completion tokens, the
auxiliary one weighted by `aux_weight`). A fourth adds a preference term: `preference` trains, next to
each step's examples, a DPO loss preferring the gold answer of the step's questions to the model's own
answer where the annotator judged that incorrect or partially correct (`Preference`), or with loss kto a
KTO-style loss on the model's own answers, each labelled by its verdict alone.

A fifth repeats the training: `rounds` (iterated rounds, laffi.stages.rounds) trains the recipe, lets the
trained model answer the training questions again, has the same annotator judge those answers, builds the
sets anew from them and continues the adapter on them with a whole new schedule of train.steps, so R rounds
train R x train.steps steps.

A system also names its `family`: the kind of method it is (base, sft or laffi for the packaged
ones), which reports group and colour by, so that laffi-then-sft is drawn as LaFFi and sft-reviewed
as SFT. Without one, a system is a family of its own (its name). No code decides by a system's name
(tests/test_no_name_decisions.py): a role is a field, here or in the run's config (which systems the
others are paired against is `systems.compare_with`, laffi.config.SystemsConfig).

The packaged systems are in `laffi/systems/definitions/`; each file documents itself.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, replace
from pathlib import Path

from laffi.config import ConfigError, TrainConfig, build_section, read_yaml, require

DEFINITIONS = Path(__file__).parent / "definitions"
# the training sets the build stage can make (laffi.stages.build.SET_FORMATS)
SETS = ("sft", "laffi", "refine", "critique", "answer-feedback", "verify")
REVIEW_SETS = ("refine", "critique")  # their completions end with the fields feedback-guided answering reads
PROCEDURES = ("direct", "feedback-guided")
LOSSES = ("dpo", "kto")  # train.preference.loss: pairs, or answers labelled by their verdicts alone


@dataclass
class Preference:
    """A preference term next to the recipe's own loss (train.preference), DPO unless `loss` says kto (below).
    DPO: for every question whose own answer the
    annotator judged incorrect or partially correct, the gold answer is preferred to that answer
    (sets/SYSTEM.pairs.jsonl); a question whose answer was judged correct gives no pair. "Partially correct"
    is a pair like "incorrect", at the same weight: the gold answer is the better completion either way,
    a partially correct answer is the span error that costs exact match, and the tokens it shares with the
    gold answer mostly cancel in the log-ratio difference; a weight of its own would be one more setting
    with no data to choose it. Per pair: -log sigmoid(beta x ((log pi(chosen) - log ref(chosen)) -
    (log pi(rejected) - log ref(rejected)))), ref the model the training starts from, frozen at its step 0:
    the base model for a new LoRA, the adapter it continues otherwise (train.init, or the round before in
    train.rounds) (DPO, Rafailov et al. 2023; TRL's DPOTrainer, loss_type sigmoid). With the recipe's NLL on
    the gold answers beside it, this is Iterative RPO's objective (Pang et al. 2024), which without the NLL
    term collapsed, and whose every iteration's reference is the model the iteration starts from."""

    # dpo: pairs, the gold answer over the model's own answer judged not correct (sets/SYSTEM.pairs.jsonl).
    # kto: unpaired (KTO, Ethayarajh et al. 2024), each distinct own answer once, desirable where judged
    # correct and undesirable where judged incorrect or partially correct (sets/SYSTEM.labelled.jsonl), with
    # r = beta x (log pi - log ref): a desirable answer's loss is desirable_weight x (1 - sigmoid(r)), an
    # undesirable one's 1 - sigmoid(-r). KTO's reference point z (a KL estimate from mismatched prompt and
    # answer pairs, clamped at 0) is fixed at 0, as TRL's KTOTrainer does with loss_type apo_zero_unpaired,
    # whose loss this is: a KL estimate would take a forward pass over extra rows in every step.
    loss: str = "dpo"
    # the term's weight: the step's loss is the mean over its own examples' completion tokens plus weight x
    # the mean DPO loss over the step's pairs (kto: the mean over the step's labelled answers)
    weight: float = 1.0
    beta: float = 0.1  # DPO's temperature, its paper's and TRL's default
    # False: log-probs summed over a completion's tokens (DPO's and TRL's convention). Summed, a long
    # rejected answer is pushed down by its length alone (its log-prob has more terms to lower); True
    # divides each log-prob by its completion's tokens (TRL's sigmoid_norm)
    length_normalized: bool = False
    # kto: lambda_D, with lambda_U 1. 0: n_U / n_D of the system's labelled answers, so that desirable and
    # undesirable answers weigh the same in all (KTO's advice: lambda_D n_D / (lambda_U n_U) in [1, 4/3]);
    # a 135M model's own answers are mostly wrong, so a fixed 1 would let the undesirable ones dominate
    desirable_weight: float = 0.0

    def __post_init__(self) -> None:
        require(self.loss in LOSSES, "train.preference.loss", f"must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        require(self.desirable_weight >= 0, "train.preference.desirable_weight",
                f"must be >= 0 (0: balanced from the set), got {self.desirable_weight}")
        require(self.loss == "kto" or self.desirable_weight == 0, "train.preference.desirable_weight",
                "is a kto option; DPO's pairs have no desirable side of their own")
        require(self.weight > 0 and math.isfinite(self.weight), "train.preference.weight",
                f"must be > 0 and finite, got {self.weight}")
        require(self.beta > 0 and math.isfinite(self.beta), "train.preference.beta",
                f"must be > 0 and finite, got {self.beta}")


@dataclass
class Recipe:
    # training set -> its share of the system's questions; shares sum to 1. Each question with feedback is
    # drawn into one set, a share s of them (within one) into that set's format, which gives it one example per
    # answer that got feedback (generate.samples), or one for sft's gold answer.
    sets: dict[str, float] = field(default_factory=dict)
    init: str = ""  # the system whose trained adapter this training continues ("": a new LoRA)
    steps_multiple: int = 1  # train for this many times train.steps (the warm-up steps stay as set)
    # a set whose examples of the step's questions join every step as an auxiliary loss ("": none): the
    # step's loss is the mean over its own examples' completion tokens plus aux_weight times the mean
    # over the auxiliary examples' (each question is also in this set, sets/SYSTEM.aux.jsonl)
    aux: str = ""
    aux_weight: float = 1.0
    # a preference term on the step's questions (None: none): DPO pairs, the gold answer over the model's own
    # wrong answer, or KTO's own answers labelled by their verdicts
    preference: Preference | None = None
    # trainings in a row, each on the sets built from the answers of the model the one before trained
    # (laffi.stages.rounds): 1 is a single training; R trains R x train.steps steps
    rounds: int = 1

    def __post_init__(self) -> None:
        # one extra loss per step is what the training loop weighs
        require(not (self.preference and self.aux), "train.preference", "not together with train.aux")
        require(bool(self.sets), "train.sets", "name at least one training set")
        require(self.steps_multiple >= 1, "train.steps_multiple", "must be >= 1")
        require(self.rounds >= 1, "train.rounds", f"must be >= 1, got {self.rounds}")
        require(not self.aux or self.aux in SETS, "train.aux", f"unknown set {self.aux!r}; available: {', '.join(SETS)}")
        require(0 < self.aux_weight < math.inf, "train.aux_weight", f"must be > 0 and finite, got {self.aux_weight}")
        require(bool(self.aux) or self.aux_weight == 1.0, "train.aux_weight", "weighs train.aux's examples; set train.aux")
        for name, share in self.sets.items():
            require(name in SETS, "train.sets", f"unknown set {name!r}; available: {', '.join(SETS)}")
            require(0 < share <= 1, f"train.sets.{name}", f"a share in (0, 1], got {share}")
        require(abs(sum(self.sets.values()) - 1) < 1e-9, "train.sets",
                f"shares must sum to 1, got {sum(self.sets.values()):g}")


@dataclass
class Answering:
    procedure: str = "direct"  # direct | feedback-guided
    rounds: int = 1  # feedback-guided: at most this many reviews (and revisions) of an answer
    # feedback-guided: the system whose adapter predicts the feedback (trained on a REVIEW_SETS set);
    # empty: the answering model itself
    reviewer: str = ""
    review_tokens: int = 160  # feedback-guided: new tokens for one predicted feedback and its fields

    def __post_init__(self) -> None:
        require(self.procedure in PROCEDURES, "answer.procedure",
                f"must be one of {', '.join(PROCEDURES)}, got {self.procedure!r}")
        require(self.rounds >= 1, "answer.rounds", "must be >= 1")
        require(self.review_tokens >= 8, "answer.review_tokens", "must be >= 8")
        guided = self.procedure == "feedback-guided"  # the options only it reads
        require(guided or (not self.reviewer and self.rounds == 1), "answer.reviewer" if self.reviewer else "answer.rounds",
                "only feedback-guided answering reads it; set answer.procedure: feedback-guided")


@dataclass
class SystemFile:
    description: str = ""
    # the kind of method it is, which reports group and colour by (the packaged families: base, sft,
    # laffi); "": a family of its own, named as the system is
    family: str = ""
    train: Recipe | None = None  # its own training; None: none
    adapter_of: str = ""  # without a recipe: answer with this system's adapter ("" : the base model)
    answer: Answering = field(default_factory=Answering)

    def __post_init__(self) -> None:
        require(self.train is None or not self.adapter_of, "adapter_of",
                "a system with its own train recipe answers with its own adapter")
        require(not self.family or _is_name(self.family), "family",
                f"letters, digits, - and _, got {self.family!r}")


@dataclass(frozen=True)
class System:
    name: str
    description: str
    recipe: Recipe | None
    adapter_of: str
    answer: Answering
    family: str = ""  # what reports group and colour it with; "" (when made in code): its own name

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.name)

    @property
    def adapter(self) -> str | None:
        """The name of the adapter it answers with (adapters/NAME), or None for the base model."""
        return self.name if self.recipe else self.adapter_of or None

    @property
    def init(self) -> str | None:
        """The system whose adapter its training starts from, or None for a new LoRA."""
        return (self.recipe.init or None) if self.recipe else None

    @property
    def aux(self) -> str | None:
        """The set whose examples join each training step as an auxiliary loss, or None."""
        return (self.recipe.aux or None) if self.recipe else None

    @property
    def preference(self) -> Preference | None:
        """The preference term (DPO or KTO) its training adds (train.preference), or None."""
        return self.recipe.preference if self.recipe else None

    @property
    def training_rounds(self) -> int:
        """How many trainings in a row its recipe asks for (train.rounds; 1: one, as every system before)."""
        return self.recipe.rounds if self.recipe else 1

    def training(self, train: TrainConfig) -> TrainConfig:
        """The run's train section as this system trains with it."""
        return replace(train, steps=train.steps * self.recipe.steps_multiple) if self.recipe else train

    @property
    def guided(self) -> bool:
        return self.answer.procedure == "feedback-guided"

    @property
    def reviewer(self) -> str | None:
        """The adapter that predicts the feedback in feedback-guided answering."""
        return (self.answer.reviewer or self.adapter) if self.guided else None


def _is_name(text: str) -> bool:
    return text.replace("-", "").replace("_", "").isalnum()


def system_path(name: str) -> Path:
    """A packaged system by name ("laffi"), else the path of a user's file."""
    packaged = DEFINITIONS / f"{name}.yaml"
    return packaged if "/" not in name and packaged.is_file() else Path(name).expanduser()


def spec_for(name: str, specs: list[str]) -> str:
    """What `--system NAME` stands for: a packaged system or a file as given, else the .yaml file in `specs`
    (systems.names) whose file name is NAME, as the run's directories and reports name it; else NAME itself
    (a set or an adapter of the user's own)."""
    if system_path(name).is_file():
        return name
    return next((spec for spec in specs if spec.endswith((".yaml", ".yml")) and Path(spec).stem == name), name)


def packaged_systems() -> list[str]:
    return sorted(p.stem for p in DEFINITIONS.glob("*.yaml"))


def load_system(spec: str, option: str = "systems.names") -> System:
    """A system by name or path; errors name `option`, the setting that named it."""
    path = system_path(spec)
    if not path.is_file():
        raise ConfigError(f"{option}: unknown system {spec!r}; packaged: {', '.join(packaged_systems())}, "
                          "or the path of a .yaml file")
    name = path.stem
    require(_is_name(name), option,
            f"{path}: a system's name (its file name) is letters, digits, - and _; rename the file")
    try:
        parsed = build_section(SystemFile, read_yaml(path), f"{path}: ")
    except ConfigError as error:  # a section's own check (shares that do not sum to 1) names its option alone
        if str(error).startswith(f"{path}: "):
            raise
        raise ConfigError(f"{path}: {error}") from None
    return System(name, parsed.description, parsed.train, parsed.adapter_of, parsed.answer, parsed.family or name)


def family_of(spec: str) -> str | None:
    """The family of the system `spec` names (a packaged name or a .yaml path), or None where it no longer
    loads (a user's file since moved or broken): what a report, which has only names, colours by."""
    try:
        return load_system(spec).family
    except (ConfigError, OSError):
        return None


def load_systems(specs: list[str]) -> list[System]:
    """The systems in order, checked together: names unique, every adapter and reviewer one of them."""
    systems = [load_system(spec) for spec in specs]
    names = [s.name for s in systems]
    require(len(set(names)) == len(names), "systems.names", f"names a system twice: {names}")
    trained = {s.name for s in systems if s.recipe}
    for system in systems:
        for role, needed in (("adapter_of", system.adapter_of), ("answer.reviewer", system.reviewer),
                             ("train.init", system.init)):
            require(not needed or needed in trained, "systems.names",
                    f"{system.name}'s {role} is {needed!r}, which is not a system with a train recipe in the list "
                    f"({', '.join(sorted(trained)) or 'none'}); add it")
        require(not system.guided or system.reviewer, "systems.names",
                f"{system.name} is feedback-guided, but no trained adapter reviews its answers (the base model never "
                "learned the fields it reads): give it adapter_of, answer.reviewer or a train recipe")
        reviewer = next((s for s in systems if s.name == system.reviewer), None)
        learned = set(reviewer.recipe.sets) | {reviewer.recipe.aux} if reviewer else set()  # its sets, its aux set too
        require(reviewer is None or any(name in learned for name in REVIEW_SETS), "systems.names",
                f"{system.name} is feedback-guided, but its reviewer {reviewer.name if reviewer else ''} never trained "
                f"on a set whose completions end with the fields it reads ({', '.join(REVIEW_SETS)})")
    for system in systems:
        require(system.name not in _inits(systems, system.name), "systems.names",
                f"{system.name}'s train.init chain comes back to itself")
    return systems


def _inits(systems: list[System], name: str | None) -> list[str]:
    """The systems whose adapters `name`'s training starts from, nearest first."""
    chain, by_name = [], {s.name: s for s in systems}
    while name and (name := by_name[name].init) and name not in chain:
        chain.append(name)
    return chain


def training_order(systems: list[System]) -> list[System]:
    """The systems with a train recipe, each after the system its training continues (train.init)."""
    trained = [s for s in systems if s.recipe]
    return sorted(trained, key=lambda s: len(_inits(systems, s.name)))
