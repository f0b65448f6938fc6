"""Hybrid training sets: exactly N examples, exactly R*N with human feedback, the mix in the metadata.

    python -m pytest tests/stages/test_hybrid.py
"""

from __future__ import annotations

import json

import pytest
from support.human_helpers import laffi, make_run

from laffi.records import Feedback, TrainingExample, read_records, write_records


@pytest.fixture
def run(tmp_path):
    run = make_run(tmp_path / "run", n_items=12)
    # people annotated q000..q005; q001 twice (two people), so 6 questions carry 7 human records
    human = [Feedback(f"q{i:03d}", "north" if i % 2 else "south", "incorrect", f"human {i} by ann", "human", "ann")
             for i in range(6)]
    human.append(Feedback("q001", "north", "correct", "human 1 by bob", "human", "bob"))
    write_records(run / "feedback.human.jsonl", human)
    return run


def build(run, *argv):
    return laffi("build", str(run), "data.num_shots=1", *argv)


def test_ratio_and_size_are_exact_and_recorded(run):
    code, out, err = build(run, "--human-ratio", "0.5", "--size", "10")
    assert code == 0, err
    laffi_set = read_records(run / "sets" / "laffi.jsonl", TrainingExample)
    sft_set = read_records(run / "sets" / "sft.jsonl", TrainingExample)
    meta = json.loads((run / "sets" / "laffi.meta.json").read_text())
    assert len(laffi_set) == 10 and [e.id for e in sft_set] == [e.id for e in laffi_set]
    assert len({e.id for e in laffi_set}) == 10  # a question appears once
    completions = {e.id: e.completion[0]["content"] for e in laffi_set}
    human = {i for i, text in completions.items() if text.startswith("human")}
    ai = {i for i, text in completions.items() if text.startswith("AI feedback")}
    assert len(human) == 5 and len(ai) == 5
    assert meta["size"] == 10 and meta["human_ratio"] == 0.5 and meta["human"] == 5 and meta["ai"] == 5
    assert set(meta["human_ids"]) == human and set(meta["ai_ids"]) == ai
    assert sum(meta["human_annotators"].values()) == 5
    assert [e.id for e in laffi_set] == sorted(e.id for e in laffi_set)  # train-pool order
    # the feedback prompt carries the answer the person judged
    for e in laffi_set:
        assert e.prompt[-2] == {"role": "assistant", "content": "north" if int(e.id[1:]) % 2 else "south"}

    # same seed, same set; the extremes work too
    assert build(run, "--human-ratio", "0.5", "--size", "10")[0] == 0
    assert read_records(run / "sets" / "laffi.jsonl", TrainingExample) == laffi_set
    assert build(run, "--human-ratio", "1", "--size", "6")[0] == 0
    assert json.loads((run / "sets" / "laffi.meta.json").read_text())["ai"] == 0
    assert build(run, "--human-ratio", "0", "--size", "12")[0] == 0
    assert json.loads((run / "sets" / "laffi.meta.json").read_text())["human"] == 0


def test_not_enough_feedback_or_an_inexact_ratio_is_a_clear_error(run):
    code, _, err = build(run, "--human-ratio", "0.7", "--size", "10")
    assert code == 2 and "needs human feedback on 7 answers" in err and "have it on 6" in err
    code, _, err = build(run, "--human-ratio", "0.5", "--size", "15")
    assert code == 2 and "--human-ratio 0.5 of --size 15 is 7.5 examples" in err
    code, _, err = build(run, "--human-ratio", "0.25", "--size", "16")
    assert code == 2 and "needs AI feedback on 12 other answers" in err
    assert "every answer of the train pool has it; lower --size" in err  # annotating more cannot help
    code, _, err = build(run, "--human-ratio", "1.5", "--size", "2")
    assert code == 2 and "--human-ratio: must be in [0, 1]" in err
    code, _, err = build(run, "--size", "4")
    assert code == 2 and "go together" in err
    assert not (run / "sets" / "laffi.jsonl").exists()


def test_a_plain_build_records_its_mix_too(run):
    code, _, err = build(run)
    assert code == 0, err
    meta = json.loads((run / "sets" / "laffi.meta.json").read_text())
    assert meta["size"] == 12 and meta["human"] == 0 and meta["ai"] == 12 and meta["human_ratio"] is None


def test_an_experiment_is_told_its_own_options_and_where_people_annotate(run, tmp_path):
    from laffi.config import DataConfig
    from laffi.layout import RunLayout
    from laffi.stages.build import HybridConfig, build_hybrid

    shared = RunLayout(tmp_path / "experiment")
    with pytest.raises(ValueError) as refused:
        build_hybrid(RunLayout(run), DataConfig(num_shots=1), HybridConfig(0.7, 10),
                     options=("grid.human_ratio", "grid.size"), people=shared)
    assert str(refused.value).startswith("grid.human_ratio 0.7 of grid.size 10 needs human feedback on 7 answers")
    assert f"`laffi export-feedback {shared.root}`" in str(refused.value) and "--size" not in str(refused.value)
    # the experiment's own answers tell whether annotating more could help (a variant's directory has none)
    with pytest.raises(ValueError, match="every answer of the train pool has it; lower grid.size"):
        build_hybrid(RunLayout(run), DataConfig(num_shots=1), HybridConfig(0.0, 16),
                     options=("grid.human_ratio", "grid.size"), people=RunLayout(run))


def test_laffi_run_does_not_build_over_a_hybrid_build(run, tmp_path):
    code, _, err = build(run, "--human-ratio", "0.5", "--size", "10")
    assert code == 0, err
    kept = (run / "sets" / "laffi.jsonl").read_bytes()
    code, _, err = laffi("run", "--out", str(run), "data.num_shots=1", "systems.names=base,laffi")
    assert code == 2 and "built with people's feedback (`laffi build --human-ratio 0.5 --size 10`)" in err
    assert (run / "sets" / "laffi.jsonl").read_bytes() == kept and not (run / "eval").exists()
