"""Systems as data: every packaged system parses and says how to run it; bad files are named; the
training sets a recipe asks for hold exactly its shares; the refine format's fields read back.

    python -m pytest tests/systems
"""

from __future__ import annotations

import json

import pytest
from support.human_helpers import laffi, make_run

from laffi.config import ConfigError
from laffi.prompts import read_review, review_completion
from laffi.records import Feedback, QAExample, TrainingExample, read_records, write_records
from laffi.stages.build import SET_FORMATS, shares_of
from laffi.systems import DEFINITIONS, SETS, family_of, load_system, load_systems, packaged_systems


@pytest.mark.parametrize("name", packaged_systems())
def test_every_packaged_system_parses_and_starts_with_the_command_that_runs_it(name):
    system = load_system(name)
    first = (DEFINITIONS / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# laffi run systems.names=") and name in first.split("=", 1)[1].split(",")
    assert system.description
    load_systems(first.split("=", 1)[1].split(","))  # the command's list is complete: adapters, reviewers


def test_the_paper_method_keeps_its_recipe_and_the_sets_match_the_build_stage():
    laffi_system, sft = load_system("laffi"), load_system("sft")
    assert laffi_system.recipe.sets == {"laffi": 1.0} and laffi_system.answer.procedure == "direct"
    assert sft.recipe.sets == {"sft": 1.0} and load_system("base").adapter is None
    assert set(SETS) == set(SET_FORMATS)


def test_every_packaged_system_names_its_family_and_a_file_without_one_is_its_own(tmp_path):
    families = {name: load_system(name).family for name in packaged_systems()}
    assert set(families.values()) == {"base", "sft", "laffi"}
    assert families["base"] == "base" and families["laffi-then-sft"] == "laffi"
    assert {n for n, f in families.items() if f == "sft"} == {"sft", "sft-long", "sft-reviewed"}
    assert all(f == "laffi" for n, f in families.items() if n.startswith("laffi"))
    assert all("family:" in (DEFINITIONS / f"{n}.yaml").read_text() for n in families)  # said, not defaulted
    assert load_system(write_system(tmp_path, "mine", "train:\n  sets: {sft: 1.0}\n")).family == "mine"
    assert load_system(write_system(tmp_path, "ours", "family: sft\n")).family == "sft"
    assert family_of("laffi-aux") == "laffi" and family_of(str(tmp_path / "gone.yaml")) is None


def write_system(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("train:\n  sets: {sft: 0.5, laffi: 0.4}\n", "train.sets: shares must sum to 1"),
    ("train:\n  sets: {gold: 1.0}\n", "unknown set 'gold'"),
    ("answer:\n  procedure: vote\n", "answer.procedure: must be one of direct, feedback-guided"),
    ("answer:\n  rounds: 0\n", "answer.rounds: must be >= 1"),
    ("train:\n  sets: {sft: 1.0}\nadapter_of: laffi\n", "adapter_of: a system with its own train recipe"),
    ("trian: {}\n", "trian: unknown option"),
    ("train:\n  sets: {sft: 1.0}\n  aux: gold\n", "train.aux: unknown set 'gold'"),
    ("train:\n  sets: {sft: 1.0}\n  aux: laffi\n  aux_weight: 0\n", "train.aux_weight: must be > 0"),
    ("family: my family\n", "family: letters, digits, - and _"),
    ("train:\n  sets: {sft: 1.0}\n  aux_weight: 0.5\n", "train.aux_weight: weighs train.aux's examples"),  # no aux
    ("train:\n  sets: {sft: 1.0}\n  aux: laffi\n  aux_weight: .inf\n", "train.aux_weight: must be > 0 and finite"),
    ("answer:\n  reviewer: laffi\n", "answer.reviewer: only feedback-guided answering reads it"),
    ("answer:\n  rounds: 3\n", "answer.rounds: only feedback-guided answering reads it"),
])
def test_a_bad_system_file_is_named_with_its_option(tmp_path, text, message):
    path = write_system(tmp_path, "mine", text)
    with pytest.raises(ConfigError, match=message) as refused:
        load_system(path)
    assert str(refused.value).startswith(f"{path}: ")  # the file too, whichever check refused it


def test_systems_must_name_what_they_answer_and_review_with(tmp_path):
    with pytest.raises(ConfigError, match="unknown system 'nope'"):
        load_systems(["nope"])
    with pytest.raises(ConfigError, match="laffi-refine-mix-guided's adapter_of is 'laffi-refine-mix'"):
        load_systems(["sft", "laffi-refine-mix-guided"])
    reviewed_by_laffi = write_system(tmp_path, "odd", "adapter_of: sft\nanswer: {procedure: feedback-guided, "
                                                      "reviewer: laffi}\n")
    with pytest.raises(ConfigError, match="reviewer laffi never trained on a set whose completions end with the fields"):
        load_systems(["sft", "laffi", reviewed_by_laffi])
    with pytest.raises(ConfigError, match="names a system twice"):
        load_systems(["sft", "sft"])
    # the base model reviewing itself never learned the fields it would read
    alone = write_system(tmp_path, "alone", "answer: {procedure: feedback-guided}\n")
    with pytest.raises(ConfigError, match="alone is feedback-guided, but no trained adapter reviews its answers"):
        load_systems(["base", alone])
    # a reviewer that learned the fields from its auxiliary set is one
    via_aux = write_system(tmp_path, "via-aux", "adapter_of: sft\nanswer: {procedure: feedback-guided, "
                                                "reviewer: laffi-aux-refine}\n")
    assert [s.name for s in load_systems(["sft", "laffi-aux-refine", via_aux])][-1] == "via-aux"


@pytest.mark.parametrize("shares, total, expected", [([0.5, 0.5], 8, [4, 4]), ([0.25, 0.75], 12, [3, 9]),
                                                     ([1 / 3, 2 / 3], 10, [3, 7]), ([1.0], 5, [5]),
                                                     ([0.25] * 4, 6, [2, 1, 1, 2]), ([0.3, 0.3, 0.4], 5, [2, 1, 2]),
                                                     ([0.2] * 5, 3, [1, 0, 1, 0, 1])])
def test_shares_are_whole_counts_that_sum_to_the_total(shares, total, expected):
    assert shares_of(shares, total) == expected


def test_a_mix_holds_exactly_the_share_asked_for_each_question_once(tmp_path):
    run = make_run(tmp_path / "run", n_items=12)
    # the reference annotator's records name the right answer; make every incorrect one do so
    notes = [Feedback(f.id, f.answer, f.verdict, f.text, f.source, f.annotator,
                      corrected_answer=None if f.verdict == "correct" else "north")
             for f in read_records(run / "feedback.jsonl", Feedback)]
    write_records(run / "feedback.jsonl", notes)
    mix = write_system(tmp_path, "quarter", "train:\n  sets: {refine: 0.25, sft: 0.75}\n")
    code, out, err = laffi("build", str(run), "data.num_shots=1", f"systems.names=base,sft,laffi,{mix}")
    assert code == 0, err
    rows = read_records(run / "sets" / "quarter.jsonl", TrainingExample)
    meta = json.loads((run / "sets" / "quarter.meta.json").read_text())
    assert meta["examples"] == {"refine": 3, "sft": 9} and meta["size"] == 12
    assert sorted(meta["ids"]["refine"] + meta["ids"]["sft"]) == sorted(r.id for r in rows)  # each question once
    assert [r.id for r in rows] == [r.id for r in read_records(run / "sets" / "sft.jsonl", TrainingExample)]
    by_id = {n.id: n for n in notes}
    for row in rows:
        completion = row.completion[0]["content"]
        if row.id in meta["ids"]["refine"]:
            note = by_id[row.id]
            assert read_review(completion) == (note.verdict, note.answer if note.verdict == "correct" else "north")
            assert completion.startswith(note.text) and row.prompt[-2]["content"] == note.answer
        else:
            assert completion == "north" and row.prompt[-1]["content"].startswith("Passage:")
    # the same build again draws the same questions
    assert laffi("build", str(run), "data.num_shots=1", f"systems.names=base,sft,laffi,{mix}")[0] == 0
    assert json.loads((run / "sets" / "quarter.meta.json").read_text()) == meta


def test_a_critique_is_the_verdict_sentence_then_the_fields(tmp_path):
    from laffi.stages.build import critique_example

    note = Feedback("q1", "south", "incorrect", "The answer is incorrect. It is the wrong span. It should be \"north\".",
                    "ai", "reference", corrected_answer="north",
                    parts={"verdict": "The answer is incorrect.", "diagnosis": "It is the wrong span.",
                           "answer": "It should be \"north\"."})
    example = read_records(make_run(tmp_path / "run", n_items=1) / "data" / "train.jsonl", QAExample)[0]
    row = critique_example(example, [], note)
    assert row.completion[0]["content"] == "The answer is incorrect.\nVerdict: incorrect\nRevised answer: north"
    assert row.prompt[-2]["content"] == "south"  # the answer under review, as in the LaFFi prompt


def test_a_refine_set_needs_feedback_that_names_the_right_answer(tmp_path):
    run = make_run(tmp_path / "run", n_items=6)  # free-text feedback: the incorrect ones have no corrected answer
    code, _, err = laffi("build", str(run), "data.num_shots=1", "systems.names=base,sft,laffi-refine")
    assert code == 2 and "laffi-refine: 6 refine examples asked for, but only 3 questions" in err


def test_the_review_fields_read_back_as_written_and_nothing_else_does():
    text = review_completion('The answer is incorrect. It should be "Denver".', "incorrect", "Denver Broncos")
    assert read_review(text) == ("incorrect", "Denver Broncos")
    assert read_review(text + "\n") == ("incorrect", "Denver Broncos")
    assert read_review(review_completion("Correct.", "correct", "")) == ("correct", "")
    assert read_review('The answer is incorrect. The right answer is "Denver".') is None  # free text is not read
    assert read_review("Verdict: wrong\nRevised answer: x") is None  # not a verdict
    assert read_review("Verdict: incorrect") is None  # cut off before its revised answer
    # a model that repeats the fields: the last complete pair counts
    assert read_review("Verdict: correct\nRevised answer: a\nVerdict: incorrect\nRevised answer: b") == ("incorrect", "b")


def test_a_second_stage_trains_after_the_system_it_continues(tmp_path):
    from laffi.systems import training_order

    systems = load_systems(["laffi-then-sft", "sft-long", "sft", "laffi", "base"])
    order = [s.name for s in training_order(systems)]
    assert order.index("laffi") < order.index("laffi-then-sft") and "base" not in order
    with pytest.raises(ConfigError, match="laffi-then-sft's train.init is 'laffi', which is not a system"):
        load_systems(["sft", "laffi-then-sft"])
    loop = write_system(tmp_path, "loop", "train:\n  sets: {sft: 1.0}\n  init: loop\n")
    with pytest.raises(ConfigError, match="loop's train.init chain comes back to itself"):
        load_systems([loop])
    with pytest.raises(ConfigError, match="train.steps_multiple: must be >= 1"):
        load_system(write_system(tmp_path, "none", "train:\n  sets: {sft: 1.0}\n  steps_multiple: 0\n"))


def test_answer_then_feedback_puts_the_gold_answer_on_the_line_direct_answering_reads(tmp_path):
    from laffi.prompts import extract_answer
    from laffi.stages.build import answer_feedback_example, sft_example

    note = Feedback("q1", "south", "incorrect", 'The answer is incorrect. It should be "north".', "ai", "reference")
    example = read_records(make_run(tmp_path / "run", n_items=1) / "data" / "train.jsonl", QAExample)[0]
    row, sft = answer_feedback_example(example, [], note), sft_example(example, [], note)
    completion = row.completion[0]["content"]
    assert row.prompt == sft.prompt and extract_answer(completion) == sft.completion[0]["content"]
    assert completion.endswith('"south": The answer is incorrect. It should be "north".')


def test_auxiliary_examples_are_the_same_questions_in_the_aux_format_sharing_the_qa_prompt(tmp_path):
    from laffi.layout import RunLayout

    run = make_run(tmp_path / "run", n_items=6)
    system = load_system("laffi-aux")
    assert system.aux == "laffi" and system.recipe.sets == {"sft": 1.0}
    code, out, err = laffi("build", str(run), "data.num_shots=1", "systems.names=base,sft,laffi,laffi-aux")
    assert code == 0, err
    layout = RunLayout(run)
    main = read_records(layout.training_set("laffi-aux"), TrainingExample)
    aux = read_records(layout.aux_set("laffi-aux"), TrainingExample)
    assert main == read_records(layout.training_set("sft"), TrainingExample)
    assert aux == read_records(layout.training_set("laffi"), TrainingExample)  # same questions, order, shots
    for sft, feedback in zip(main, aux):  # the LaFFi prompt continues the QA prompt: a packed row shares it
        assert feedback.prompt[:len(sft.prompt)] == sft.prompt and len(feedback.prompt) > len(sft.prompt)
    assert json.loads(layout.set_metadata("laffi-aux").read_text())["aux"] == "laffi"
