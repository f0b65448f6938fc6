"""The stages on a tiny model: resume after a crash, and `laffi run` end to end."""

import json
import shutil

import pytest
import yaml

import laffi.backends.answering as answering_module
from laffi.cli import main
from laffi.config import load_config
from laffi.layout import RunLayout
from laffi.prompts import read_review
from laffi.records import (
    Answer,
    Feedback,
    Prediction,
    QAExample,
    RecordError,
    RecordWriter,
    TrainingExample,
    read_records,
)
from laffi.stages.generate import generate
from laffi.stages.prepare import prepare
from laffi.systems import load_systems, packaged_systems, training_order


class Crash(Exception):
    pass


def test_generate_resumes_after_a_crash_without_losing_or_repeating(tiny_overrides, tmp_path, monkeypatch):
    config = load_config(overrides=tiny_overrides)
    prepare(RunLayout(tmp_path), config.data)
    layout = RunLayout(tmp_path)
    real = answering_module.shared_prefix_generate  # the default engine

    def one_batch_then_crash(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        raise Crash("killed after the first batch")

    monkeypatch.setattr(answering_module, "shared_prefix_generate", one_batch_then_crash)
    with pytest.raises(Crash):
        generate(RunLayout(tmp_path), config.model, config.data, config.generate)
    first = read_records(layout.answers, Answer)
    assert len(first) == config.generate.batch_size
    with layout.answers.open("a") as handle:  # and the crash tore the line being written
        handle.write('{"id": "half a rec')

    monkeypatch.setattr(answering_module, "shared_prefix_generate", real)
    answers = generate(RunLayout(tmp_path), config.model, config.data, config.generate)
    ids = [a.id for a in answers]
    assert sorted(ids) == sorted(e.id for e in read_records(layout.train_examples, QAExample))
    assert len(ids) == len(set(ids))
    assert answers[: len(first)] == first  # the records from before the crash were kept as they were


def test_record_writer_refuses_duplicates(tmp_path):
    path = tmp_path / "answers.jsonl"
    with RecordWriter(path, Answer) as writer:
        writer.write([Answer("q1", "Paris", "Paris.", "m")])
    with RecordWriter(path, Answer) as writer:
        assert writer.done_ids == {"q1"}
        with pytest.raises(RecordError, match="q1"):
            writer.write([Answer("q1", "Paris", "Paris.", "m")])


def test_malformed_data_is_refused_before_anything_is_written(tmp_path, capsys):
    bad = tmp_path / "qa.jsonl"
    good = {"id": "a", "title": "T", "context": "c", "question": "q?", "answers": ["c"]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "answers": "c"}) + "\n")
    run_dir = tmp_path / "run"
    assert main(["prepare", str(run_dir), f"data.source={bad}", "data.eval_size=1"]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not RunLayout(run_dir).data.exists() or not any(RunLayout(run_dir).data.glob("*.jsonl"))


def test_laffi_run_end_to_end_on_a_tiny_model(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--out", str(out), *tiny_overrides]) == 0
    layout = RunLayout(out)
    printed = capsys.readouterr().out
    assert "| base |" in printed and "| laffi |" in printed

    results = json.loads(layout.results_json.read_text())
    assert list(results) == ["base", "sft", "laffi", "laffi-aux-half"]  # systems.names, by default
    for metrics in results.values():
        assert metrics["total"] == 8
        assert metrics["exact_ci95"][0] <= metrics["exact"] <= metrics["exact_ci95"][1]
        assert metrics["f1_ci95"][0] <= metrics["f1"] <= metrics["f1_ci95"][1]

    train_ids = [e.id for e in read_records(layout.train_examples, QAExample)]
    titles = {name: {e.title for e in read_records(path, QAExample)} for name, path in
              (("train", layout.train_examples), ("dev", layout.dev_examples), ("heldout", layout.eval_examples))}
    assert all(titles.values())
    assert not titles["train"] & titles["heldout"] and not titles["dev"] & (titles["train"] | titles["heldout"])
    assert len(read_records(layout.dev_examples, QAExample)) == 100  # data.dev_size, the default
    assert [a.id for a in read_records(layout.answers, Answer)] != []
    feedback = read_records(layout.feedback, Feedback)
    assert sorted(f.id for f in feedback) == sorted(train_ids)
    assert {f.source for f in feedback} == {"ai"}
    laffi_set = read_records(layout.training_set("laffi"), TrainingExample)
    sft_set = read_records(layout.training_set("sft"), TrainingExample)
    assert [e.id for e in laffi_set] == [e.id for e in sft_set]  # same questions for both systems
    assert laffi_set[0].completion[0]["content"] == next(f.text for f in feedback if f.id == laffi_set[0].id)
    for system in ("sft", "laffi"):
        assert (layout.adapter(system) / "adapter_model.safetensors").exists()
    for system in ("base", "sft", "laffi"):
        assert len(read_records(layout.evaluation(system) / "predictions.jsonl", Prediction)) == 8
    assert (out / "config.yaml").exists() and layout.results_md.read_text().count("| base |") == 2

    # a second run finds everything done and gives the same numbers
    assert main(["run", "--preset", "smoke", "--out", str(out), *tiny_overrides]) == 0
    assert json.loads(layout.results_json.read_text()) == results
    # ...and so does the directory moved elsewhere as a whole (its evaluations named the adapters where they were)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    assert main(["run", "--preset", "smoke", "--out", str(moved), *tiny_overrides]) == 0, capsys.readouterr().err
    assert json.loads(RunLayout(moved).results_json.read_text()) == results
    # an adapter trained again under the same path is another one: its old evaluation is refused, not reused
    weights = RunLayout(moved).adapter("sft") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert main(["evaluate", str(moved), "--system", "sft", *tiny_overrides]) != 0
    assert "different settings (inputs.adapter)" in capsys.readouterr().err

    # the dev set is scored apart, into eval-dev/, and leaves the held-out results alone
    adapter = str(layout.adapter("sft"))
    assert main(["evaluate", str(out), "--system", "sft", "--adapter", adapter, *tiny_overrides, "eval.split=dev"]) == 0
    dev = json.loads(layout.metrics("sft", "dev").read_text())
    assert dev["split"] == "dev" and dev["total"] == 100 and layout.evaluation("sft", "dev").parent.name == "eval-dev"
    assert len(read_records(layout.predictions("sft", "dev"), Prediction)) == 100
    assert layout.evaluated_systems() == ["base", "laffi", "laffi-aux-half", "sft"]
    assert json.loads(layout.results_json.read_text()) == results


def test_a_resumed_run_does_not_retry_failed_annotations_under_trainings_begun_without_them(tiny_overrides, tmp_path,
                                                                                             capsys, monkeypatch):
    import laffi.stages.annotate as annotate_module
    from laffi.annotators.reference import ReferenceAnnotator
    from laffi.records import AnnotationFailure

    class FailsOnce(ReferenceAnnotator):  # the first question's request fails, as a server's 500s can
        def annotate(self, pairs):
            results = super().annotate(pairs)
            return [AnnotationFailure(r.id, r.answer, self.name, "request", "HTTP 500", 1) if i == 0 else r
                    for i, r in enumerate(results)]

    out, args = tmp_path / "run", ["run", "--preset", "smoke", *tiny_overrides, "systems.names=base,sft"]
    with monkeypatch.context() as patch:
        patch.setattr(annotate_module, "make_annotator", lambda config: FailsOnce())
        assert main([*args, "--out", str(out)]) == 0
    layout = RunLayout(out)
    trained = read_records(layout.training_set("sft"), TrainingExample)
    assert len(trained) == 7
    results = json.loads(layout.results_json.read_text())
    capsys.readouterr()
    # the server answers now; a rerun that asked again would rebuild the set the adapter was trained on, and stop
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    assert "annotate: 1 answers without feedback" in capsys.readouterr().out
    assert read_records(layout.training_set("sft"), TrainingExample) == trained
    assert json.loads(layout.results_json.read_text())["sft"] == results["sft"]


def test_training_sets_load_with_datasets(tiny_overrides, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--out", str(out), *tiny_overrides, "train.steps=1",
                 "train.warmup_steps=0", "train.checkpoint_every=0"]) == 0
    dataset = load_dataset("json", data_files=str(RunLayout(out).training_set("laffi")), split="train")
    assert dataset.column_names == ["id", "prompt", "completion"]
    assert dataset[0]["prompt"][-1]["role"] == "user" and dataset[0]["completion"][0]["role"] == "assistant"



def test_every_packaged_system_trains_once_and_is_evaluated_end_to_end(tiny_overrides, tmp_path):
    names = ["base", *(n for n in packaged_systems() if n != "base")]
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--out", str(out), *tiny_overrides, "train.steps=2",
                 "train.checkpoint_every=0", f"systems.names={','.join(names)}"]) == 0
    layout = RunLayout(out)
    results = json.loads(layout.results_json.read_text())
    assert list(results) == names
    systems = load_systems(names)
    assert layout.trained_systems() == sorted(s.name for s in systems if s.recipe)  # one adapter per recipe, none for the others
    seconds = json.loads(layout.run_info.read_text())["stage_seconds"]
    assert [stage for stage in seconds if stage.startswith("train ")] == [f"train {s.name}" for s in training_order(systems)]
    second_stage = json.loads(layout.train_summary("laffi-then-sft").read_text())
    assert second_stage["init"] == str(layout.adapter("laffi")) and second_stage["steps"] == 2
    assert json.loads(layout.train_summary("sft-long").read_text())["steps"] == 4  # twice train.steps
    with_aux = json.loads(layout.train_summary("laffi-aux").read_text())  # each question's LaFFi example too
    assert with_aux["aux"] == {"examples": with_aux["examples"], "weight": 1.0} and with_aux["examples"] > 0
    assert json.loads(layout.train_summary("laffi-aux-half").read_text())["aux"]["weight"] == 0.5
    in_rounds = json.loads(layout.train_summary("laffi-dpo-r2").read_text())["rounds"]  # train.rounds: 2
    assert [(r["round"], r["steps"]) for r in in_rounds] == [(1, 2), (2, 2)]
    assert len(read_records(layout.round("laffi-dpo-r2", 2).answers, Answer)) == len(read_records(
        layout.training_set("laffi-dpo-r2"), TrainingExample))  # round 1's model on round 1's questions
    for name, aux_set in (("laffi-aux-refine", "refine"), ("laffi-aux-critique", "critique")):  # fields last
        aux_examples = read_records(layout.aux_set(name), TrainingExample)
        assert len(aux_examples) == with_aux["examples"]
        assert all(read_review(e.completion[0]["content"]) for e in aux_examples), aux_set
    for system in systems:
        predictions = read_records(layout.predictions(system.name), Prediction)
        assert len(predictions) == 8
        if system.guided:  # each answer reviewed at least once and at most `rounds` times
            assert all(1 <= len(p.reviews) <= system.answer.rounds for p in predictions)
        else:
            assert all(p.reviews is None for p in predictions)
    for system in (s for s in systems if s.guided and s.adapter_of):  # its first answers are the direct ones
        direct = {p.id: p.output for p in read_records(layout.predictions(system.adapter_of), Prediction)}
        assert {p.id: p.output for p in read_records(layout.predictions(system.name), Prediction)} == direct
    differences = json.loads(layout.run_info.read_text())["paired_differences"]
    assert {f"{n} - sft" for n in names if n not in ("base", "sft")} | {"sft - base"} <= set(differences)
    saved = yaml.safe_load(layout.eval_config("sft-reviewed").read_text())["system"]
    assert saved["adapter"] == str(layout.adapter("sft").resolve())
    assert saved["reviewer"] == str(layout.adapter("laffi-refine-mix").resolve())
