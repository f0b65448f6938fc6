"""`laffi stats`: verdict agreement between annotators and sources on the same answers."""

import json
import math

import pytest

from laffi.cli import main
from laffi.config import DataConfig, save_config
from laffi.layout import RunLayout
from laffi.records import Feedback, write_records


@pytest.fixture(autouse=True)
def run_dir(tmp_path):
    """tmp_path is a run directory: it has what `laffi prepare` writes first."""
    save_config(RunLayout(tmp_path).data_config, {"data": DataConfig()})


def feedback(annotator: str, source: str, verdicts: str, answers: str = "aaaa") -> list[Feedback]:
    names = {"c": "correct", "p": "partially correct", "i": "incorrect"}
    return [Feedback(f"q{k}", answer, names[v], "text", source, annotator)
            for k, (v, answer) in enumerate(zip(verdicts, answers))]


def test_agreement_between_every_two_raters_on_shared_answers(tmp_path, capsys):
    write_records(tmp_path / "feedback.jsonl", feedback("reference", "ai", "ccip"))
    # the LLM judged one answer the reference did not see (q3 has another answer text)
    write_records(tmp_path / "feedback-llm.jsonl", feedback("llm:m:v1", "ai", "ciip", "aaab"))
    write_records(tmp_path / "feedback-human.jsonl",
                  feedback("ann", "human", "ccii") + feedback("bob", "human", "cpip"))
    write_records(tmp_path / "feedback.failed.jsonl", [])  # not feedback: ignored

    assert main(["stats", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "stats.json").read_text())
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}

    ref_llm = pairs[("llm:m:v1", "reference")]
    assert ref_llm["answers"] == 3  # q0..q2: the same answer text
    assert ref_llm["agreement"] == pytest.approx(100 * 2 / 3, abs=0.01)
    # reference c,c,i vs llm c,i,i: p_o = 2/3, p_e = (2*1 + 1*2) / 9 = 4/9, kappa = (2/3 - 4/9) / (5/9) = 0.4
    assert ref_llm["kappa"] == pytest.approx(0.4)
    assert ref_llm["confusion"]["incorrect"]["correct"] == 1  # rows: rater a (llm), columns: rater b

    ann_bob = pairs[("ann", "bob")]  # c,c,i,i vs c,p,i,p: p_o = 1/2, p_e = (2*1 + 2*1) / 16, kappa = 1/3
    assert (ann_bob["answers"], ann_bob["agreement"]) == (4, 50.0) and ann_bob["kappa"] == pytest.approx(1 / 3, abs=1e-4)
    # the human source pools ann and bob; they tie on q1 and q3, which are left out
    assert result["raters"]["source:human"] == {"correct": 1, "incorrect": 1}
    assert pairs[("reference", "source:human")]["answers"] == 2
    assert "source:ai" in result["raters"]  # reference and llm:m:v1
    assert ("reference", "source:ai") not in pairs and ("llm:m:v1", "source:ai") not in pairs  # not with itself
    assert ("ann", "source:human") not in pairs and ("source:ai", "source:human") in pairs
    assert "| llm:m:v1 | reference | 3 | 66.7 | 0.400 |" in printed


def test_kappa_is_reported_as_undefined_when_both_raters_use_one_label(tmp_path, capsys):
    write_records(tmp_path / "feedback.jsonl", feedback("a", "ai", "cc", "xx"))
    write_records(tmp_path / "feedback-b.jsonl", feedback("b", "ai", "cc", "xx"))
    assert main(["stats", str(tmp_path), "--files", "feedback.jsonl", "feedback-b.jsonl"]) == 0
    assert "| a | b | 2 | 100.0 | n/a |" in capsys.readouterr().out
    row = json.loads((tmp_path / "stats.json").read_text())["pairs"][0]
    assert row["kappa"] is None and not math.isnan(row["agreement"])


def test_stats_without_feedback_is_an_error(tmp_path, capsys):
    assert main(["stats", str(tmp_path)]) == 2
    assert "no feedback" in capsys.readouterr().err
