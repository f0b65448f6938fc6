"""`laffi experiment` end to end on the tiny model: base, SFT and LaFFi over 2 seeds, 2 budgets and a
2-value grid axis; what it made once and shared; resuming after a crash repeats nothing; the choice
of budgets reads dev scores only; a rerun, more budgets, the human-share axis, `laffi attention` on a job.

    python -m pytest tests/experiments/test_experiment.py
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import yaml

import laffi.experiments.experiment as experiment_module
from laffi.annotators.reference import VERDICTS
from laffi.cli import main
from laffi.config import AnnotateConfig, ConfigError, ModelConfig, TrainConfig, load_config, non_default
from laffi.experiments.experiment import (SECONDS_PER_QUESTION, SECONDS_PER_STEP, describe_plan, estimate, experiment,
                                          job_for)
from laffi.experiments.grid import experiment_config_from
from laffi.layout import ExperimentLayout, RunLayout, adapter_finished, sidecar_config
from laffi.models import ADAPTER_ANSWERING
from laffi.records import Answer, Feedback, Prediction, QAExample, TrainingExample, TrainLogEntry, read_records, write_records
from laffi.stages.rounds import RoundFeedback, answer_again
from laffi.systems import load_system


def tiny_run(model_dir) -> dict:
    # bf16, as model.dtype=auto is on a CPU with bf16 units: adapters stay beside the weights (fp32 merges them)
    return {"model": {"name": str(model_dir), "threads": 2, "dtype": "bfloat16"},
            "data": {"eval_size": 6, "dev_size": 5, "train_size": 8, "num_shots": 1},
            "generate": {"max_new_tokens": 3, "batch_size": 8},
            "train": {"warmup_steps": 0, "batch_size": 2, "max_seq_len": 192, "checkpoint_every": 1},
            "eval": {"bootstrap_samples": 200}}


PLAN = {"systems": ["base", "sft", "laffi"], "seeds": [0, 1], "budgets": [1, 2],
        "grid": {"content": ["verdict", "verdict+explanation+answer"]}}


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def experiment_run(tiny_model_dir, tmp_path_factory):
    """The experiment, run once; a crash in the third job's dev scoring, then the rerun that finishes it."""
    root = tmp_path_factory.mktemp("experiment") / "grid"
    config = experiment_config_from({"run": tiny_run(tiny_model_dir), **PLAN})
    calls = {"train": [], "evaluate": [], "generate": 0}
    real_train, real_evaluate, real_generate = (experiment_module.train_system, experiment_module.evaluate_system,
                                                experiment_module.generate)

    def train(layout, system, *args, **kwargs):
        if not adapter_finished(layout.adapter(system.name)):  # else it returns at once
            calls["train"].append(str(layout.root))
        return real_train(layout, system, *args, **kwargs)

    def evaluate(layout, system, *args, **kwargs):
        calls["evaluate"].append((str(layout.root), args[-1].split))
        if len(calls["evaluate"]) == 3 and "crash" not in calls:  # job 1, job 2, then job 3 dies
            calls["crash"] = str(layout.root)
            raise Crash("killed during an evaluation")
        return real_evaluate(layout, system, *args, **kwargs)

    def generate(*args, **kwargs):
        calls["generate"] += 1
        return real_generate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment_module, "train_system", train)
        patch.setattr(experiment_module, "evaluate_system", evaluate)
        patch.setattr(experiment_module, "generate", generate)
        with pytest.raises(Crash):
            experiment(config, root)
        summary = experiment(config, root)
    return root, config, summary, calls


def test_every_system_is_trained_at_every_budget_and_seed_once(experiment_run):
    root, config, summary, calls = experiment_run
    cells = summary["cells"]
    # 2 contents x 2 trained systems, each at its chosen budget over both seeds
    assert len(cells) == 4 and all(c["seeds"] == [0, 1] and c["questions"] == 6 for c in cells)
    assert {c["budget"] for c in cells} <= {1, 2} and all(c["budgets"] == [1, 2] for c in cells)
    # 2 budgets x 2 seeds x (2 LaFFi contents + 1 SFT set, which the content cannot change) = 12 trainings
    jobs = summary["jobs"]
    assert len(jobs) == 12 and [j["system"] for j in jobs].count("sft") == 4
    # every job trained exactly once over the two invocations: the crashed one was not trained again
    assert sorted(calls["train"]) == sorted(set(calls["train"])) and len(calls["train"]) == 12
    assert calls["crash"] in calls["train"]
    dev_scored = [where for where, split in calls["evaluate"] if split == "dev"]
    assert len(dev_scored) == 13 and len(set(dev_scored)) == 12  # the crashed one again, nothing else
    heldout = [where for where, split in calls["evaluate"] if split == "heldout"]
    assert len(heldout) == len(set(heldout)) == sum(j["heldout"] for j in jobs)  # the chosen jobs only, once
    assert calls["generate"] == 2 and (root / "answers.jsonl").exists()  # called twice, answered once
    for cell in cells:
        assert cell["family"] == cell["system"]  # the packaged sft and laffi are families of their own name
        assert cell["cost"]["train_seconds"] >= 0 and cell["cost"]["train_tokens"] > 0
        assert cell["cost"]["selection_seconds"] >= cell["cost"]["train_seconds"]
        for metric in ("exact", "f1"):
            for interval in (f"{metric}_ci95", f"{metric}_ci95_articles"):
                low, high = cell[interval]
                assert low <= cell[metric] <= high
            assert cell[metric] == pytest.approx(sum(s[metric] for s in cell["per_seed"]) / 2, abs=0.01)
    sft = [c for c in cells if c["system"] == "sft"]
    assert sft[1]["same_adapters_as"] == [cells.index(sft[0])] and sft[0]["per_seed"] == sft[1]["per_seed"]
    assert [d["system"] for d in summary["differences"]] == ["base", "base", "laffi", "laffi"]
    assert summary["base"]["questions"] == 6 and "f1" in summary["base"]["dev"]
    assert len(summary["dev_curves"]) == 4 * 2  # (system, content) x budget
    markdown = (root / "experiment.md").read_text()
    assert "| laffi |" in markdown and "Dev F1 at every budget" in markdown
    assert (root / "summaries" / f"{summary['plan']}.json").exists() and (root / "report.html").exists()
    assert "Dev F1 at each budget" in (root / "report.html").read_text()


def test_each_budget_is_its_own_schedule(experiment_run):
    root, _, summary, _ = experiment_run
    for job in summary["jobs"]:
        config = yaml.safe_load((root / job["dir"] / "adapters" / job["system"] / "config.yaml").read_text())
        assert config["train"]["steps"] == job["steps"] and config["train"]["seed"] == job["seed"]
        log = read_records(root / job["dir"] / "adapters" / job["system"] / "train_log.jsonl", TrainLogEntry)
        assert len(log) == job["steps"]


def test_the_choice_is_the_best_mean_dev_f1_and_never_reads_held_out_files(experiment_run, tmp_path):
    root, config, summary, _ = experiment_run
    for cell in summary["cells"]:
        curve = {p["budget"]: p["f1"] for p in summary["dev_curves"]
                 if p["system"] == cell["system"] and p["content"] == cell["content"]}
        assert curve[cell["budget"]] == max(curve.values())
        assert cell["dev"]["f1"] == curve[cell["budget"]]
    # The tiny model scores 0 everywhere, where ties go to the smallest budget (1). On a copy, the dev scores
    # on disk now prefer budget 2, and the held-out answers of the budget-1 trainings, scored before, are made
    # perfect: the choice follows dev alone.
    assert all(c["budget"] == 1 for c in summary["cells"])
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)

    def rescore(job: dict, split: str, exact: float, f1: float) -> None:
        """Its answers' scores on disk, and its metrics (the choice reads dev's; the summary the predictions)."""
        where = RunLayout(copy / job["dir"])
        predictions = where.predictions(job["system"], split)
        write_records(predictions, [dataclasses.replace(p, exact=exact, f1=f1)
                                    for p in read_records(predictions, Prediction)])
        metrics = json.loads(where.metrics(job["system"], split).read_text())
        where.metrics(job["system"], split).write_text(json.dumps({**metrics, "exact": 100 * exact, "f1": 100 * f1}))

    for job in summary["jobs"]:
        rescore(job, "dev", 0.0, 0.8 if job["steps"] == 2 else 0.2)
        if job["heldout"]:
            rescore(job, "heldout", 1.0, 1.0)
    again = experiment(config, copy)
    assert all(c["budget"] == 2 and c["dev"]["f1"] == 80.0 for c in again["cells"])
    assert len(again["reselected"]) == len(again["cells"])  # each choice changed since the held-out scoring
    assert all(c["f1"] == 0 for c in again["cells"])  # the budget-2 trainings' own held-out answers
    # the held-out scores are the chosen trainings' files: rewritten on disk, the scores follow, the choice stays
    for job in again["jobs"]:
        if job["heldout"]:
            rescore(job, "heldout", 0.0, 0.5)
    final = experiment(config, copy)
    assert all(c["budget"] == 2 and c["f1"] == 50.0 and c["exact"] == 0 for c in final["cells"])


def test_the_sets_follow_the_grid(experiment_run):
    root, _, _, _ = experiment_run
    feedback = {f.id: f for f in read_records(root / "feedback.reference.jsonl", Feedback)}
    verdict = read_records(root / "sets" / "reference.verdict.h0.nall" / "sets" / "laffi.jsonl", TrainingExample)
    full = read_records(root / "sets" / "reference.verdict+explanation+answer.h0.nall" / "sets" / "laffi.jsonl",
                        TrainingExample)
    assert len(verdict) == 8 and [e.id for e in verdict] == [e.id for e in full]
    for short, long in zip(verdict, full):
        note = feedback[short.id]
        assert short.completion[0]["content"] == note.parts["verdict"] in VERDICTS[note.verdict]
        assert long.completion[0]["content"] == note.text and short.prompt == long.prompt


def test_a_rerun_trains_nothing_and_reports_the_same(experiment_run, capsys):
    root, config, summary, _ = experiment_run
    again = root.parent / "again"
    shutil.copytree(root, again)
    assert main(["experiment", str(_write(again / "plan.yaml", config)), "--out", str(again)]) == 0
    rerun = json.loads((again / "experiment.json").read_text())
    assert not any(j["trained_this_run"] for j in rerun["jobs"])
    assert rerun["cells"] == summary["cells"] and rerun["differences"] == summary["differences"]
    assert "| laffi |" in capsys.readouterr().out
    assert main(["experiment", str(again / "plan.yaml"), "--out", str(again), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "at most 16 trainings" in out and "measured here" in out and "estimate:" in out


def test_a_plan_s_time_is_a_range_until_this_directory_has_trained_its_systems(experiment_run, tmp_path):
    root, config, _, _ = experiment_run
    fresh = estimate(config, ExperimentLayout(tmp_path / "fresh"))
    assert fresh["measured_here"] == [] and fresh["seconds_per_step"] == {"sft": [1.9, 6.9], "laffi": [1.9, 6.9]}
    steps, answers = sum(fresh["steps_by_system"].values()), fresh["answers"]
    assert fresh["estimate_minutes"] == [pytest.approx((steps * SECONDS_PER_STEP[end]
                                                        + answers * SECONDS_PER_QUESTION[end]) / 60, abs=0.051)
                                         for end in (0, 1)]
    assert f"sft {fresh['steps_by_system']['sft']} (1.9-6.9 s/step, assumed)" in describe_plan(fresh)

    done = estimate(config, ExperimentLayout(root))  # the trainings that ran through in one process count
    assert done["measured_here"] and set(done["measured_here"]) <= {"sft", "laffi"}
    for name in done["measured_here"]:
        low, high = done["seconds_per_step"][name]
        assert low == high > 0
        assert f"{name} {done['steps_by_system'][name]} ({low} s/step, measured here)" in describe_plan(done)
    low, high = done["estimate_minutes"]
    assert low < high  # the answers' time stays assumed
    # a screen answers no held-out question; K answers per training question are K times the train answers
    data, runs = config.run.data, done["cells"] * len(config.trained()) * len(config.seeds) + 1  # chosen ones, base
    assert estimate(config, ExperimentLayout(root), dev_only=True)["answers"] == done["answers"] - runs * data.eval_size
    four = dataclasses.replace(config, run=dataclasses.replace(
        config.run, generate=dataclasses.replace(config.run.generate, samples=4)))
    pool = data.train_size or len(read_records(ExperimentLayout(root).run.train_examples, QAExample))
    assert estimate(four, ExperimentLayout(root))["answers"] == done["answers"] + 3 * pool


def _write(path, config):
    values = dataclasses.asdict(config)
    values["annotators"] = {}  # the reference annotator is implied
    path.write_text("# laffi experiment plan.yaml\n" + yaml.safe_dump(values), encoding="utf-8")
    return path


def test_another_choice_scores_its_held_out_set_and_says_so(experiment_run, tmp_path, capsys):
    root, config, summary, _ = experiment_run
    copy = tmp_path / "more"
    shutil.copytree(root, copy)
    # force SFT onto a budget it did not have: only it
    narrowed = experiment_config_from({"run": tiny_run(config.run.model.name), **{**PLAN, "budgets": [3]},
                                       "systems": ["sft"]})
    first = experiment(narrowed, copy)
    assert [c["budget"] for c in first["cells"]] == [3, 3]
    assert any("sft" in name for name in first["reselected"])
    assert "differs from an earlier choice" in capsys.readouterr().out
    lines = (copy / "selections.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # the earlier plan's summary is kept beside the new one
    assert (copy / "summaries" / f"{summary['plan']}.json").exists()


def test_human_share_axis_uses_the_hybrid_build(experiment_run, capsys):
    root, config, _, _ = experiment_run
    human_root = root.parent / "human"
    shutil.copytree(root, human_root)
    plan = {"systems": ["sft", "laffi"], "seeds": [0], "budgets": [1], "grid": {"size": [4], "human_ratio": [0.0, 0.5]}}
    human_config = experiment_config_from({"run": tiny_run(config.run.model.name), **plan})
    with pytest.raises(FileNotFoundError, match="grid.human_ratio: .*feedback.human.jsonl is missing"):
        experiment(human_config, human_root)
    answers = read_records(human_root / "feedback.reference.jsonl", Feedback)
    write_records(human_root / "feedback.human.jsonl",
                  [Feedback(a.id, a.answer, "incorrect", f"Person {i} says no.", "human", "ann") for i, a in
                   enumerate(answers[:3])])
    summary = experiment(human_config, human_root)
    assert [(c["system"], c["human_ratio"]) for c in summary["cells"]] == [
        ("sft", 0.0), ("laffi", 0.0), ("sft", 0.5), ("laffi", 0.5)]
    meta = json.loads((human_root / "sets" / "reference.verdict+explanation+answer.h0.5.n4" / "sets"
                       / "laffi.meta.json").read_text())
    assert meta["size"] == 4 and meta["human"] == 2 and meta["ai"] == 2
    assert "human_feedback" in summary["cells"][3]["artifacts"]
    # the people's feedback exported again with more in it: the variant says its sets are drawn again
    from laffi.experiments.experiment import build_variant
    from laffi.layout import ExperimentLayout

    capsys.readouterr()
    build_variant(ExperimentLayout(human_root), human_config, "reference", "verdict+explanation+answer", 0.5, 4)
    assert "changed since its sets were built" not in capsys.readouterr().out  # the same file: nothing to say
    write_records(human_root / "feedback.human.jsonl",
                  [Feedback(a.id, a.answer, "incorrect", f"Person {i} says no.", "human", "ann") for i, a in
                   enumerate(answers[:4])])
    build_variant(ExperimentLayout(human_root), human_config, "reference", "verdict+explanation+answer", 0.5, 4)
    assert "feedback.human.jsonl changed since its sets were built" in capsys.readouterr().out


def test_a_job_is_a_run_directory_that_finds_the_shared_split_and_its_set(experiment_run, monkeypatch):
    root, _, summary, _ = experiment_run
    assert not any(p.is_symlink() for p in root.rglob("*"))  # no links, and no copied sets:
    assert not any((root / job["dir"] / "sets").exists() for job in summary["jobs"])
    for job in summary["jobs"]:
        layout = RunLayout.of(root / job["dir"])
        assert layout.data == root / job["dir"] / ".." / ".." / "data" and layout.eval_examples.exists()
        assert layout.training_set(job["system"]).exists()  # its variant's, where the experiment built it
    monkeypatch.chdir(root / summary["jobs"][0]["dir"])  # a relative path, as `laffi attention .` gives
    here = RunLayout.of(".")
    assert here.train_examples.resolve() == (root / "data" / "train.jsonl").resolve()
    assert here.training_set(summary["jobs"][0]["system"]).exists()


def test_attention_compares_the_base_model_with_an_adapter(experiment_run, capsys):
    root, _, summary, _ = experiment_run
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


def test_job_keys_hold_only_the_options_that_differ_from_defaults():
    # so an option a later version adds, at its default, leaves the jobs of an existing experiment alone
    assert non_default(ModelConfig()) == {}
    assert non_default(TrainConfig(steps=4, seed=2)) == {"steps": 4, "seed": 2}


KEY = "5a9354312205"


def test_job_keys_stay_across_versions_until_the_numerics_change(tmp_path, monkeypatch):
    from laffi.experiments import experiment as engine

    variant = RunLayout(tmp_path)
    variant.training_set("sft").parent.mkdir(parents=True)
    variant.training_set("sft").write_text('{"id": "q1", "prompt": [], "completion": []}\n')
    config = experiment_config_from({"run": {"model": {"name": "some/model"}}, "systems": ["sft"], "seeds": [1],
                                     "budgets": [8]})
    sft = config.trained()[0]
    # the key of NUMERICS 2 (2026-12-05): a later laffi of the same numerics keeps existing directories' jobs
    assert job_for(config, sft, variant, config.train_for({}, 8, 1)).key == KEY
    monkeypatch.setattr(engine, "NUMERICS", engine.NUMERICS + 1)  # a default kernel or value changed
    assert job_for(config, sft, variant, config.train_for({}, 8, 1)).key != KEY


def test_a_system_file_edited_under_its_name_makes_a_new_job(tmp_path):
    variant = RunLayout(tmp_path / "variant")
    for name in ("mine.jsonl", "mine.aux.jsonl"):
        (variant.sets / name).parent.mkdir(parents=True, exist_ok=True)
        (variant.sets / name).write_text('{"id": "q1", "prompt": [], "completion": []}\n')
    keys = []
    for weight in (0.5, 1.0):
        path = tmp_path / "systems" / "mine.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"train: {{sets: {{sft: 1.0}}, aux: laffi, aux_weight: {weight}}}\n")
        config = experiment_config_from({"run": {"model": {"name": "some/model"}}, "systems": ["sft", str(path)],
                                         "seeds": [0], "budgets": [8]})
        keys.append(job_for(config, config.trained()[1], variant, config.train_for({}, 8, 0)).key)
    assert keys[0] != keys[1]


def test_a_train_axis_and_any_system_with_a_train_recipe(tiny_model_dir, tmp_path):
    config = experiment_config_from({"run": tiny_run(tiny_model_dir), "systems": ["sft", "laffi-refine-mix"],
                                     "seeds": [0], "budgets": [1], "grid": {"train": {"lr": [1e-4, 1e-3]}}})
    summary = experiment(config, tmp_path / "grid")
    assert [(c["system"], c["train.lr"]) for c in summary["cells"]] == [
        ("sft", 1e-4), ("laffi-refine-mix", 1e-4), ("sft", 1e-3), ("laffi-refine-mix", 1e-3)]
    assert [d["system"] for d in summary["differences"]] == ["laffi-refine-mix", "laffi-refine-mix"]
    cell = next(c for c in summary["cells"] if c["system"] == "laffi-refine-mix")
    assert cell["family"] == "laffi"
    mix = tmp_path / "grid" / cell["artifacts"]["set"][0]
    meta = json.loads(mix.with_name("laffi-refine-mix.meta.json").read_text())
    assert meta["examples"] == {"refine": 4, "sft": 4} and len(read_records(mix, TrainingExample)) == 8
    rates = {yaml.safe_load((tmp_path / "grid" / j["dir"] / "config.yaml").read_text())["train"]["lr"]
             for j in summary["jobs"]}
    assert rates == {1e-4, 1e-3}


def test_dev_only_screens_without_a_held_out_score_and_a_full_run_reuses_its_trainings(tiny_model_dir, tmp_path,
                                                                                      capsys):
    screen_root = tmp_path / "screen"
    plan = {"systems": ["base", "sft", "laffi"], "seeds": [0, 1], "budgets": [1, 2]}
    path = screen_root / "plan.yaml"
    screen_root.mkdir()
    path.write_text(yaml.safe_dump({"run": tiny_run(str(tiny_model_dir)), **plan}), encoding="utf-8")
    assert main(["experiment", str(path), "--out", str(screen_root), "--dev-only"]) == 0
    out = capsys.readouterr().out
    assert "--dev-only" in out and "| laffi |" in out
    assert not list(screen_root.rglob("eval/*/predictions.jsonl")), "the held-out set was scored"
    assert not (screen_root / "experiment.json").exists()
    screen = json.loads(next((screen_root / "summaries").glob("*.dev.json")).read_text())
    by_system = {c["system"]: c for c in screen["cells"]}
    sft, laffi = by_system["sft"], by_system["laffi"]
    curve = {(p["system"], p["budget"]): p["per_seed"] for p in screen["dev_curves"]}
    # the chosen budget has the best mean dev F1 of its system; the difference pairs seeds at each one's budget
    for cell in (sft, laffi):
        means = {b: sum(s.values()) / len(s) for (name, b), s in curve.items() if name == cell["system"]}
        assert means[cell["budget"]] == max(means.values())
    expected = [round(laffi["per_seed"][s] - sft["per_seed"][s], 2) for s in laffi["per_seed"]]
    assert laffi["difference"]["per_seed"] == expected and sft["difference"] is None
    assert screen["base"]["system"] == "base"
    # the full run scores the held-out set with the same trainings: it trains nothing more
    assert main(["experiment", str(path), "--out", str(screen_root)]) == 0
    full = json.loads((screen_root / "experiment.json").read_text())
    assert not any(j["trained_this_run"] for j in full["jobs"])
    assert {c["system"]: c["budget"] for c in full["cells"]} == {"sft": sft["budget"], "laffi": laffi["budget"]}


DPO_KEY = "f796442902ab"  # laffi-dpo's key before train.rounds: a recipe at one round keeps its jobs


def test_train_rounds_leaves_the_job_keys_of_one_round_systems_as_they_were(tmp_path):
    variant = RunLayout(tmp_path)
    variant.sets.mkdir(parents=True)
    variant.training_set("laffi-dpo").write_text('{"id": "q1", "prompt": [], "completion": []}\n')
    variant.pair_set("laffi-dpo").write_text(
        '{"id": "q1", "prompt": [], "chosen": [{"role": "assistant", "content": "a"}], '
        '"rejected": [{"role": "assistant", "content": "b"}], "verdict": "incorrect"}\n')
    config = experiment_config_from({"run": {"model": {"name": "some/model"}}, "systems": ["sft", "laffi-dpo"],
                                     "seeds": [1], "budgets": [8]})
    dpo = config.trained()[1]
    judge = RoundFeedback(config.annotate_config("reference"))
    assert job_for(config, dpo, variant, config.train_for({}, 8, 1)).key == DPO_KEY
    assert job_for(config, dpo, variant, config.train_for({}, 8, 1), judge) == \
        job_for(config, dpo, variant, config.train_for({}, 8, 1))  # one round: no annotator in its key or job
    # in rounds, the later rounds' annotator and content are part of what the adapter is made of
    variant.training_set("laffi-dpo-r2").write_bytes(variant.training_set("laffi-dpo").read_bytes())
    variant.pair_set("laffi-dpo-r2").write_bytes(variant.pair_set("laffi-dpo").read_bytes())
    two = load_system("laffi-dpo-r2")
    train = config.train_for({}, 8, 1)
    keys = {job_for(config, two, variant, train, RoundFeedback(AnnotateConfig(seed=seed), content)).key
            for seed in (0, 1) for content in ("verdict", "verdict+explanation+answer")}
    assert len(keys) == 4
    with pytest.raises(ValueError, match="annotator of its cell"):
        job_for(config, two, variant, config.train_for({}, 8, 1))


def test_a_system_in_rounds_trains_every_round_at_its_budget_and_counts_both_in_its_cost(tiny_model_dir, tmp_path):
    config = experiment_config_from({"run": tiny_run(tiny_model_dir), "systems": ["base", "sft", "laffi-dpo-r2"],
                                     "seeds": [0], "budgets": [2]})
    root = tmp_path / "rounds"
    plan = estimate(config, ExperimentLayout(root))
    assert plan["steps_by_system"] == {"sft": 2, "laffi-dpo-r2": 4}  # the budget is the steps of each round
    summary = experiment(config, root)
    job = RunLayout.of(root / next(j["dir"] for j in summary["jobs"] if j["system"] == "laffi-dpo-r2"))
    rounds = json.loads(job.train_summary("laffi-dpo-r2").read_text())["rounds"]
    assert [(r["round"], r["steps"]) for r in rounds] == [(1, 2), (2, 2)]
    assert adapter_finished(job.round_training("laffi-dpo-r2", 1, 2).adapter("laffi-dpo-r2"))
    answers = read_records(job.round("laffi-dpo-r2", 2).answers, Answer)
    assert len(answers) == 8 and len(read_records(job.round("laffi-dpo-r2", 2).feedback, Feedback)) == 8
    assert yaml.safe_load(job.config.read_text())["annotate"]["annotator"] == "reference"  # `laffi train` reads it
    cell = next(c for c in summary["cells"] if c["system"] == "laffi-dpo-r2")
    assert cell["cost"]["train_tokens"] == sum(r["tokens_this_process"] for r in rounds)
    assert cell["cost"]["train_seconds"] == pytest.approx(sum(r["seconds_this_process"] + r["reference_seconds_this_process"] for r in rounds), abs=0.01)
    assert cell["budget"] == 2 and job.predictions("laffi-dpo-r2").exists()  # scored with round 2's adapter

    # round 2's answers, half made with round 1's adapter merged into bf16 weights (laffi before 53396c9): refused
    round2, first = job.round("laffi-dpo-r2", 2), job.round_training("laffi-dpo-r2", 1, 2).adapter("laffi-dpo-r2")
    saved = yaml.safe_load(sidecar_config(round2.answers).read_text())
    assert saved["adapter"]["answering"] == ADAPTER_ANSWERING
    del saved["adapter"]["answering"]
    sidecar_config(round2.answers).write_text(yaml.safe_dump(saved))
    run = load_config(job.config)
    with pytest.raises(ConfigError, match=r"merged into the bf16 weights, as laffi before commit 53396c9"):
        answer_again(job, round2, "laffi-dpo-r2", first, run.model, run.data, run.generate)


def test_a_rerun_leaves_failed_annotations_alone_once_jobs_began_on_their_sets(tiny_model_dir, tmp_path, capsys,
                                                                               monkeypatch):
    import laffi.stages.annotate as annotate_module
    from laffi.annotators.reference import ReferenceAnnotator
    from laffi.records import AnnotationFailure

    class FailsOnce(ReferenceAnnotator):  # the first question's request fails, as a server's 500s can
        def annotate(self, pairs):
            return [AnnotationFailure(r.id, r.answer, self.name, "request", "HTTP 500", 1) if i == 0 else r
                    for i, r in enumerate(super().annotate(pairs))]

    config = experiment_config_from({"run": tiny_run(tiny_model_dir), "systems": ["base", "sft"], "seeds": [0],
                                     "budgets": [1]})
    root = tmp_path / "x"
    with monkeypatch.context() as patch:
        patch.setattr(annotate_module, "make_annotator", lambda config: FailsOnce())
        experiment(config, root, dev_only=True)
    jobs = ExperimentLayout(root).job_dirs()
    finished = [(root / "adapters" / "sft" / "summary.json").read_text() for root in jobs]
    capsys.readouterr()
    # the annotator answers now: asking again would change the sets, and the job would be trained again anew
    experiment(config, root, dev_only=True)
    assert "annotate reference: 1 answers without feedback" in capsys.readouterr().out
    assert ExperimentLayout(root).job_dirs() == jobs
    assert [(root / "adapters" / "sft" / "summary.json").read_text() for root in jobs] == finished
