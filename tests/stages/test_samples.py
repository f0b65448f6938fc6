"""Several answers per training question (generate.samples=K) through the stages: K answers each with
one feedback record, seeded (a batch size or a resume does not change an answer; sample 0 is the
greedy answer of samples=1), and sets that count them: one sft example per question, one feedback
example per answer, one preference pair per wrong answer with repeats dropped.

    python -m pytest tests/stages/test_samples.py
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from support.human_helpers import laffi, make_run

import laffi.backends.answering as answering_module
from laffi.config import ConfigError, GenerateConfig, load_config, save_config
from laffi.layout import RunLayout, sidecar_config
from laffi.records import (
    Answer,
    Feedback,
    Prediction,
    PreferencePair,
    QAExample,
    RecordError,
    RecordWriter,
    TrainingExample,
    read_records,
    record_key,
    write_records,
)
from laffi.stages.annotate import annotate
from laffi.stages.build import build
from laffi.stages.evaluate import evaluate
from laffi.stages.generate import generate
from laffi.stages.preference import PreferenceTerm
from laffi.stages.prepare import prepare
from laffi.stages.train import auxiliary_rows, train_system
from laffi.systems import Preference, load_systems

K = 3


class Crash(Exception):
    pass


def by_key(records) -> dict:
    return {record_key(r): r for r in records}


def run_stages(overrides: list[str], root, *extra: str):
    config = load_config(overrides=[*overrides, "model.dtype=float32", *extra])
    layout = RunLayout(root)
    prepare(layout, config.data)
    return config, layout


def test_k_answers_are_seeded_independent_of_the_batch_and_resume(tiny_overrides, tmp_path, monkeypatch):
    sampled = (f"generate.samples={K}", "generate.temperature=1.0")
    config, layout = run_stages(tiny_overrides, tmp_path / "k", *sampled)
    answers = generate(layout, config.model, config.data, config.generate)
    questions = read_records(layout.train_examples, QAExample)
    assert sorted(by_key(answers)) == sorted((q.id, s) for q in questions for s in range(K))  # each once

    one, one_layout = run_stages(tiny_overrides, tmp_path / "one")  # samples=1: the greedy answers alone
    greedy = by_key(generate(one_layout, one.model, one.data, one.generate))
    assert {key: a for key, a in by_key(answers).items() if key[1] == 0} == greedy
    # a sampled answer is a draw of its own: most differ from the question's greedy answer
    assert sum(a.output != greedy[a.id, 0].output for a in answers if a.sample) > len(questions)

    alone, alone_layout = run_stages(tiny_overrides, tmp_path / "alone", *sampled, "generate.batch_size=1")
    assert by_key(generate(alone_layout, alone.model, alone.data, alone.generate)) == by_key(answers)

    real = answering_module.shared_prefix_generate

    def one_batch_then_crash(*args, **kwargs):
        yield next(real(*args, **kwargs))
        raise Crash("killed after the first batch")

    _, crashed = run_stages(tiny_overrides, tmp_path / "crashed", *sampled)
    monkeypatch.setattr(answering_module, "shared_prefix_generate", one_batch_then_crash)
    with pytest.raises(Crash):
        generate(crashed, config.model, config.data, config.generate)
    first = read_records(crashed.answers, Answer)
    assert len(first) == config.generate.batch_size
    with crashed.answers.open("a") as handle:
        handle.write('{"id": "half a rec')
    monkeypatch.setattr(answering_module, "shared_prefix_generate", real)
    resumed = generate(crashed, config.model, config.data, config.generate)
    assert len(resumed) == len(answers) and resumed[:len(first)] == first
    assert by_key(resumed) == by_key(answers)  # the same answers an uninterrupted run made

    # the reference annotator: one feedback per answer, sample 0's exactly that of samples=1, and resumable
    feedback = annotate(layout, config.annotate)
    assert sorted(by_key(feedback)) == sorted(by_key(answers))
    assert all(f.answer == by_key(answers)[record_key(f)].prediction for f in feedback)
    assert {k: f for k, f in by_key(feedback).items() if k[1] == 0} == by_key(annotate(one_layout, one.annotate))
    shutil.copy(layout.feedback.with_name("feedback.config.yaml"), crashed.feedback.with_name("feedback.config.yaml"))
    crashed.feedback.write_text("".join(layout.feedback.read_text().splitlines(keepends=True)[:10]) + '{"id": "q')
    assert annotate(crashed, config.annotate) == feedback

    # the sets: one sft example per question, one laffi example per answer, both in train-pool order
    systems = load_systems(["sft", "laffi", "laffi-aux-half", "laffi-dpo"])
    sets = build(layout, config.data, systems)
    assert [e.id for e in sets["sft"]] == [q.id for q in questions]
    assert [(e.id, e.sample) for e in sets["laffi"]] == [(q.id, s) for q in questions for s in range(K)]
    aux = read_records(layout.aux_set("laffi-aux-half"), TrainingExample)
    assert aux == sets["laffi"] and sets["laffi-aux-half"] == sets["sft"]
    meta = json.loads(layout.set_metadata("laffi").read_text())
    assert meta["size"] == K * len(questions) and meta["questions"] == len(questions)
    assert sum(meta["verdicts"].values()) == K * len(questions)

    # evaluation answers each question once, greedily, and says so in its config
    metrics = evaluate(layout, "base", config.model, config.data, config.generate, config.eval)
    assert len(read_records(layout.predictions("base"), Prediction)) == metrics["total"] == config.data.eval_size
    saved = yaml.safe_load(layout.eval_config("base", "heldout").read_text())["generate"]
    assert (saved["samples"], saved["temperature"]) == (1, GenerateConfig().temperature)

    # training takes a question's K auxiliary examples and all its pairs into its batch
    train = load_config(overrides=[*tiny_overrides, "model.dtype=float32", "train.steps=2", "train.warmup_steps=0",
                                   "data.num_shots=2"]).train
    for name in ("laffi-aux-half", "laffi-dpo"):
        system = next(s for s in systems if s.name == name)
        train_system(layout, system, config.model, config.data, config.generate, train)
        summary = json.loads(layout.train_summary(name).read_text())
        assert summary["steps"] == 2 and summary["examples"] == len(questions)
    assert json.loads(layout.train_summary("laffi-aux-half").read_text())["aux"]["examples"] == K * len(questions)


def judge(run, rows: list[tuple[str, int, str, str]]) -> None:
    """The run's feedback: (question id, sample, answer, verdict) each."""
    write_records(run / "feedback.jsonl", [Feedback(qid, answer, verdict, f"on {answer}", "ai", "reference",
                                                    sample=sample) for qid, sample, answer, verdict in rows])


def test_sets_of_three_answers_per_question_count_examples_verdicts_and_distinct_pairs(tmp_path):
    run = make_run(tmp_path / "run", n_items=3, ai_feedback=False)  # every gold answer is "north"
    judge(run, [
        ("q000", 0, "north", "correct"), ("q000", 1, "south", "incorrect"), ("q000", 2, "south", "incorrect"),
        ("q001", 0, "the north", "partially correct"), ("q001", 1, "east", "incorrect"),
        ("q001", 2, "north", "correct"),
        ("q002", 0, "north", "incorrect"), ("q002", 1, "west", "incorrect"), ("q002", 2, "west", "partially correct"),
    ])
    code, out, err = laffi("build", str(run), "data.num_shots=1",
                           "systems.names=base,sft,laffi,laffi-dpo,laffi-aux-half,laffi-mix")
    assert code == 0, err
    layout = RunLayout(run)
    sets = {name: read_records(layout.training_set(name), TrainingExample)
            for name in ("sft", "laffi", "laffi-dpo", "laffi-aux-half", "laffi-mix")}
    assert [(e.id, e.sample) for e in sets["sft"]] == [("q000", 0), ("q001", 0), ("q002", 0)]
    assert [(e.id, e.sample) for e in sets["laffi"]] == [(f"q00{q}", s) for q in range(3) for s in range(3)]
    assert sets["laffi-dpo"] == sets["sft"] == sets["laffi-aux-half"]
    assert read_records(layout.aux_set("laffi-aux-half"), TrainingExample) == sets["laffi"]
    assert f"9 examples in {layout.training_set('laffi')}" in out
    assert f"3 examples in {layout.training_set('sft')}" in out

    # a pair per answer judged not correct, but none for q002's gold-text answer, nor for a repeated answer
    pairs = read_records(layout.pair_set("laffi-dpo"), PreferencePair)
    assert [(p.id, p.sample, p.rejected[0]["content"]) for p in pairs] == [
        ("q000", 1, "south"), ("q001", 0, "the north"), ("q001", 1, "east"), ("q002", 1, "west")]
    preference = json.loads(layout.set_metadata("laffi-dpo").read_text())["preference"]
    assert preference == {"questions": 3, "answers": 9,
                          "verdicts": {"correct": 2, "partially correct": 2, "incorrect": 5}, "pairs": 4,
                          "pairs_by_verdict": {"partially correct": 1, "incorrect": 3}, "same_as_gold": 1,
                          "repeated": 2, "pair_ids": ["q000#s1", "q001", "q001#s1", "q002#s1"]}
    assert f"4 preference pairs (1 partially correct, 3 incorrect) in {layout.pair_set('laffi-dpo')}" in out

    laffi_meta = json.loads(layout.set_metadata("laffi").read_text())
    assert laffi_meta["size"] == 9 and laffi_meta["questions"] == 3 and laffi_meta["ai"] == 9
    assert laffi_meta["verdicts"] == {"correct": 2, "partially correct": 2, "incorrect": 5}
    assert laffi_meta["ai_ids"][:3] == ["q000", "q000#s1", "q000#s2"]
    # a mixed set shares out questions: the feedback-format ones give an example per answer
    mix = json.loads(layout.set_metadata("laffi-mix").read_text())
    assert mix["questions"] == {"laffi": 2, "sft": 1} and mix["examples"] == {"laffi": 6, "sft": 1}
    assert mix["size"] == len(sets["laffi-mix"]) == 7 and mix["feedback"]["answers"] == 9

    # in training, a question's auxiliary examples and all its pairs join its own example's batch
    sft = sets["sft"]
    assert auxiliary_rows(sft, sets["laffi"]) == {0: [3, 4, 5], 1: [6, 7, 8], 2: [9, 10, 11]}
    term = PreferenceTerm.of(Preference(), sft, pairs)
    assert term.with_pairs([1]) == [1, 5, 6, 7, 8] and term.with_pairs([0, 2]) == [0, 2, 3, 4, 9, 10]


def test_the_sampling_options_are_checked_and_older_configs_resume(tmp_path):
    with pytest.raises(ConfigError, match="generate.samples: must be >= 1"):
        load_config(overrides=["generate.samples=0"])
    with pytest.raises(ConfigError, match=r"generate.temperature: must be in \(0, 2\]"):
        load_config(overrides=["generate.temperature=0"])
    config = load_config()
    path = sidecar_config(RunLayout(tmp_path).answers)
    new = ("samples", "temperature", "seed")
    older = {"generate": {k: v for k, v in vars(config.generate).items() if k not in new}}
    save_config(path, older)  # what a run made before generate.samples saved
    save_config(path, {"generate": config.generate})  # resumes: the new options are at their defaults
    with pytest.raises(ConfigError, match="generate.samples"):
        save_config(path, {"generate": load_config(overrides=["generate.samples=2"]).generate})
    sampled = load_config(overrides=["generate.samples=4", "generate.temperature=1.0", "generate.seed=3"]).generate
    assert sampled.for_evaluation() == config.generate  # evaluation answers once, greedily, and saves that


def test_a_greedy_answer_is_written_as_before_and_old_lines_read_as_sample_0(tmp_path):
    path = tmp_path / "answers.jsonl"
    write_records(path, [Answer("q1", "Paris", "Paris.", "m"), Answer("q1", "Lyon", "Lyon.", "m", 2)])
    first, second = path.read_text().splitlines()
    assert first == '{"id": "q1", "prediction": "Paris", "output": "Paris.", "model": "m"}'  # the bytes of before
    assert json.loads(second)["sample"] == 2
    with RecordWriter(path, Answer) as writer:
        assert writer.done_keys == {("q1", 0), ("q1", 2)} and writer.done_ids == {"q1"}
        writer.write([Answer("q1", "Nice", "Nice.", "m", 1)])
        with pytest.raises(RecordError, match="'q1#s2' written twice"):
            writer.write([Answer("q1", "Lyon", "Lyon.", "m", 2)])


def test_feedback_on_answers_generated_again_is_not_taken_as_done(tmp_path):
    config = load_config(overrides=["data.eval_size=8", "data.train_size=4"])
    layout = RunLayout(tmp_path)
    prepare(layout, config.data)
    questions = read_records(layout.train_examples, QAExample)
    write_records(layout.answers, [Answer(q.id, "Paris", "Paris", "one model") for q in questions])
    assert len(annotate(layout, config.annotate)) == len(questions)
    assert len(annotate(layout, config.annotate)) == len(questions)  # the same answers: done
    write_records(layout.answers, [Answer(q.id, "Rome", "Rome", "another model") for q in questions])
    with pytest.raises(ValueError, match=f"{questions[0].id}.*'Paris'.*'Rome'.*generated again"):
        annotate(layout, config.annotate)
