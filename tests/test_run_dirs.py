"""A directory that is not a run is refused by every command that reads a run, and nothing is created
there; only the commands that start a run (`laffi prepare`, `laffi run`) create one. The one
definition is `RunLayout.existing` (laffi/layout.py).

    python -m pytest tests/test_run_dirs.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laffi.cli import main
from laffi.layout import NotARun, RunLayout, failures_file, sidecar_config

# every command that reads a run; RUN stands for the directory under test
READERS = {
    "generate": ["generate", "RUN"],
    "annotate": ["annotate", "RUN"],
    "build": ["build", "RUN"],
    "train": ["train", "RUN", "--system", "sft"],
    "evaluate": ["evaluate", "RUN", "--system", "base"],
    "attention": ["attention", "RUN"],
    "report": ["report", "RUN"],
    "stats": ["stats", "RUN"],
    "serve": ["serve", "RUN", "--port", "0"],
    "annotators list": ["annotators", "list", "--run", "RUN"],
    "annotators add": ["annotators", "add", "alice", "--run", "RUN"],
    "annotators revoke": ["annotators", "revoke", "alice", "--run", "RUN"],
    "export-feedback": ["export-feedback", "RUN"],
    "import-feedback": ["import-feedback", "RUN", "IN"],
}


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("kind", ["missing", "empty"])
@pytest.mark.parametrize("name", list(READERS))
def test_a_command_that_reads_a_run_refuses_a_directory_that_is_not_one(name, kind, tmp_path, capsys):
    run_dir = tmp_path / "not-a-run"
    if kind == "empty":
        run_dir.mkdir()
    feedback = tmp_path / "in.jsonl"  # import-feedback's file, outside the directory
    feedback.write_text("")
    before = tree(tmp_path)
    argv = [str(run_dir) if a == "RUN" else str(feedback) if a == "IN" else a for a in READERS[name]]

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"laffi {argv[0]}: error: {run_dir}: not a run directory") and err.count("\n") == 1
    assert f"laffi prepare {run_dir}" in err  # what starts a run there
    assert tree(tmp_path) == before  # nothing created: no annotations.db, no report.html, no data/


def test_a_file_is_not_a_run_directory(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{}")
    with pytest.raises(NotARun, match="not a directory"):
        RunLayout.existing(path)


def test_what_laffi_writes_first_makes_a_run_directory(tmp_path):
    """config.yaml (`laffi run`, `laffi experiment`), data/config.yaml (`laffi prepare`), layout.json (an
    experiment's variants and jobs, whose data/ is the experiment's)."""
    with pytest.raises(NotARun, match="it has no config.yaml, data/config.yaml or layout.json"):
        RunLayout.existing(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "answers.jsonl").write_text("")
    with pytest.raises(NotARun):  # a data folder and answers alone are not a run laffi started
        RunLayout.existing(tmp_path)

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("")
    assert RunLayout.existing(run) == RunLayout(run)
    prepared = tmp_path / "prepared"
    (prepared / "data").mkdir(parents=True)
    (prepared / "data" / "config.yaml").write_text("")
    assert RunLayout.existing(prepared) == RunLayout(prepared)
    (prepared / "data" / "train.jsonl").write_text("")
    with pytest.raises(NotARun, match="the data folder of the run .*; give the run directory"):
        RunLayout.existing(prepared / "data")  # its config.yaml is the split's
    named_data = tmp_path / "runs" / "data"  # a run directory that happens to be called data: a data/ of its own
    (named_data / "data").mkdir(parents=True)
    for path in (named_data / "config.yaml", named_data / "data" / "config.yaml", named_data / "train.jsonl"):
        path.write_text("")
    assert RunLayout.existing(named_data) == RunLayout(named_data)
    job = prepared / "jobs" / "sft-1"
    job.mkdir(parents=True)
    (job / "layout.json").write_text(json.dumps({"data": "../../data"}))
    assert RunLayout.existing(job).data == job / "../../data"  # its layout.json read, as RunLayout.of does


def test_prepare_starts_a_run_that_the_readers_then_accept(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["prepare", str(run_dir), "data.eval_size=4", "data.train_size=4", "data.dev_size=0"]) == 0
    assert RunLayout.existing(run_dir).train_examples.exists()
    assert main(["annotators", "list", "--run", str(run_dir)]) == 0  # may open its database
    assert RunLayout(run_dir).annotations_db.exists()
    assert main(["report", str(run_dir)]) == 0
    assert RunLayout(run_dir).report.exists()
    capsys.readouterr()
    assert main(["stats", str(run_dir)]) == 2  # a run, but one without feedback yet: its own error
    assert "no feedback" in capsys.readouterr().err


def test_import_feedback_of_a_missing_file_opens_no_database(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["prepare", str(run_dir), "data.eval_size=4", "data.train_size=4", "data.dev_size=0"]) == 0
    assert main(["import-feedback", str(run_dir), str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert not RunLayout(run_dir).annotations_db.exists()


def test_a_model_folder_that_does_not_exist_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", str(run), "data.eval_size=4", "data.train_size=4", "data.dev_size=0"]) == 0
    assert main(["generate", str(run), f"model.name={tmp_path / 'typo'}"]) != 0  # not a hub repo id error
    assert f"model.name: {tmp_path / 'typo'} does not exist" in capsys.readouterr().err


def test_a_mistyped_data_source_is_fixed_by_running_again(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", str(run), "data.source=typo.json", "data.eval_size=8"]) != 0
    assert main(["prepare", str(run), "data.eval_size=8"]) == 0  # not refused for "different settings"
    assert RunLayout(run).train_examples.exists()
    assert main(["prepare", str(run), "data.eval_size=9"]) != 0  # once drawn, the questions stay
    assert "different settings (data.eval_size)" in capsys.readouterr().err


def test_a_run_split_by_a_laffi_without_a_dev_set_goes_on_with_data_dev_size_0(tmp_path, capsys):
    import yaml

    run = tmp_path / "run"
    assert main(["prepare", str(run), "data.eval_size=4", "data.train_size=4", "data.dev_size=0"]) == 0
    (run / "answers.jsonl").write_text('{"x": 1}\n')  # the model has answered: the run's config.yaml is compared
    for saved in (RunLayout(run).data_config, RunLayout(run).config):
        older = yaml.safe_load(saved.read_text())
        del older["data"]["dev_size"]  # as a laffi before dev sets wrote them
        saved.write_text(yaml.safe_dump(older))
    assert main(["prepare", str(run), "data.eval_size=4", "data.train_size=4", "data.dev_size=100"]) != 0
    assert "data.dev_size=0 to go on without one" in capsys.readouterr().err
    assert main(["prepare", str(run), "data.eval_size=4", "data.train_size=4", "data.dev_size=0"]) == 0  # the advice


def test_a_failed_annotate_or_build_is_fixed_by_running_again_with_other_settings(tmp_path, capsys, monkeypatch):
    from support.human_helpers import make_run

    run = make_run(tmp_path / "run", ai_feedback=False)
    # a local LLM annotator whose model does not exist is refused before anything is saved
    assert main(["annotate", str(run), "annotate.annotator=llm", "annotate.backend=transformers",
                 f"annotate.model={tmp_path / 'no-such-model'}"]) != 0
    assert f"annotate.model: {tmp_path / 'no-such-model'} does not exist" in capsys.readouterr().err
    # an LLM server no request reaches: its settings are saved, and the stage fails having written no feedback
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    assert main(["annotate", str(run), "annotate.annotator=llm", "annotate.base_url=http://127.0.0.1:9/v1",
                 "annotate.model=x", "annotate.retries=0", f"annotate.cache_dir={tmp_path / 'cache'}"]) != 0
    assert "annotator: llm" in sidecar_config(RunLayout(run).feedback).read_text()
    assert main(["annotate", str(run)]) == 0  # the reference annotator: not refused for "different settings"
    assert RunLayout(run).feedback.stat().st_size > 0
    assert main(["build", str(run), "data.num_shots=8"]) != 0  # only 3 few-shot examples
    assert main(["build", str(run), "data.num_shots=1"]) == 0
    capsys.readouterr()
    assert main(["build", str(run), "data.num_shots=2"]) != 0  # once written, the sets keep their settings
    assert "different settings (data.num_shots)" in capsys.readouterr().err


def test_a_run_begun_by_prepare_keeps_its_settings_for_the_later_stage_commands(tmp_path):
    from laffi.cli import _config, build_parser
    from laffi.config import load_config

    run = tmp_path / "run"
    assert main(["prepare", str(run), "--preset", "smoke", "data.eval_size=8", "train.steps=3"]) == 0
    assert load_config(RunLayout(run).config).train.steps == 3  # saved whole, not only the data section
    later = build_parser().parse_args(["train", str(run), "--system", "sft"])
    assert (_config(later).train.steps, _config(later).data.eval_size) == (3, 8)  # read by a later stage command
    later = build_parser().parse_args(["train", str(run), "train.steps=5", "--system", "sft"])
    assert _config(later).train.steps == 5  # a later command's own override: for that command only
    assert load_config(RunLayout(run).config).train.steps == 3
    assert main(["prepare", str(run), "data.eval_size=9"]) != 0  # refused by data/config.yaml ...
    assert load_config(RunLayout(run).config).data.eval_size == 8  # ... and config.yaml left as it was


def test_evaluate_refuses_a_name_that_is_neither_a_system_nor_a_trained_adapter(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", str(run), "data.eval_size=8"]) == 0
    assert main(["evaluate", str(run), "--system", "lafi"]) == 2  # a typo, not the base model under that name
    assert "--system lafi: not a system" in capsys.readouterr().err


def test_build_refuses_feedback_an_annotation_stopped_short_left(tmp_path):
    from support.human_helpers import laffi, make_run

    from laffi.records import AnnotationFailure, Feedback, read_records, write_records

    run = make_run(tmp_path / "run", n_items=6)
    layout = RunLayout(run)
    feedback = read_records(layout.feedback, Feedback)
    write_records(layout.feedback, feedback[:3])  # a kill writes no failures file
    code, _, err = laffi("build", str(run))
    assert code != 0 and "3 of the answers in" in err and f"run `laffi annotate {run}` to finish it" in err
    assert not layout.training_set("sft").exists()
    # answers whose annotation failed are left out, as before, with a word
    write_records(failures_file(layout.feedback), [AnnotationFailure(f.id, f.answer, f.annotator, "request", "HTTP 500", 1)
                                                   for f in feedback[3:]])
    code, out, err = laffi("build", str(run))
    assert code == 0, err
    assert "build: 3 answers have no feedback because their annotation failed" in out


def test_evaluating_a_system_not_trained_yet_says_how_to_train_it(tmp_path):
    from support.human_helpers import laffi, make_run

    from laffi.records import QAExample, read_records, write_records

    run = make_run(tmp_path / "run", n_items=4)
    layout = RunLayout(run)
    write_records(layout.eval_examples, read_records(layout.train_examples, QAExample)[:2])
    code, _, err = laffi("evaluate", str(run), "--system", "laffi-mix")
    assert code != 0 and "laffi-mix's adapter:" in err
    assert f"train it first (`laffi train {run} --system laffi-mix`" in err and "--adapter:" not in err

    # an --adapter folder of the user's own is not called a system to train
    code, _, err = laffi("evaluate", str(run), "--system", "mine", "--adapter", str(tmp_path / "nonexist"))
    assert code != 0 and "give a folder a training saved (RUN/adapters/NAME)" in err and "laffi train" not in err
    code, _, err = laffi("attention", str(run), "--system", "laffi")
    assert code != 0 and f"--system laffi: {layout.adapter('laffi')} holds no PEFT adapter" in err
    assert f"`laffi train {run} --system laffi`" in err and "--adapter:" not in err


def test_annotating_an_empty_answers_file_says_to_generate(tmp_path):
    from support.human_helpers import laffi, make_run

    run = make_run(tmp_path / "run", n_items=4, ai_feedback=False)
    (run / "answers.jsonl").write_text("")  # what a generate stopped before its first batch leaves
    code, _, err = laffi("annotate", str(run))
    assert code == 2 and "holds no answers; run `laffi generate" in err
    assert not (run / "feedback.jsonl").exists()
