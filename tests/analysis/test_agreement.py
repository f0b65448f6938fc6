"""Percent agreement and Cohen's kappa on known tables, and how raters' labels are paired.

    python -m pytest tests/analysis/test_agreement.py
"""

import math

import pytest

from laffi.analysis.agreement import cohen_kappa, confusion, percent_agreement, rater_pairs, scores, shared


def test_kappa_matches_the_textbook_two_by_two_table():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert percent_agreement(a, b) == pytest.approx(70.0)
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_on_three_verdicts_is_symmetric_and_bounded():
    a = ["correct", "incorrect", "partially correct", "correct", "incorrect", "correct"]
    b = ["correct", "incorrect", "correct", "correct", "partially correct", "incorrect"]
    # each rater: 3 correct, 2 incorrect, 1 partially correct; they agree on 3 of 6.
    # p_o = 18/36; p_e = (3*3 + 2*2 + 1*1) / 36 = 14/36 -> kappa = (18 - 14) / (36 - 14) = 4/22
    assert cohen_kappa(a, b) == pytest.approx(4 / 22)
    assert cohen_kappa(b, a) == pytest.approx(cohen_kappa(a, b))
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(["x", "y"], ["y", "x"]) == pytest.approx(-1.0)


def test_undefined_and_invalid_inputs():
    assert math.isnan(cohen_kappa(["correct"] * 3, ["correct"] * 3))  # one label throughout: p_e = 1
    assert percent_agreement(["correct"] * 3, ["correct"] * 3) == 100.0
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        percent_agreement([], [])


def test_raters_are_paired_on_the_items_both_judged():
    ann = {"q2": "incorrect", "q1": "correct", "q3": "correct"}
    bob = {"q1": "correct", "q2": "correct", "q4": "incorrect"}
    assert shared(ann, bob) == (["correct", "incorrect"], ["correct", "correct"])  # q1, q2
    groups = {"bob": bob, "ann": ann, "cy": {"q9": "correct"}, "source:human": {"q1": "correct"}}
    pairs = list(rater_pairs(groups, {"source:human": {"ann", "bob"}}))
    # by name; cy shares nothing; a source is not paired with its own annotators
    assert [(a, b) for a, b, _, _ in pairs] == [("ann", "bob")]
    assert pairs[0][2:] == shared(ann, bob)
    assert scores(*pairs[0][2:]) == {"n": 2, "percent": 50.0, "kappa": 0.0}  # p_o 1/2, p_e (1*2 + 0) / 4
    assert confusion(*pairs[0][2:])["incorrect"] == {"correct": 1, "partially correct": 0, "incorrect": 0}


def test_a_person_votes_once_per_answer_in_the_sources_majority():
    from laffi.analysis.agreement import raters
    from laffi.records import Feedback

    def said(person, verdict, sample):
        return Feedback("q1", "Paris", verdict, "x", "human", person, sample=sample)

    # alice judged the same answer text three times (three samples gave it); bob and carol once each
    records = [said("alice", "correct", s) for s in range(3)] + [said("bob", "incorrect", 0),
                                                                  said("carol", "incorrect", 0)]
    groups, pools = raters(records)
    assert groups["source:human"] == {("q1", "Paris"): "incorrect"}  # 2 people of 3, not 3 votes of 5
    assert groups["alice"] == {("q1", "Paris"): "correct"} and pools["source:human"] == {"alice", "bob", "carol"}
