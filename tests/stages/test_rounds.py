"""train.rounds (laffi-dpo-r2) on the tiny model through `laffi train`: round 2 answers with round 1's adapter,
annotates and builds its own pairs, starts from round 1's weights with round 1's model as its DPO reference,
and a crash in round 2's training resumes there without redoing round 1.

    python -m pytest tests/stages/test_rounds.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from support.human_helpers import laffi, make_run

import laffi.stages.rounds as rounds_module
import laffi.stages.train as train_module
from laffi.layout import RunLayout, adapter_finished
from laffi.records import (
    Answer,
    Feedback,
    PreferencePair,
    QAExample,
    TrainingExample,
    TrainLogEntry,
    read_records,
    write_records,
)

SYSTEM = "laffi-dpo-r2"


class Crash(Exception):
    pass


def settings_for(tiny_model_dir) -> list[str]:
    return [f"model.name={tiny_model_dir}", "model.threads=2", "model.dtype=float32", "data.num_shots=1",
            "generate.max_new_tokens=4", "generate.batch_size=4", "train.steps=4", "train.warmup_steps=1",
            "train.batch_size=2", "train.max_seq_len=256", "train.checkpoint_every=2", "train.lr=5e-3",
            f"systems.names=base,sft,{SYSTEM}"]


@pytest.fixture(scope="module")
def rounds_run(tiny_model_dir, tmp_path_factory):
    """Round 1, round 2 killed after its step-2 checkpoint, then the same command again; what each call did."""
    settings = settings_for(tiny_model_dir)
    run = make_run(tmp_path_factory.mktemp("rounds") / "run", n_items=8)
    examples = read_records(run / "data" / "train.jsonl", QAExample)
    write_records(run / "feedback.jsonl", [Feedback(e.id, "south", "incorrect", f"feedback {i}", "ai", "reference")
                                           for i, e in enumerate(examples)])  # round 1: a pair on every question
    code, _, err = laffi("build", str(run), *settings)
    assert code == 0, err
    layout = RunLayout(run)
    calls = {"trained": [], "answered_with": [], "started_from": [], "crashed": False}
    real_train, real_backend, real_start, real_save = (rounds_module.train_system, rounds_module.load_backend,
                                                       train_module.start_from, train_module.save_checkpoint)

    def train_system(trained, system, *args, **kwargs):
        if not adapter_finished(trained.adapter(system.name)):  # else it returns at once
            calls["trained"].append(trained.root)
        return real_train(trained, system, *args, **kwargs)

    def load_backend(model, generate, adapter=None):
        calls["answered_with"].append(adapter)
        return real_backend(model, generate, adapter=adapter)

    def start_from(lm, init, train):
        real_start(lm, init, train)
        weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(lm).items()}
        calls["started_from"].append((init, weights))

    def save_checkpoint(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        if path == layout.checkpoint(SYSTEM) and not calls["crashed"]:  # round 2, the last, trains in adapters/
            calls["crashed"] = True
            raise Crash("killed right after round 2's step-2 checkpoint")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rounds_module, "train_system", train_system)
        patch.setattr(rounds_module, "load_backend", load_backend)
        patch.setattr(train_module, "start_from", start_from)
        patch.setattr(train_module, "save_checkpoint", save_checkpoint)
        with pytest.raises(Crash):
            laffi("train", str(run), "--system", SYSTEM, *settings)
        first = dict(trained=list(calls["trained"]), answered_with=list(calls["answered_with"]))
        code, out, err = laffi("train", str(run), "--system", SYSTEM, *settings)
        assert code == 0, err
    return layout, calls, first


def test_round_two_answers_with_round_ones_adapter_and_builds_its_own_pairs(rounds_run):
    layout, calls, _ = rounds_run
    first, second = layout.round_training(SYSTEM, 1, 2), layout.round(SYSTEM, 2)
    assert first.adapter(SYSTEM) == layout.root / "rounds" / SYSTEM / "r1" / "adapters" / SYSTEM
    assert adapter_finished(first.adapter(SYSTEM)) and adapter_finished(layout.adapter(SYSTEM))
    assert calls["answered_with"] == [first.adapter(SYSTEM)]  # once: the rerun had every answer already
    answers = read_records(second.answers, Answer)
    assert len(answers) == 8 and all(a.model.endswith(f"rounds/{SYSTEM}/r1/adapters/{SYSTEM}") for a in answers)
    feedback = read_records(second.feedback, Feedback)
    assert [f.id for f in feedback] == [a.id for a in answers] and all(f.annotator == "reference" for f in feedback)
    pairs = read_records(second.pair_set(SYSTEM), PreferencePair)
    judged = {f.id: f for f in feedback}
    assert pairs and all(p.rejected[0]["content"] == judged[p.id].answer for p in pairs)  # round 2's own answers
    assert len(pairs) == sum(f.verdict != "correct" and f.answer != "north" for f in feedback)
    # the gold-answer examples are round 1's, every round
    assert read_records(second.training_set(SYSTEM), TrainingExample) == \
        read_records(layout.training_set(SYSTEM), TrainingExample)
    assert RunLayout.of(second.root).train_examples.resolve() == layout.train_examples.resolve()  # on the run's data


def test_round_two_starts_from_round_ones_weights_with_round_one_as_its_reference(rounds_run):
    layout, calls, _ = rounds_run
    first = layout.round_training(SYSTEM, 1, 2).adapter(SYSTEM)
    assert [init for init, _ in calls["started_from"]] == [first, first]  # round 2, then its resumed session
    trained = load_file(first / "adapter_model.safetensors")
    at_step_0 = calls["started_from"][0][1]
    assert at_step_0.keys() == trained.keys()
    assert all(torch.equal(at_step_0[k], trained[k]) for k in trained)
    for adapter in (first, layout.adapter(SYSTEM)):  # at step 1 the policy is its reference: log-ratio 0
        step_1 = read_records(adapter / "train_log.jsonl", TrainLogEntry)[0]
        assert step_1.reward_margin == 0 and step_1.preference_loss == pytest.approx(math.log(2), abs=1e-6)
    assert (layout.adapter(SYSTEM) / "reference_logps.json").exists()


def test_a_crash_in_round_two_resumes_round_two_only(rounds_run):
    layout, calls, first = rounds_run
    round_1 = layout.round_training(SYSTEM, 1, 2).root
    assert first["trained"] == [round_1, layout.root]  # the crashed session: round 1, then round 2
    assert calls["trained"] == [round_1, layout.root, layout.root]  # the rerun: round 2 only
    summary = json.loads(layout.train_summary(SYSTEM).read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    assert [(r["round"], r["steps"]) for r in summary["rounds"]] == [(1, 4), (2, 4)]
    assert summary["rounds"][0]["adapter"] == f"rounds/{SYSTEM}/r1/adapters/{SYSTEM}"
    assert summary["rounds"][1]["resumed_from_step"] == 2
    assert [e.step for e in read_records(layout.train_log(SYSTEM), TrainLogEntry)] == [1, 2, 3, 4]


def test_finished_rounds_are_checked_against_todays_settings_sets_and_number_of_rounds(rounds_run, tiny_model_dir):
    layout, _, _ = rounds_run
    settings = settings_for(tiny_model_dir)
    code, _, err = laffi("train", str(layout.root), "--system", SYSTEM, *settings)
    assert code == 0, err  # finished with these settings: nothing to do
    # another train section: refused, not answered by the adapters trained before it
    code, _, err = laffi("train", str(layout.root), "--system", SYSTEM,
                         *[s.replace("train.lr=5e-3", "train.lr=1e-1") for s in settings])
    assert code != 0 and "different settings (train.lr)" in err
    # round 2's pairs rebuilt (here: one fewer): the last round is checked too, not only round 1
    pairs = layout.round(SYSTEM, 2).pair_set(SYSTEM)
    summary = layout.train_summary(SYSTEM)
    kept_pairs, kept_summary = pairs.read_bytes(), summary.read_text()
    try:
        pairs.write_bytes(b"".join(kept_pairs.splitlines(keepends=True)[1:]))
        code, _, err = laffi("train", str(layout.root), "--system", SYSTEM, *settings)
        assert code != 0 and "different settings (inputs.preference)" in err
        pairs.write_bytes(kept_pairs)
        # the last round of 3 (as a system file that said train.rounds 3 left it) is not this training's round 2
        three = json.loads(kept_summary)
        three["rounds"].append({**three["rounds"][-1], "round": 3})
        summary.write_text(json.dumps(three))
        code, _, err = laffi("train", str(layout.root), "--system", SYSTEM, *settings)
        assert code != 0 and "was trained in 3 rounds, and this training has 2" in err
    finally:
        pairs.write_bytes(kept_pairs)
        summary.write_text(kept_summary)


def test_with_several_samples_a_later_round_answers_each_question_that_many_times(tiny_model_dir, tmp_path):
    settings = [f"model.name={tiny_model_dir}", "model.threads=2", "model.dtype=float32", "data.num_shots=1",
                "generate.max_new_tokens=4", "generate.batch_size=4", "generate.samples=2", "generate.temperature=1.5",
                "train.steps=2", "train.warmup_steps=1", "train.batch_size=2", "train.max_seq_len=256",
                f"systems.names=base,sft,{SYSTEM}"]
    run = make_run(tmp_path / "run", n_items=4)
    examples = read_records(run / "data" / "train.jsonl", QAExample)
    write_records(run / "feedback.jsonl", [Feedback(e.id, "south", "incorrect", "feedback", "ai", "reference")
                                           for e in examples])
    code, _, err = laffi("build", str(run), *settings)
    assert code == 0, err
    code, _, err = laffi("train", str(run), "--system", SYSTEM, *settings)
    assert code == 0, err
    second = RunLayout(run).round(SYSTEM, 2)
    answers = read_records(second.answers, Answer)
    assert sorted((a.id, a.sample) for a in answers) == sorted((e.id, s) for e in examples for s in (0, 1))
    feedback = read_records(second.feedback, Feedback)
    assert sorted((f.id, f.sample) for f in feedback) == sorted((a.id, a.sample) for a in answers)
    wrong = {(f.id, f.answer) for f in feedback if f.verdict != "correct" and f.answer != "north"}
    pairs = read_records(second.pair_set(SYSTEM), PreferencePair)
    assert {(p.id, p.rejected[0]["content"]) for p in pairs} == wrong  # one pair per distinct wrong answer


def test_later_rounds_answer_as_round_one_was_answered_when_only_generate_was_given_samples(tiny_model_dir, tmp_path):
    # stage by stage: `laffi generate RUN generate.samples=2` alone; the train command has the run's samples=1
    settings = [f"model.name={tiny_model_dir}", "model.threads=2", "model.dtype=float32", "data.num_shots=1",
                "generate.max_new_tokens=4", "generate.batch_size=4", "train.steps=2", "train.warmup_steps=1",
                "train.batch_size=2", "train.max_seq_len=256", f"systems.names=base,sft,{SYSTEM}"]
    run = make_run(tmp_path / "run", n_items=4)
    (run / "answers.jsonl").unlink()
    assert laffi("generate", str(run), *settings, "generate.samples=2", "generate.temperature=1.5")[0] == 0
    examples = read_records(run / "data" / "train.jsonl", QAExample)
    answers = read_records(run / "answers.jsonl", Answer)
    write_records(run / "feedback.jsonl", [Feedback(a.id, a.prediction, "incorrect", "feedback", "ai", "reference",
                                                    sample=a.sample) for a in answers])
    assert laffi("build", str(run), *settings)[0] == 0
    code, out, err = laffi("train", str(run), "--system", SYSTEM, *settings)
    assert code == 0, err
    assert f"train {SYSTEM}: later rounds answer as answers.jsonl was answered" in out
    second = read_records(RunLayout(run).round(SYSTEM, 2).answers, Answer)
    assert sorted((a.id, a.sample) for a in second) == sorted((e.id, s) for e in examples for s in (0, 1))


def test_a_single_training_is_not_taken_for_the_last_of_more_rounds(tiny_model_dir, tmp_path):
    # a system file's train.rounds raised from 1 to 2 after its training finished: the adapter is refused by
    # name, not trained past (round 1 again, then a round 2 that skipped its answers and found no sets)
    from laffi.systems import DEFINITIONS
    text = (DEFINITIONS / f"{SYSTEM}.yaml").read_text(encoding="utf-8")
    system = tmp_path / "mine.yaml"
    system.write_text(text.replace("rounds: 2", "rounds: 1"), encoding="utf-8")
    settings = [f"model.name={tiny_model_dir}", "model.threads=2", "model.dtype=float32", "data.num_shots=1",
                "generate.max_new_tokens=4", "train.steps=2", "train.warmup_steps=1", "train.batch_size=2",
                "train.max_seq_len=256", f"systems.names=base,sft,{system}"]
    run = make_run(tmp_path / "run", n_items=4)
    assert laffi("build", str(run), *settings)[0] == 0
    code, _, err = laffi("train", str(run), "--system", str(system), *settings)
    assert code == 0, err
    system.write_text(text, encoding="utf-8")
    code, _, err = laffi("train", str(run), "--system", str(system), *settings)
    assert code != 0 and "was trained in 1 round, and this training has 2" in err
    assert not (run / "rounds").exists()  # refused before round 1 was trained again
