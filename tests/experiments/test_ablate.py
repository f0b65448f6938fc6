"""`laffi ablate` end to end on the tiny model: a 2 x 2 x 2 grid over 2 seeds, what it made once and
what it shared, resuming after a crash, the human-share axis, and `laffi attention` on its adapter.

    python -m pytest tests/experiments/test_ablate.py
"""

from __future__ import annotations

import json
import shutil

import pytest

import laffi.experiments.ablate as ablate_module
from laffi.annotators.reference import VERDICTS
from laffi.cli import main
from laffi.config import ModelConfig, TrainConfig, non_default
from laffi.experiments.ablate import ablate, job_for
from laffi.experiments.grid import ablate_config_from
from laffi.layout import RunLayout, adapter_finished
from laffi.records import Feedback, TrainingExample, read_records, write_records


def tiny_run(model_dir) -> dict:
    return {"model": {"name": str(model_dir), "threads": 2},
            "data": {"eval_size": 6, "train_size": 8, "num_shots": 1},
            "generate": {"max_new_tokens": 3, "batch_size": 8},
            "train": {"steps": 2, "warmup_steps": 0, "batch_size": 2, "max_seq_len": 192, "checkpoint_every": 1},
            "eval": {"bootstrap_samples": 200}}


GRID = {"system": ["sft", "laffi"], "size": [4, 8], "content": ["verdict", "verdict+explanation+answer"],
        "seeds": [0, 1]}


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def grid_run(tiny_model_dir, tmp_path_factory):
    """The grid, run once; a crash in the third job's evaluation, then the rerun that finishes it."""
    root = tmp_path_factory.mktemp("ablate") / "grid"
    config = ablate_config_from({"run": tiny_run(tiny_model_dir), "grid": GRID})
    calls = {"train": [], "evaluate": [], "generate": 0}
    real_train, real_evaluate, real_generate = ablate_module.train_system, ablate_module.evaluate, ablate_module.generate

    def train(layout, system, *args, **kwargs):
        if not adapter_finished(layout.adapter(system.name)):  # else it returns at once
            calls["train"].append(str(layout.root))
        return real_train(layout, system, *args, **kwargs)

    def evaluate(layout, system, *args, **kwargs):
        calls["evaluate"].append(system)
        if len(calls["evaluate"]) == 4 and "crash" not in calls:  # base, job 1, job 2, then job 3 dies
            calls["crash"] = str(layout.root)
            raise Crash("killed during an evaluation")
        return real_evaluate(layout, system, *args, **kwargs)

    def generate(*args, **kwargs):
        calls["generate"] += 1
        return real_generate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ablate_module, "train_system", train)
        patch.setattr(ablate_module, "evaluate", evaluate)
        patch.setattr(ablate_module, "generate", generate)
        with pytest.raises(Crash):
            ablate(config, root)
        summary = ablate(config, root)
    return root, config, summary, calls


def test_the_grid_makes_each_artifact_once_and_shares_it(grid_run):
    root, config, summary, calls = grid_run
    cells = summary["cells"]
    assert len(cells) == 8 and all(c["seeds"] == [0, 1] and c["questions"] == 6 for c in cells)
    # 2 sizes x 2 seeds x (2 LaFFi contents + 1 SFT set, which the content cannot change) = 12 trainings
    jobs = summary["jobs"]
    assert len(jobs) == 12 and sorted(j["system"] for j in jobs).count("sft") == 4
    # every job trained exactly once over the two invocations: the crashed one was not trained again
    assert sorted(calls["train"]) == sorted(set(calls["train"])) and len(calls["train"]) == 12
    assert calls["crash"] in calls["train"]
    assert calls["generate"] == 2 and (root / "answers.jsonl").exists()  # called twice, answered once
    users = summary["artifacts"]
    for shared in ("answers.jsonl", "eval/base", "feedback.reference.jsonl"):
        assert len(users[shared]["used_by"]) == 16
    for cell in cells:
        others = [c for c in cells
                  if c is not cell and c["size"] == cell["size"] and c["system"] == cell["system"]]
        same = cell["artifacts"]["adapter"] == others[0]["artifacts"]["adapter"]
        assert same == (cell["system"] == "sft")  # SFT shared across contents, LaFFi never
    assert [c["content"] for c in cells if c["same_adapters_as"]] == ["verdict+explanation+answer"] * 2
    # a shared SFT adapter gives the shared cells identical numbers
    sft = {(c["size"], c["content"]): c for c in cells if c["system"] == "sft"}
    assert sft[4, "verdict"]["per_seed"] == sft[4, "verdict+explanation+answer"]["per_seed"]
    for cell in cells:
        for metric in ("exact", "f1"):
            low, high = cell[f"{metric}_ci95"]
            assert low <= cell[metric] <= high
            assert cell[metric] == pytest.approx(sum(s[metric] for s in cell["per_seed"]) / 2, abs=0.01)
    assert len(summary["differences"]) == 4
    assert (root / "ablation.md").read_text().count("\n| ") >= 8 and (root / "report.html").exists()


def test_the_sets_follow_the_grid(grid_run):
    root, config, summary, _ = grid_run
    feedback = {f.id: f for f in read_records(root / "feedback.reference.jsonl", Feedback)}
    for seed in (0, 1):
        verdict = read_records(root / "sets" / f"reference.verdict.h0.n4.s{seed}" / "sets" / "laffi.jsonl",
                               TrainingExample)
        full = read_records(root / "sets" / f"reference.verdict+explanation+answer.h0.n4.s{seed}" / "sets"
                            / "laffi.jsonl", TrainingExample)
        assert len(verdict) == 4 and [e.id for e in verdict] == [e.id for e in full]
        for short, long in zip(verdict, full):
            note = feedback[short.id]
            assert short.completion[0]["content"] == note.parts["verdict"] in VERDICTS[note.verdict]
            assert long.completion[0]["content"] == note.text and short.prompt == long.prompt
    drawn = [[e.id for e in read_records(root / "sets" / f"reference.verdict.h0.n4.s{s}" / "sets" / "sft.jsonl",
                                         TrainingExample)] for s in (0, 1)]
    assert drawn[0] != drawn[1]  # the seed draws the questions


def test_a_rerun_trains_nothing_and_reports_the_same(grid_run, capsys):
    root, config, summary, _ = grid_run
    again = tmp = root.parent / "again"
    shutil.copytree(root, tmp, symlinks=True)
    assert main(["ablate", str(_write(tmp / "grid.yaml", config)), "--out", str(again)]) == 0
    rerun = json.loads((again / "ablation.json").read_text())
    assert not any(j["trained_this_run"] for j in rerun["jobs"])
    assert rerun["cells"] == summary["cells"] and rerun["differences"] == summary["differences"]
    assert "| laffi |" in capsys.readouterr().out


def _write(path, config):
    import dataclasses

    import yaml

    values = dataclasses.asdict(config)
    values["annotators"] = {}  # the reference annotator is implied
    path.write_text("# laffi ablate grid.yaml\n" + yaml.safe_dump(values), encoding="utf-8")
    return path


def test_human_share_axis_uses_the_hybrid_build(grid_run):
    root, config, _, _ = grid_run
    human_root = root.parent / "human"
    shutil.copytree(root, human_root, symlinks=True)
    grid = {"system": ["laffi"], "size": [4], "seeds": [0], "human_ratio": [0.0, 0.5]}
    human_config = ablate_config_from({"run": tiny_run(config.run.model.name), "grid": grid})
    with pytest.raises(FileNotFoundError, match="grid.human_ratio: .*feedback.human.jsonl is missing"):
        ablate(human_config, human_root)
    answers = read_records(human_root / "feedback.reference.jsonl", Feedback)
    write_records(human_root / "feedback.human.jsonl",
                  [Feedback(a.id, a.answer, "incorrect", f"Person {i} says no.", "human", "ann") for i, a in
                   enumerate(answers[:3])])
    summary = ablate(human_config, human_root)
    assert [c["human_ratio"] for c in summary["cells"]] == [0.0, 0.5]
    meta = json.loads((human_root / "sets" / "reference.verdict+explanation+answer.h0.5.n4.s0" / "sets"
                       / "laffi.meta.json").read_text())
    assert meta["size"] == 4 and meta["human"] == 2 and meta["ai"] == 2
    # only the new cell trained: the h0 set is the grid's, already trained under the same settings
    assert [j["trained_this_run"] for j in summary["jobs"]] == [False, True]
    assert "human_feedback" in summary["cells"][1]["artifacts"]


def test_a_job_is_a_run_directory_that_finds_the_shared_split_and_its_set(grid_run, monkeypatch):
    root, _, summary, _ = grid_run
    assert not any(p.is_symlink() for p in root.rglob("*"))  # no links, and no copied sets:
    assert not any((root / job["dir"] / "sets").exists() for job in summary["jobs"])
    for job in summary["jobs"]:
        layout = RunLayout.of(root / job["dir"])
        assert layout.data == root / job["dir"] / ".." / ".." / "data" and layout.eval_examples.exists()
        assert layout.training_set(job["system"]).exists()  # its variant's, where the ablation built it
    monkeypatch.chdir(root / summary["jobs"][0]["dir"])  # a relative path, as `laffi attention .` gives
    here = RunLayout.of(".")
    assert here.train_examples.resolve() == (root / "data" / "train.jsonl").resolve()
    assert here.training_set(summary["jobs"][0]["system"]).exists()


def test_attention_compares_the_base_model_with_an_adapter(grid_run, capsys):
    root, _, summary, _ = grid_run
    job = root / next(j["dir"] for j in summary["jobs"] if j["system"] == "laffi")
    assert main(["attention", str(job), "--limit", "2", "--window", "4"]) == 0
    out = job / "attention" / "laffi"
    results = json.loads((out / "attention.json").read_text())
    assert len(results["prompts"]) == 2 and results["window"] == 4
    for model in ("base", "laffi"):
        for metric in ("entropy", "distance", "local_share", "gold_mass"):
            values = results[model][metric]
            assert len(values) == 2 and len(values[0]) == 4  # the tiny model: 2 layers x 4 heads
    assert results["base"]["entropy"] != results["laffi"]["entropy"]  # the adapter changed the attention
    assert all(0 <= v <= 1 + 1e-9 for row in results["base"]["gold_mass"] for v in row)
    assert {p.name for p in out.glob("*.png")} == {"layers.png", "heatmap-entropy.png", "heatmap-distance.png",
                                                    "heatmap-local_share.png", "heatmap-gold_mass.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out.glob("*.png"))


def test_job_keys_hold_only_the_options_that_differ_from_defaults():
    # so an option a later version adds, at its default, leaves the jobs of an existing ablation alone
    assert non_default(ModelConfig()) == {}
    assert non_default(TrainConfig(steps=4, seed=2)) == {"steps": 4, "seed": 2}


def test_job_keys_are_those_of_earlier_versions(tmp_path):
    # the key an earlier laffi (60a0ee5) gave these inputs: existing ablations keep their trained jobs
    variant = RunLayout(tmp_path)
    variant.training_set("sft").parent.mkdir(parents=True)
    variant.training_set("sft").write_text('{"id": "q1", "prompt": [], "completion": []}\n')
    config = ablate_config_from({"run": {"model": {"name": "some/model"}, "train": {"steps": 8}},
                                 "grid": {"system": ["sft"], "size": [4], "seeds": [1]}})
    assert job_for(config, "sft", variant, 1).key == "d37df2d66aba"


def test_any_system_with_a_train_recipe_is_a_grid_value(tiny_model_dir, tmp_path):
    config = ablate_config_from({"run": tiny_run(tiny_model_dir),
                                 "grid": {"system": ["sft", "laffi", "laffi-refine-mix"], "size": [8], "seeds": [0]}})
    summary = ablate(config, tmp_path / "grid")
    assert [d["system"] for d in summary["differences"]] == ["laffi", "laffi-refine-mix"]
    cell = next(c for c in summary["cells"] if c["system"] == "laffi-refine-mix")
    mix = tmp_path / "grid" / cell["artifacts"]["set"][0]
    meta = json.loads(mix.with_name("laffi-refine-mix.meta.json").read_text())
    assert meta["examples"] == {"refine": 4, "sft": 4} and len(read_records(mix, TrainingExample)) == 8
    assert "| laffi-refine-mix |" in (tmp_path / "grid" / "ablation.md").read_text()
    with pytest.raises(Exception, match="sft-reviewed has no train recipe"):
        ablate_config_from({"grid": {"system": ["sft", "sft-reviewed"]}})
