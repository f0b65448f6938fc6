"""`python -m laffi.experiments.rerank` on a tiny experiment: K answers per dev question from each trained
model, every rule's scores, the oracle bounding them, K=1 making every rule the greedy answer, and a rerun
doing nothing twice.

    python -m pytest tests/experiments/test_rerank.py
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from laffi.config import read_yaml
from laffi.experiments.experiment import experiment
from laffi.experiments.grid import experiment_config_from
from laffi.experiments.jobs import current_jobs, heldout_jobs
from laffi.experiments.rerank import main, openings_for
from laffi.layout import ExperimentLayout, RunLayout, sidecar_config
from laffi.models import ADAPTER_ANSWERING
from laffi.records import Answer, Prediction, read_records, write_json, write_records
from laffi.stages.rerank import METHODS
from laffi.stages.verdicts import LINES, SENTENCES


def tiny_run(model_dir) -> dict:
    # bf16 as on a CPU with bf16 units: the entries then record how the adapter was applied (fp32 merges it)
    return {"model": {"name": str(model_dir), "threads": 2, "dtype": "bfloat16"},
            "data": {"eval_size": 4, "dev_size": 5, "train_size": 8, "num_shots": 1},
            "generate": {"max_new_tokens": 3, "batch_size": 8},
            "train": {"warmup_steps": 0, "batch_size": 2, "max_seq_len": 192}}


@pytest.fixture(scope="module")
def tiny_experiment(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank") / "x"
    config = experiment_config_from({"run": tiny_run(tiny_model_dir), "systems": ["base", "sft", "laffi-verify"],
                                     "seeds": [0], "budgets": [1]})
    experiment(config, root, dev_only=True)
    return root


def test_openings_follow_the_set_a_system_trained_on():
    assert openings_for("laffi-verify") == LINES and openings_for("laffi") == SENTENCES
    assert openings_for("sft") == SENTENCES


def test_every_rule_on_k_answers_and_a_rerun_does_nothing_twice(tiny_experiment, capsys):
    results = main([str(tiny_experiment), "--systems", "laffi-verify,sft", "--candidates", "3"])
    entries = list(results["models"].values())
    assert sorted(e["system"] for e in entries) == ["laffi-verify", "sft"]
    for entry in entries:
        assert set(entry["methods"]) == set(METHODS) and entry["questions"] == 5
        oracle = entry["methods"]["oracle"]["f1"]
        assert all(entry["methods"][m]["f1"] <= oracle for m in METHODS)
        assert 1 <= entry["distinct_per_question"] <= 3
        assert entry["cost"]["answers_decoded_per_question"] == 3
        assert entry["distinct_candidates"] == round(entry["distinct_per_question"] * 5)
        for value in entry["auroc_exact"].values():  # None where every candidate is right, or every one wrong
            assert value is None or 0 <= value <= 1
        assert (entry["auroc_exact"]["verifier"] is None) == (entry["right_candidates"] in (0, entry["distinct_candidates"]))
    job = RunLayout.of(next(p for p in ExperimentLayout(tiny_experiment).job_dirs() if p.name.startswith("laffi-verify")))
    answers = read_records(job.rerank_candidates("laffi-verify", "dev", 3, 0.7), Answer)
    assert sorted((a.id, a.sample) for a in answers) == sorted((q, s) for q in {a.id for a in answers} for s in range(3))
    # the greedy candidate is the answer the dev evaluation gave
    greedy = {a.id: a.prediction for a in answers if a.sample == 0}
    assert greedy == {p.id: p.prediction for p in read_records(job.predictions("laffi-verify", "dev"), Prediction)}
    assert all(e["cell"].startswith("reference.verdict+explanation+answer.h0.nall") for e in entries)
    assert "| laffi-verify | reference.verdict+explanation+answer.h0.nall" in capsys.readouterr().out
    again = main([str(tiny_experiment), "--systems", "laffi-verify,sft", "--candidates", "3"])
    assert again == results

    # an entry answered with the adapter merged into the bf16 weights (before models.ADAPTER_ANSWERING 2): redone,
    # its candidates too (here made wrong on purpose, which a reuse would score; that laffi wrote no sidecar)
    path = ExperimentLayout(tiny_experiment).rerank
    saved = json.loads(path.read_text())
    key = next(k for k, e in saved["models"].items() if e["system"] == "laffi-verify")
    assert saved["models"][key]["answering"] == ADAPTER_ANSWERING
    stale = job.rerank_candidates("laffi-verify", "dev", 3, 0.7)
    assert read_yaml(sidecar_config(stale)) == {"adapter": {"answering": ADAPTER_ANSWERING}}
    for older in ({**saved["models"], key: {k: v for k, v in saved["models"][key].items() if k != "answering"}},
                  {k: e for k, e in saved["models"].items() if k != key}):  # an old entry; none (a crash)
        path.write_text(json.dumps({"models": older}))
        write_records(stale, [replace(a, prediction="zzz") for a in answers])
        sidecar_config(stale).unlink()
        redone = main([str(tiny_experiment), "--systems", "laffi-verify,sft", "--candidates", "3"])
        assert redone["models"][key]["answering"] == ADAPTER_ANSWERING
        assert redone["models"][key]["methods"] == results["models"][key]["methods"]
        assert read_records(stale, Answer) == answers
    # candidates this laffi began (its sidecar says so) are resumed, not answered again
    path.write_text(json.dumps({"models": {k: e for k, e in saved["models"].items() if k != key}}))
    write_records(stale, [replace(a, prediction="zzz") for a in answers])
    resumed = main([str(tiny_experiment), "--systems", "laffi-verify,sft", "--candidates", "3"])
    assert resumed["models"][key]["methods"]["first"]["f1"] == 0 and read_records(stale, Answer)[0].prediction == "zzz"

    # decoding is costed at the rate of every call that decoded: a call resumed after a crash that had decoded
    # 3 of 5 questions (9 answers, in 27 s) decodes 6 answers, and the cost is the rate over all 15
    timing = job.rerank_decoding("laffi-verify", "dev", 3, 0.7)
    first = sorted({a.id for a in answers})[:3]
    path.write_text(json.dumps({"models": {k: e for k, e in saved["models"].items() if k != key}}))
    write_records(stale, [a for a in answers if a.id in first])
    write_json(timing, {"seconds": 27.0, "answers": 9})
    costed = main([str(tiny_experiment), "--systems", "laffi-verify", "--candidates", "3"])["models"][key]["cost"]
    spent = json.loads(timing.read_text())
    assert spent["answers"] == 15 and spent["seconds"] > 27
    assert costed["decode_seconds_per_question"] == round(3 * spent["seconds"] / 15, 3)
    # candidates whose decoding time nobody recorded (an older laffi's): unknown, not 0
    path.write_text(json.dumps({"models": {k: e for k, e in saved["models"].items() if k != key}}))
    timing.unlink()
    capsys.readouterr()
    unknown = main([str(tiny_experiment), "--systems", "laffi-verify", "--candidates", "3"])["models"][key]["cost"]
    assert unknown["decode_seconds_per_question"] is None
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| laffi-verify |")]
    assert row.endswith("| n/a |")


def test_the_held_out_set_is_answered_only_by_trainings_chosen_on_dev(tiny_experiment, capsys):
    results = main([str(tiny_experiment), "--systems", "sft", "--candidates", "2", "--split", "heldout"])
    assert not [e for e in results["models"].values() if e["split"] == "heldout"]  # a dev-only screen chose none
    assert "not scored on the held-out set by `laffi experiment`" in capsys.readouterr().out


def test_with_one_candidate_every_rule_is_the_greedy_answer(tiny_experiment):
    results = main([str(tiny_experiment), "--systems", "laffi-verify", "--candidates", "1"])
    [entry] = [e for e in results["models"].values() if e["k"] == 1]
    assert len({(m["exact"], m["f1"]) for m in entry["methods"].values()}) == 1


def test_steps_and_seeds_pick_the_trainings_that_answer(tiny_experiment, capsys):
    none = main([str(tiny_experiment), "--systems", "sft", "--candidates", "2", "--steps", "7"])  # no such budget
    assert not [e for e in none["models"].values() if e["k"] == 2]
    results = main([str(tiny_experiment), "--systems", "sft", "--candidates", "2", "--steps", "1", "--seeds", "0"])
    assert [e["steps"] for e in results["models"].values() if e["k"] == 2] == [1]
    with pytest.raises(SystemExit):
        main([str(tiny_experiment), "--systems", "sft", "--steps", "one"])
    assert "--steps: comma-separated whole numbers" in capsys.readouterr().err


def test_a_replaced_job_neither_answers_nor_shows_in_the_table(tiny_experiment, capsys):
    # what an older laffi (another key) leaves for the same training: averaging it in would count 2 seeds
    layout = ExperimentLayout(tiny_experiment)
    sft = next(p for p in layout.job_dirs() if p.name.startswith("sft-"))
    replaced = sft.parent / "sft-000000000000"
    shutil.copytree(sft, replaced)
    summary_path = replaced / "adapters" / "sft" / "summary.json"
    summary = json.loads(summary_path.read_text())
    finished = datetime.fromisoformat(summary["finished_at"])
    summary["finished_at"] = (finished - timedelta(hours=1)).isoformat()  # finished an hour before the current one
    summary_path.write_text(json.dumps(summary))
    weights = replaced / "adapters" / "sft" / "adapter_model.safetensors"
    os.utime(weights, (weights.stat().st_mtime + 3600,) * 2)  # a copy that kept no file times: not what decides
    try:
        assert sft in current_jobs(layout) and replaced not in current_jobs(layout)
        del summary["finished_at"]  # as an older laffi wrote it: the weights' file time decides
        summary_path.write_text(json.dumps(summary))
        assert replaced in current_jobs(layout) and sft not in current_jobs(layout)
        os.utime(weights, (weights.stat().st_mtime - 7200,) * 2)
        results = main([str(tiny_experiment), "--systems", "sft", "--candidates", "2"])
        [key] = [k for k, e in results["models"].items() if e["k"] == 2]
        assert key.startswith(f"jobs/{sft.name}/")
        # an entry it left in rerank.json earlier is kept on disk but not averaged into the row
        saved = json.loads(layout.rerank.read_text())
        saved["models"][key.replace(sft.name, replaced.name)] = saved["models"][key]
        layout.rerank.write_text(json.dumps(saved))
        capsys.readouterr()
        main([str(tiny_experiment), "--systems", "sft", "--candidates", "2"])
        [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| sft |") and "| 2 | 1 |" in line]
        assert row.split("|")[6].strip() == "1"  # seeds
    finally:
        shutil.rmtree(replaced)


def test_the_held_out_set_is_answered_by_the_budgets_each_plan_last_chose(tmp_path):
    layout = ExperimentLayout(tmp_path)
    write_json(layout.plan_summary("full", ".json"), {"jobs": [{"dir": "jobs/sft-1", "heldout": True},
                                                              {"dir": "jobs/sft-2", "heldout": False}]})
    write_json(layout.plan_summary("screen", ".dev.json"), {"dev_only": True, "jobs": ["jobs/laffi-3"]})
    assert heldout_jobs(layout) == {tmp_path / "jobs/sft-1"}  # not every job with held-out files on disk
