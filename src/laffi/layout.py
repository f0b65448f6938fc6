"""Every path of a run directory and of an experiment directory: no other module spells their names.

A run directory reads as the story of the experiment:

    config.yaml                     the resolved config of the whole run (`laffi run`, `laffi prepare`)
    data/{train,dev,eval,shots}.jsonl  QA examples: training questions, dev set, held-out set, few-shot
                                    pool; data/config.yaml
    answers.jsonl                   the model's answers on the train pool (+ answers.config.yaml)
    feedback.jsonl                  feedback on those answers, source ai (+ .config.yaml, .failed.jsonl,
                                    .summary.json); feedback.human.jsonl: people's (`laffi export-feedback`)
    sets/{laffi,sft}.jsonl          prompt/completion training sets; sets/config.yaml, sets/laffi.meta.json;
                                    sets/SYSTEM.jsonl (+ .meta.json, .aux.jsonl, .pairs.jsonl or .labelled.jsonl): a system's own set
    adapters/SYSTEM/                a LoRA adapter in PEFT format, train_log.jsonl, summary.json,
                                    config.yaml, checkpoint/ (and reference_logps.json: train.preference)
    eval/SYSTEM/                    predictions.jsonl, metrics.json, config.yaml (eval-dev/SYSTEM/: the
                                    same on the dev set, eval.split=dev)
    rounds/SYSTEM/rN/               train.rounds (laffi.stages.rounds): round N's answers.jsonl (round N-1's
                                    model on the training questions), feedback.jsonl, sets/, layout.json,
                                    and adapters/SYSTEM/ for every round but the last, which trains into
                                    adapters/SYSTEM/ (round 1: r1/ holds its adapter; it trained on the
                                    run's own answers, feedback and sets)
    attention/SYSTEM/               attention.json and its PNGs (`laffi attention`)
    results.{json,md}, run_info.json, report.html, stats.json, annotations.db

Saved configs follow one rule: what a stage writes into a folder has FOLDER/config.yaml, what it
writes as one file has FILE.config.yaml beside it.

An experiment directory is a run directory (the split, the answers and the base evaluation every cell
shares) with the grid's own parts around it; see `ExperimentLayout`. Its variants and jobs are run
directories of their own whose data/ (and, for a job, sets/) are elsewhere in the experiment: their
layout.json says where, relative to them, and `RunLayout.of(path)` reads it, so a stage run by hand in
a job (`laffi train`, `laffi attention`, `laffi report`) uses the split and the set the experiment used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from laffi.records import write_json

CONFIG = "config.yaml"
LAYOUT_FILE = "layout.json"  # a variant's or job's shared folders (`RunLayout.record`)
# PEFT's file names: an adapter folder is finished once its weights are there
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def sidecar_config(artifact: Path) -> Path:
    """`answers.jsonl` -> `answers.config.yaml`: the config saved next to a file artifact."""
    return artifact.with_name(artifact.stem + ".config.yaml")


def failures_file(artifact: Path) -> Path:
    """`feedback.jsonl` -> `feedback.failed.jsonl`: the answers an annotator could not give feedback on."""
    return artifact.with_name(artifact.stem + ".failed.jsonl")


def summary_file(artifact: Path) -> Path:
    """`feedback.jsonl` -> `feedback.summary.json`: requests, cache hits, failures and tokens of the last run."""
    return artifact.with_name(artifact.stem + ".summary.json")


def is_adapter(folder: Path) -> bool:
    """Whether `folder` holds a PEFT adapter (its adapter_config.json)."""
    return (Path(folder) / ADAPTER_CONFIG).exists()


def adapter_weights(folder: Path) -> Path:
    """The file of an adapter's weights: PEFT's safetensors, or the pickle that PEFT before 0.6 wrote."""
    older = Path(folder) / "adapter_model.bin"
    return older if older.exists() and not (Path(folder) / ADAPTER_WEIGHTS).exists() else Path(folder) / ADAPTER_WEIGHTS


def adapter_finished(folder: Path) -> bool:
    """Whether training wrote the adapter's weights into `folder` (a crashed one has only a checkpoint)."""
    return (Path(folder) / ADAPTER_WEIGHTS).exists()


class NotARun(FileNotFoundError):
    """A directory no run was started in, given to a command that reads a run (`RunLayout.existing`)."""


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory. `data` and `sets` are its own folders unless given: an
    experiment's jobs read the experiment's split and their variant's training sets where they are."""

    root: Path
    data: Path
    sets: Path

    def __init__(self, root: str | Path, data: str | Path | None = None, sets: str | Path | None = None) -> None:
        root = Path(root)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "data", Path(data) if data is not None else root / "data")
        object.__setattr__(self, "sets", Path(sets) if sets is not None else root / "sets")

    @classmethod
    def existing(cls, run_dir: str | Path) -> "RunLayout":
        """The layout (`RunLayout.of`) of a directory a run was started in, for every command that reads
        a run; anything else is refused with `NotARun` before the command reads or creates anything.

        A run directory is one where laffi wrote what it writes first: config.yaml (`laffi run`, `laffi
        experiment`: an experiment directory is a run directory too), data/config.yaml (`laffi prepare`),
        or layout.json (an experiment's variants and jobs, whose data/ is elsewhere)."""
        root = Path(run_dir)
        start = f"start a run with `laffi prepare {root}` or `laffi run --out {root}`"
        if not root.is_dir():
            reason = "not a directory" if root.exists() else "no such directory"
            raise NotARun(f"{root}: not a run directory ({reason}); {start}")
        # a run's data/ has a config.yaml too (the split's), and its questions, but no data/ of its own
        if root.resolve().name == "data" and (root / "train.jsonl").is_file() and not (root / "data").exists():
            raise NotARun(f"{root}: the data folder of the run {root.resolve().parent}; give the run directory")
        layout = cls.of(root)
        if not any(p.is_file() for p in (layout.config, layout.data_config, root / LAYOUT_FILE)):
            raise NotARun(f"{root}: not a run directory (it has no {CONFIG}, data/{CONFIG} or {LAYOUT_FILE}); {start}")
        return layout

    @classmethod
    def of(cls, run_dir: str | Path) -> "RunLayout":
        """The layout of an existing directory: its own folders, or the shared ones its layout.json names
        (an experiment's variants and jobs), so any stage run by hand there finds what the experiment used."""
        root = Path(run_dir)
        pointers = root / LAYOUT_FILE
        if not pointers.exists():
            return cls(root)
        try:
            folders = json.loads(pointers.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{pointers}: not valid JSON ({error.msg})") from None
        if not isinstance(folders, dict) or set(folders) - {"data", "sets"}:
            raise ValueError(f"{pointers}: expected {{\"data\": PATH, \"sets\": PATH}}, got {folders!r:.80}")
        return cls(root, **{name: root / relative for name, relative in folders.items()})

    def record(self) -> None:
        """Write layout.json: where this directory's data/ and sets/ are when they are not its own,
        relative to it (so the directory tree can move as a whole). `RunLayout.of` reads it back."""
        folders = {name: os.path.relpath(getattr(self, name), self.root) for name in ("data", "sets")
                   if getattr(self, name) != self.root / name}
        write_json(self.root / LAYOUT_FILE, folders)

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    # stage 0: prepare
    @property
    def data_config(self) -> Path:
        return self.data / CONFIG

    @property
    def train_examples(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def eval_examples(self) -> Path:
        return self.data / "eval.jsonl"

    @property
    def dev_examples(self) -> Path:
        """Questions for choosing settings: train-pool articles neither training nor the held-out set uses."""
        return self.data / "dev.jsonl"

    @property
    def shots(self) -> Path:
        return self.data / "shots.jsonl"

    # stages 1 and 2: generate, annotate
    @property
    def answers(self) -> Path:
        return self.root / "answers.jsonl"

    @property
    def feedback(self) -> Path:
        return self.root / "feedback.jsonl"

    @property
    def human_feedback(self) -> Path:
        """People's feedback, exported from the annotation app; what hybrid builds read."""
        return self.root / "feedback.human.jsonl"

    def feedback_files(self) -> list[Path]:
        """Every file of feedback records here (feedback.jsonl, feedback.NAME.jsonl, feedback.human.jsonl)."""
        return sorted(p for p in self.root.glob("feedback*.jsonl") if not p.name.endswith(".failed.jsonl"))

    @property
    def annotations_db(self) -> Path:
        """The annotation app's SQLite database, when no other database is given."""
        return self.root / "annotations.db"

    # stage 3: build
    def training_set(self, system: str) -> Path:
        return self.sets / f"{system}.jsonl"

    def aux_set(self, system: str) -> Path:
        """A system's auxiliary examples (train.aux): its questions again, in another set's format."""
        return self.sets / f"{system}.aux.jsonl"

    def pair_set(self, system: str) -> Path:
        """A system's preference pairs (train.preference): QA prompt, gold answer, the model's own answer."""
        return self.sets / f"{system}.pairs.jsonl"

    def labelled_set(self, system: str) -> Path:
        """A system's own answers labelled by their verdicts (train.preference.loss kto)."""
        return self.sets / f"{system}.labelled.jsonl"

    def preference_set(self, system: str, loss: str) -> Path:
        """Where a preference term of `loss` (laffi.systems.LOSSES) reads its records."""
        return self.labelled_set(system) if loss == "kto" else self.pair_set(system)

    @property
    def sets_config(self) -> Path:
        return self.sets / CONFIG

    def set_metadata(self, system: str) -> Path:
        """What a training set is made of (sizes, sources, who wrote the human part)."""
        return self.sets / f"{system}.meta.json"

    # stage 4: train
    def adapter(self, system: str) -> Path:
        return self.root / "adapters" / system

    def best_adapter(self, system: str) -> Path:
        """train.keep_best: the adapter of the step with the best dev F1 so far."""
        return self.adapter(system) / "best"

    def trained_systems(self) -> list[str]:
        return sorted(p.name for p in (self.root / "adapters").glob("*") if self.train_log(p.name).exists())

    def train_config(self, system: str) -> Path:
        return self.adapter(system) / CONFIG

    def old_train_config(self, system: str) -> Path:
        """Where laffi wrote `train_config(system)` before one rule named every saved config."""
        return self.adapter(system) / "train_config.yaml"

    def train_log(self, system: str) -> Path:
        return self.adapter(system) / "train_log.jsonl"

    def train_summary(self, system: str) -> Path:
        return self.adapter(system) / "summary.json"

    def checkpoint(self, system: str) -> Path:
        return self.adapter(system) / "checkpoint"

    def reference_logps(self, system: str) -> Path:
        """train.preference: the reference policy's log-probs of the term's rows (DPO pairs, KTO's labelled answers), computed once
        before step 1."""
        return self.adapter(system) / "reference_logps.json"

    # train.rounds: each round after the first answers, annotates, builds and trains again
    def round(self, system: str, number: int) -> RunLayout:
        """rounds/SYSTEM/rN/: round N's own run directory on this run's data/: the answers of round N-1's model,
        their feedback and the sets built from them (N >= 2), and its adapter unless it is the last round."""
        return RunLayout(self.root / "rounds" / system / f"r{number}", data=self.data)

    def round_training(self, system: str, number: int, rounds: int) -> RunLayout:
        """Where round `number` of `rounds` trains: on this run's sets for round 1, on its round's sets after;
        into rounds/SYSTEM/rN/adapters/SYSTEM, but the last round into adapters/SYSTEM, where evaluation (and
        anything else that reads a system's adapter) looks. With one round, this very layout."""
        own = self.round(system, number)
        return RunLayout(self.root if number == rounds else own.root, data=self.data,
                         sets=self.sets if number == 1 else own.sets)

    # stage 5: evaluate, on the held-out set (eval/) or the dev set (eval-dev/, eval.split=dev)
    def questions(self, split: str = "heldout") -> Path:
        return {"heldout": self.eval_examples, "dev": self.dev_examples}[split]

    def evaluation(self, system: str, split: str = "heldout") -> Path:
        return self.root / {"heldout": "eval", "dev": "eval-dev"}[split] / system

    def model_outputs(self) -> list[Path]:
        """What the model wrote here: its answers and every evaluation's predictions (held-out and dev)."""
        return [self.answers, *sorted(self.root.glob("eval*/*/predictions.jsonl"))]

    def evaluated_systems(self) -> list[str]:
        """The systems scored on the held-out set."""
        return sorted(p.name for p in (self.root / "eval").glob("*") if self.predictions(p.name).exists())

    def eval_config(self, system: str, split: str = "heldout") -> Path:
        return self.evaluation(system, split) / CONFIG

    def predictions(self, system: str, split: str = "heldout") -> Path:
        return self.evaluation(system, split) / "predictions.jsonl"

    def metrics(self, system: str, split: str = "heldout") -> Path:
        return self.evaluation(system, split) / "metrics.json"

    def rerank_candidates(self, system: str, split: str, k: int, temperature: float) -> Path:
        """`python -m laffi.experiments.rerank`: the system's K answers per question of `split` (Answer records,
        `sample` 0 greedy), one file per K and temperature, since they decide the sampled answers."""
        return self.root / "rerank" / system / f"{split}.k{k}.t{temperature:g}.jsonl"

    def rerank_decoding(self, system: str, split: str, k: int, temperature: float) -> Path:
        """The seconds decoding those candidates took and the answers they decoded, summed over the calls that
        decoded some (a call resumed after a crash decodes only the rest)."""
        return self.rerank_candidates(system, split, k, temperature).with_suffix(".decoding.json")

    # the outcome
    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def run_info(self) -> Path:
        """Stage times, paired differences, training and generation speed of `laffi run`."""
        return self.root / "run_info.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def stats(self) -> Path:
        """Annotator agreement (`laffi stats`)."""
        return self.root / "stats.json"

    def attention(self, system: str) -> Path:
        """`laffi attention`'s numbers and figures for base vs SYSTEM's adapter."""
        return self.root / "attention" / system

    def attention_systems(self) -> list[str]:
        return sorted(p.name for p in (self.root / "attention").glob("*") if self.attention_json(p.name).exists())

    def attention_json(self, system: str) -> Path:
        return self.attention(system) / "attention.json"

    def attention_figure(self, system: str, name: str) -> Path:
        return self.attention(system) / f"{name}.png"

    def attention_figures(self, system: str) -> list[Path]:
        return sorted(self.attention(system).glob("*.png"))


@dataclass(frozen=True)
class ExperimentLayout:
    """The paths of an experiment directory (`laffi experiment`):

        experiment.yaml               the resolved experiment config (rewritten each run: grids may grow;
                                      summaries/PLAN.yaml: each plan's)
        config.yaml, data/, answers.jsonl, eval/base/, eval-dev/base/   the shared run, a run directory
        feedback.NAME.jsonl           annotator NAME's feedback on the answers
        feedback.human.jsonl          people's feedback, for grid.human_ratio > 0
        sets/VARIANT/                 one variant's feedback and its training sets, on the shared data/
        jobs/SYSTEM-HASH/             one training (a system, cell, budget and seed), its dev and held-out
                                      evaluations, on the shared data/ and its variant's sets (each:
                                      layout.json says where they are)
        selections.jsonl              every choice of budgets whose held-out scores were written, in order
        verdict_check.json            P(verdict) of each trained model and the base model on dev answers
                                      (`python -m laffi.experiments.verdict_check`)
        rerank.json                   each model keeping one of K answers by each rule (`python -m
                                      laffi.experiments.rerank`; the answers: jobs/*/rerank/SYSTEM/)
        experiment.json, experiment.md   the last invocation's summary; summaries/PLAN.{json,md}: the
                                      summary of each plan (systems, seeds, budgets, grid) run here
        report.html
    """

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def run(self) -> RunLayout:
        return RunLayout(self.root)

    @property
    def experiment_config(self) -> Path:
        return self.root / "experiment.yaml"

    def feedback(self, annotator: str) -> Path:
        return self.root / f"feedback.{annotator}.jsonl"

    def variant(self, annotator: str, content: str, human_ratio: float, size: int) -> RunLayout:
        name = f"{annotator}.{content}.h{human_ratio:g}.n{size or 'all'}"
        return RunLayout(self.root / "sets" / name, data=self.run.data)

    def job(self, system: str, key: str, sets: Path) -> RunLayout:
        """A training of `system` on the set in `sets` (its variant's), and its evaluations."""
        return RunLayout(self.root / "jobs" / f"{system}-{key}", data=self.run.data, sets=sets)

    @staticmethod
    def variant_of(job: RunLayout) -> str:
        """The variant whose sets a job trained on, by its folder's name (`variant`): ANNOTATOR.CONTENT.hRATIO.nSIZE."""
        return job.sets.parent.name

    def job_dirs(self) -> list[Path]:
        """Every job's directory (`job`), in name order."""
        return sorted(p for p in (self.root / "jobs").glob("*") if p.is_dir())

    @property
    def selections(self) -> Path:
        return self.root / "selections.jsonl"

    @property
    def verdict_check(self) -> Path:
        """`python -m laffi.experiments.verdict_check`: each model's P(verdict) on the dev answers, and how well
        it tells right answers from wrong ones."""
        return self.root / "verdict_check.json"

    @property
    def rerank(self) -> Path:
        """`python -m laffi.experiments.rerank`: each model's EM/F1 when it keeps one of K answers by each rule."""
        return self.root / "rerank.json"

    @property
    def summary_json(self) -> Path:
        return self.root / "experiment.json"

    @property
    def summary_md(self) -> Path:
        return self.root / "experiment.md"

    def plan_summary(self, plan: str, suffix: str) -> Path:
        """summaries/PLAN.json or .md: one plan's summary, kept when another plan runs in the directory."""
        return self.root / "summaries" / f"{plan}{suffix}"

    def plan_summaries(self) -> list[Path]:
        """Every plan's summary as JSON, full (PLAN.json) and dev screens (PLAN.dev.json), in name order."""
        return sorted((self.root / "summaries").glob("*.json"))
