"""Iterated rounds (a recipe's train.rounds, e.g. laffi-dpo-r2): round N+1 trains on round N's model's answers.

    laffi run systems.names=base,sft,laffi-dpo-r2       # every stage of the run, each round included
    laffi train runs/demo --system laffi-dpo-r2         # all rounds of one system in a run built with it (its
                                                        # annotate section judges the later rounds' answers,
                                                        # whose sets keep the whole feedback)
    train_rounds(layout, system, model, data, generate, train, RoundFeedback(annotate))

Round 1 is the system's one training, as `laffi train` runs it, on the run's own sets (the base model's
answers and their feedback). Every later round N, in its own run directory (laffi.layout, `RunLayout.round`):
1. answers: round N-1's model (its adapter loaded as evaluation loads it) answers round 1's training
   questions with the run's generate settings: greedily, or with generate.samples K the greedy answer and
   K-1 sampled, as the generate stage answers for round 1;
2. feedback: round 1's annotator judges them (`RoundFeedback`: the run's annotate section, an experiment
   cell's annotator and content);
3. sets: built from this round's answers and feedback alone (on-policy: the last round's data, as
   Iterative RPO builds each iteration's pairs from the model before it); the examples that hold the gold
   answers are the same every round;
4. training: round N-1's adapter, continued (train.init's mechanism) with a whole new warm-up and cosine
   schedule of the system's steps, so R rounds train R x train.steps steps; a DPO term's reference is
   round N-1's model (laffi.stages.preference: the model at the training's step 0).

The last round trains into adapters/SYSTEM, where evaluation looks, and its summary.json lists every
round's steps, seconds and tokens (`rounds`), which an experiment's cost adds up. Resumable: a round
whose adapter is finished is never redone (though checked against today's settings and inputs, and refused where
they differ, as one training is), and in the round that is not each stage resumes (answers and
feedback are appended to, a training continues from its checkpoint with its saved reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from laffi.annotators.content import FULL, with_content
from laffi.backends.answering import answer_questions, load_backend
from laffi.config import (AnnotateConfig, ConfigError, DataConfig, GenerateConfig, ModelConfig, TrainConfig, load_config,
                          save_config)
from laffi.distributed.shards import Shard
from laffi.layout import RunLayout, adapter_finished, adapter_weights, sidecar_config
from laffi.models import answered_as_now, answering_of, recorded_answering
from laffi.prompts import extract_answer
from laffi.records import (
    Answer,
    Feedback,
    QAExample,
    RecordWriter,
    TrainingExample,
    fingerprint,
    read_records,
    record_key,
    write_json,
)
from laffi.stages.annotate import annotate
from laffi.stages.build import by_question, write_sets
from laffi.stages.train import train_system, training_begun
from laffi.systems import System


@dataclass(frozen=True)
class RoundFeedback:
    """Who judges a later round's answers, round 1's annotator, and what of its feedback the sets keep
    (laffi.annotators.content; an experiment cell's grid.content, the whole feedback elsewhere)."""

    annotate: AnnotateConfig
    content: str = FULL


def train_rounds(layout: RunLayout, system: System, model: ModelConfig, data: DataConfig, generate: GenerateConfig,
                 train: TrainConfig, feedback: RoundFeedback) -> Path:
    """Every round of `system` in the run `layout`, each trained with the train section `train`; returns the
    last round's adapter (layout.adapter(system.name))."""
    name, rounds = system.name, system.training_rounds
    if Shard.current(model.device).processes > 1:  # every process would answer and annotate the same questions
        raise ConfigError(f"train.rounds ({name}): rounds run in one process, not under a launcher")
    refuse_other_rounds(layout, name, rounds)
    generate = as_round_one_answered(layout, name, generate)
    previous = layout.adapter(system.init) if system.init else None  # round 1 starts where one training would
    for number in range(1, rounds + 1):
        trained = layout.round_training(name, number, rounds)
        # a finished round is never redone; nor are the answers, feedback and sets of one whose training has
        # begun (annotating again would retry its failed answers and change the sets it resumes on)
        if number > 1 and not training_begun(trained, name):
            own = layout.round(name, number)
            answer_again(layout, own, name, previous, model, data, generate)
            annotate(own, feedback.annotate)
            build_again(own, system, data, feedback.content)
        # a finished round returns at once, but only once its saved settings and inputs (the train section, its
        # sets, the round before's weights) are found to be today's, as for one training: otherwise another
        # train section, a rebuilt set or more train.rounds would be scored with the adapter made before them
        train_system(trained, system, model, data, generate, train, init=previous)
        previous = trained.adapter(name)
    if rounds > 1:
        record_rounds(layout, name, rounds)
    return previous


def as_round_one_answered(layout: RunLayout, name: str, generate: GenerateConfig) -> GenerateConfig:
    """The generate section the later rounds answer with: round 1's answers' (saved beside them), so a run built
    stage by stage whose `laffi generate` alone was given generate.samples=4 answers 4 times a question every
    round, not once; this command's own where round 1's answers saved none (an experiment's job, an older laffi)."""
    saved = sidecar_config(layout.answers)
    if not saved.exists():
        return generate
    answered = load_config(saved).generate
    if answered != generate:
        print(f"train {name}: later rounds answer as {layout.answers.name} was answered ({saved.name}: "
              f"generate.samples={answered.samples}, temperature={answered.temperature:g}), not with this "
              "command's generate section", flush=True)
    return answered


def refuse_other_rounds(layout: RunLayout, name: str, rounds: int) -> None:
    """A finished last round of another number of rounds would be taken for this one's. Its summary lists its
    rounds once they are all done (a crash just before leaves no list: those rounds are checked one by one). A
    summary without the list whose run has no answers of the last round is a single training's (train.rounds 1):
    a later round answers in its own directory before it trains."""
    path = layout.train_summary(name)
    if not (adapter_finished(layout.adapter(name)) and path.exists()):
        return
    done = json.loads(path.read_text(encoding="utf-8")).get("rounds")
    if done is not None:
        trained = len(done)
    elif rounds > 1 and not layout.round(name, rounds).answers.exists():
        trained = 1
    else:
        return
    if trained != rounds:
        raise ConfigError(f"train.rounds ({name}): {layout.adapter(name)} was trained in {trained} "
                          f"round{'s' if trained > 1 else ''}, and this training has {rounds}; delete it (and "
                          f"rounds/{name}/) to train again")


def answer_again(layout: RunLayout, own: RunLayout, name: str, adapter: Path, model: ModelConfig, data: DataConfig,
                 generate: GenerateConfig) -> None:
    """The answers of `adapter`'s model to the questions of round 1's training set (a grid.size cell's drawn
    questions, not the whole pool), generate.samples of them per question (the greedy one first), appended to
    `own`.answers as they come (resumable)."""
    own.record()  # its layout.json: the run's data/, so a stage run by hand in the round finds it
    questions = {e.id for e in read_records(layout.training_set(name), TrainingExample)}
    examples = [e for e in read_records(layout.train_examples, QAExample) if e.id in questions]
    shots = read_records(layout.shots, QAExample)
    source = str(adapter.relative_to(layout.root))  # relative: the run directory may move
    saved = sidecar_config(own.answers)
    # Every laffi that made round answers saved this config first; answers without one say nothing of how they
    # were made, and save_config below takes them as made with these settings (rerank answers those again).
    if own.answers.exists() and saved.exists() and not answered_as_now(recorded_answering(saved), model):
        raise ConfigError(f"{own.answers}: begun with {source} merged into the bf16 weights, as laffi before commit "
                          f"53396c9 answered (models.ADAPTER_ANSWERING); delete {own.root} (this round's answers, "
                          "feedback and sets) and any unfinished training of this round to make the round again")
    save_config(saved, {"model": model, "data": data, "generate": generate,
                        "adapter": {"path": source, **answering_of(model)}},
                outputs=[own.answers], inputs={"adapter": fingerprint(adapter_weights(adapter))})
    with RecordWriter(own.answers, Answer) as writer:
        if len(writer.done_keys) < len(examples) * generate.samples:
            lm, tokenizer = load_backend(model, generate, adapter=adapter)
            answer_questions(lm, tokenizer, examples, shots, data, generate, writer,
                             lambda e, g: Answer(e.id, extract_answer(g.text), g.text, f"{model.name}+{source}",
                                                 g.sample),
                             desc=f"answers of {source}", samples=generate.samples)


def build_again(own: RunLayout, system: System, data: DataConfig, content: str) -> None:
    """The round's sets, as the build stage makes them, from its own feedback only (cut to `content`)."""
    examples = read_records(own.train_examples, QAExample)
    notes = by_question(examples, {record_key(f): with_content(f, content) for f in read_records(own.feedback, Feedback)})
    if not notes:
        raise ValueError(f"{own.feedback}: no feedback on any of the round's answers; rerun to annotate them")
    save_config(own.sets_config, {"data": data})
    write_sets(own, examples, read_records(own.shots, QAExample), notes, data, systems=[system])


def record_rounds(layout: RunLayout, name: str, rounds: int) -> None:
    """Add every round's steps, seconds and tokens to the last round's summary.json (once: they are final)."""
    path = layout.train_summary(name)
    summary = json.loads(path.read_text(encoding="utf-8"))
    if "rounds" in summary:
        return
    summary["rounds"] = []
    for number in range(1, rounds + 1):
        trained = layout.round_training(name, number, rounds)
        done = json.loads(trained.train_summary(name).read_text(encoding="utf-8"))
        summary["rounds"].append({"round": number, "adapter": str(trained.adapter(name).relative_to(layout.root)),
                                  **{k: done[k] for k in ("steps", "resumed_from_step", "seconds_this_process",
                                                          "tokens_this_process", "final_loss")},
                                  "reference_seconds_this_process": done.get("reference_seconds_this_process")})
    write_json(path, summary)
