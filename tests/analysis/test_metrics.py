"""SQuAD metrics on hand-computed cases; the arithmetic is in the comments."""

import json

import pytest

from laffi.analysis.bootstrap import (article_interval, bootstrap_interval, paired_bootstrap_difference,
                                     paired_differences_in_points)
from laffi.analysis.metrics import (
    exact_match,
    normalize_answer,
    score_example,
    score_official,
    summarize,
    token_f1,
)
from laffi.records import QAExample


def qa(id: str, answers: list[str]) -> QAExample:
    return QAExample(id=id, title="t", context="c", question="q?", answers=answers, is_impossible=not answers)


# --- normalisation -----------------------------------------------------------------------------


def test_normalize_lowercases_strips_punctuation_articles_and_whitespace():
    # "The Big, Red  CAR!" -> lower -> "the big, red  car!" -> no punctuation -> "the big red  car"
    # -> no articles -> " big red  car" -> single spaces -> "big red car"
    assert normalize_answer("The Big, Red  CAR!") == "big red car"
    assert normalize_answer("  an apple\ta day\n") == "apple day"


def test_normalize_removes_articles_only_as_whole_words():
    assert normalize_answer("Theater Anna") == "theater anna"


def test_normalize_removes_punctuation_before_articles():
    # Official order: "the's" -> "thes" (not an article, kept); articles first would leave "s".
    assert normalize_answer("the's") == "thes"
    # "a.m." -> "am", not an article either.
    assert normalize_answer("a.m.") == "am"


# --- exact match and F1 ------------------------------------------------------------------------


def test_exact_match_is_max_over_golds():
    golds = ["Broncos", "denver broncos!", "Carolina"]
    assert exact_match("The Denver Broncos", golds) == 1.0  # equals the 2nd gold once normalised
    assert exact_match("Denver Broncos team", golds) == 0.0


def test_f1_partial_overlap():
    # pred "the big red car" -> [big, red, car] (3); gold "red car park entrance" -> 4 tokens.
    # common {red, car} = 2; precision 2/3, recall 2/4; F1 = 2*(2/3)*(1/2) / (2/3 + 1/2) = 4/7
    assert token_f1("the big red car", ["red car park entrance"]) == pytest.approx(4 / 7)
    assert exact_match("the big red car", ["red car park entrance"]) == 0.0


def test_f1_is_max_over_golds():
    # vs "big red car park": common 3 of pred 3, gold 4 -> P 1, R 3/4, F1 = 2*(3/4)/(7/4) = 6/7 > 4/7
    assert token_f1("the big red car", ["red car park entrance", "big red car park"]) == pytest.approx(6 / 7)


def test_f1_counts_repeated_tokens_once_per_match():
    # pred [car, car, car] vs gold [car]: common 1; P 1/3, R 1; F1 = 2*(1/3)/(4/3) = 1/2
    assert token_f1("car car car", ["car"]) == pytest.approx(0.5)


def test_no_overlap_scores_zero():
    assert token_f1("blue", ["red car"]) == 0.0


def test_golds_that_normalise_to_nothing_are_ignored():
    # "the" normalises to "", so the only gold is "cat" and an empty prediction is wrong.
    assert exact_match("", ["the", "cat"]) == 0.0
    assert token_f1("", ["the", "cat"]) == 0.0


def test_unanswerable_only_empty_prediction_is_right():
    assert exact_match("", []) == 1.0 and token_f1("", []) == 1.0
    assert exact_match("the", []) == 1.0 and token_f1("the", []) == 1.0  # "the" normalises to ""
    assert exact_match("Paris", []) == 0.0 and token_f1("Paris", []) == 0.0


def test_empty_prediction_on_answerable_question_scores_zero():
    assert exact_match("", ["Paris"]) == 0.0 and token_f1("", ["Paris"]) == 0.0


def test_score_example():
    answerable = qa("a", ["Paris", "the city of Paris"])
    assert score_example(answerable, "City of Paris.") == (1.0, 1.0)
    # pred [paris, france] vs gold [paris]: P 1/2, R 1, F1 = 2*(1/2)/(3/2) = 2/3
    exact, f1 = score_example(answerable, "Paris, France")
    assert exact == 0.0 and f1 == pytest.approx(2 / 3)
    impossible = qa("n", [])
    assert score_example(impossible, "") == (1.0, 1.0)
    assert score_example(impossible, "Paris") == (0.0, 0.0)


# --- summarize ---------------------------------------------------------------------------------


def test_summarize_mixed_v2_set():
    examples = [qa("a1", ["x"]), qa("a2", ["y"]), qa("a3", ["z"]), qa("n1", [])]
    exact = [1.0, 0.0, 1.0, 0.0]
    f1 = [1.0, 0.5, 1.0, 0.0]
    out = summarize(examples, exact, f1)
    assert list(out) == [
        "exact", "f1", "total",
        "HasAns_exact", "HasAns_f1", "HasAns_total",
        "NoAns_exact", "NoAns_f1", "NoAns_total",
    ]  # fmt: skip
    assert out["exact"] == pytest.approx(50.0)  # 100 * 2/4
    assert out["f1"] == pytest.approx(62.5)  # 100 * 2.5/4
    assert out["total"] == 4
    assert out["HasAns_exact"] == pytest.approx(200 / 3)  # 100 * 2/3
    assert out["HasAns_f1"] == pytest.approx(250 / 3)  # 100 * 2.5/3
    assert out["HasAns_total"] == 3
    assert (out["NoAns_exact"], out["NoAns_f1"], out["NoAns_total"]) == (0.0, 0.0, 1)


def test_summarize_v1_set_has_no_noans_keys():
    examples = [qa("a1", ["x"]), qa("a2", ["y"])]
    out = summarize(examples, [1.0, 0.0], [1.0, 0.25])
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]
    assert out["exact"] == pytest.approx(50.0)  # 100 * 1/2
    assert out["f1"] == pytest.approx(62.5)  # 100 * 1.25/2
    assert out["HasAns_f1"] == pytest.approx(62.5)


def test_summarize_all_unanswerable_has_no_hasans_keys():
    out = summarize([qa("n1", []), qa("n2", [])], [1.0, 0.0], [1.0, 0.0])
    assert list(out) == ["exact", "f1", "total", "NoAns_exact", "NoAns_f1", "NoAns_total"]


def test_summarize_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one exact and one f1"):
        summarize([qa("a1", ["x"])], [1.0, 0.0], [1.0])


# --- score_official ----------------------------------------------------------------------------


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def squad(version, qas):
    return {"version": version, "data": [{"title": "T", "paragraphs": [{"context": "ctx", "qas": qas}]}]}


def question(id, answers, **extra):
    return {"id": id, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in answers], **extra}


def test_score_official_v11_with_missing_prediction(tmp_path, capsys):
    data = write_json(tmp_path / "dev-v1.1.json", squad("1.1", [
        question("q1", ["Denver Broncos", "Denver Broncos", "Broncos"]),
        question("q2", ["Santa Clara, California", "Levi's Stadium"]),
        question("q3", ["gold"]),
    ]))  # fmt: skip
    preds = write_json(tmp_path / "predictions.json", {
        "q1": "the Denver Broncos",  # EM 1, F1 1
        # [levis, stadium, in, santa, clara] (5) vs [santa, clara, california]: common 2,
        #   P 2/5, R 2/3, F1 = (8/15)/(16/15) = 1/2;
        # vs [levis, stadium]: common 2, P 2/5, R 1, F1 = (4/5)/(7/5) = 4/7  -> max 4/7, EM 0
        "q2": "Levi's Stadium in Santa Clara",
    })  # fmt: skip
    out = score_official(data, preds)
    assert "Missing prediction for q3" in capsys.readouterr().err
    assert list(out) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]
    assert out["total"] == 3  # q3 is counted, with 0
    assert out["exact"] == pytest.approx(100 / 3)  # 100 * (1 + 0 + 0)/3
    assert out["f1"] == pytest.approx(100 * (1 + 4 / 7) / 3)  # = 1100/21
    assert out["HasAns_f1"] == pytest.approx(out["f1"])


@pytest.fixture
def v2_files(tmp_path):
    data = write_json(tmp_path / "dev-v2.0.json", squad("v2.0", [
        question("q1", ["Normans"]),
        question("q2", ["10th century", "in the 10th century"]),
        question("q3", [], is_impossible=True, plausible_answers=[{"text": "Rollo", "answer_start": 0}]),
        question("q4", [], is_impossible=True),
    ]))  # fmt: skip
    preds = write_json(tmp_path / "predictions.json", {
        "q1": "Normans",  # 1 / 1
        # [10th, and, 11th, centuries] vs [10th, century]: common 1, P 1/4, R 1/2, F1 1/3;
        # vs [in, 10th, century]: P 1/4, R 1/3, F1 = (1/6)/(7/12) = 2/7  -> F1 1/3, EM 0
        "q2": "10th and 11th centuries",
        "q3": "",  # right abstention: 1 / 1
        "q4": "France",  # answered an unanswerable question: 0 / 0
    })  # fmt: skip
    na_probs = write_json(tmp_path / "na_prob.json", {"q1": 0.1, "q2": 0.6, "q3": 0.9, "q4": 0.8})
    return data, preds, na_probs


def test_score_official_v20(v2_files):
    data, preds, _ = v2_files
    out = score_official(data, preds)
    assert list(out) == [
        "exact", "f1", "total",
        "HasAns_exact", "HasAns_f1", "HasAns_total",
        "NoAns_exact", "NoAns_f1", "NoAns_total",
    ]  # fmt: skip
    assert out["exact"] == pytest.approx(50.0)  # 100 * (1+0+1+0)/4
    assert out["f1"] == pytest.approx(100 * 7 / 12)  # 100 * (1 + 1/3 + 1 + 0)/4
    assert out["HasAns_exact"] == pytest.approx(50.0)  # 100 * 1/2
    assert out["HasAns_f1"] == pytest.approx(200 / 3)  # 100 * (4/3)/2
    assert (out["NoAns_exact"], out["NoAns_f1"]) == (pytest.approx(50.0), pytest.approx(50.0))
    assert (out["total"], out["HasAns_total"], out["NoAns_total"]) == (4, 2, 2)


def test_score_official_na_prob_threshold_and_best_thresh(v2_files):
    data, preds, na_probs = v2_files
    # At the default threshold 1.0 no probability exceeds it: same scores as without the file.
    plain = score_official(data, preds, na_probs)
    assert plain["exact"] == pytest.approx(50.0)
    # Threshold 0.5: q2, q3, q4 abstain -> q2 0/0, q3 1/1, q4 1/1 (was 0/0); q1 stays 1/1.
    out = score_official(data, preds, na_probs, na_prob_thresh=0.5)
    assert out["exact"] == pytest.approx(75.0) and out["f1"] == pytest.approx(75.0)  # 100 * 3/4
    assert out["HasAns_exact"] == pytest.approx(50.0) and out["HasAns_f1"] == pytest.approx(50.0)
    assert out["NoAns_exact"] == pytest.approx(100.0) and out["NoAns_f1"] == pytest.approx(100.0)
    # Best threshold: start at 2 (both unanswerable right when abstaining everywhere), answer in
    # rising na_prob order q1 (0.1), q2 (0.6), q4 (0.8), q3 (0.9):
    #   exact: +1 -> 3 (best, 0.1), +0 -> 3, -1 ("France") -> 2, +0 -> 2   => 100*3/4 = 75 at 0.1
    #   f1:    +1 -> 3 (0.1), +1/3 -> 10/3 (best, 0.6), -1 -> 7/3, +0     => 100*(10/3)/4 at 0.6
    assert list(out)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]
    assert out["best_exact"] == pytest.approx(75.0) and out["best_exact_thresh"] == 0.1
    assert out["best_f1"] == pytest.approx(250 / 3) and out["best_f1_thresh"] == 0.6
    assert "best_exact" not in score_official(data, preds)


def test_score_official_abstains_only_strictly_above_threshold(v2_files):
    data, preds, na_probs = v2_files
    # Threshold 0.6 = q2's probability: q2 still answers (F1 1/3); q3, q4 abstain (1/1 each).
    out = score_official(data, preds, na_probs, na_prob_thresh=0.6)
    assert out["exact"] == pytest.approx(75.0)  # 100 * (1+0+1+1)/4
    assert out["f1"] == pytest.approx(250 / 3)  # 100 * (1 + 1/3 + 1 + 1)/4


def test_score_official_malformed_prediction_file_names_it(tmp_path, v2_files):
    data, _, _ = v2_files
    listed = write_json(tmp_path / "preds_list.json", ["Normans"])
    with pytest.raises(ValueError, match=r"preds_list\.json: expected a JSON object \{question id: answer text\}"):
        score_official(data, listed)
    numbers = write_json(tmp_path / "preds_numbers.json", {"q1": 3})
    with pytest.raises(ValueError, match=r"preds_numbers\.json: expected a JSON object"):
        score_official(data, numbers)
    broken = tmp_path / "preds_broken.json"
    broken.write_text('{"q1": "Normans"', encoding="utf-8")
    with pytest.raises(ValueError, match=r"preds_broken\.json: not valid JSON"):
        score_official(data, broken)


def test_score_official_malformed_data_file_names_it(tmp_path, v2_files):
    _, preds, _ = v2_files
    no_data = write_json(tmp_path / "flat.json", [{"id": "q1"}])
    with pytest.raises(ValueError, match=r"flat\.json: top level: expected a JSON object"):
        score_official(no_data, preds)
    bad_answers = write_json(tmp_path / "bad.json", squad("v2.0", [{"id": "q1", "answers": "Normans"}]))
    with pytest.raises(ValueError, match=r"bad\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id 'q1'\): 'answers' must be a list"):
        score_official(bad_answers, preds)


def test_score_official_na_prob_file_must_cover_predictions(tmp_path, v2_files):
    data, preds, _ = v2_files
    partial = write_json(tmp_path / "na_partial.json", {"q1": 0.1})
    with pytest.raises(ValueError, match=r"na_partial\.json: no probability for 3 question"):
        score_official(data, preds, partial)


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_interval_contains_mean_and_is_seeded():
    # Distinct values, so resampled means do not fall on a coarse grid that hides the seed.
    values = [0.1, 0.9, 0.35, 0.7, 0.55, 0.2, 1.0, 0.0, 0.8, 0.4]  # sum 5.0, mean 0.5
    low, high = bootstrap_interval(values, samples=2000, seed=3)
    assert 0.0 <= low < 0.5 < high <= 1.0
    assert bootstrap_interval(values, samples=2000, seed=3) == (low, high)
    assert bootstrap_interval(values, samples=2000, seed=4) != (low, high)


def test_bootstrap_interval_is_degenerate_for_constant_values():
    assert bootstrap_interval([0.25] * 50) == (0.25, 0.25)


def test_bootstrap_interval_narrows_with_more_data_at_the_expected_width():
    small = [0.0, 1.0] * 10  # n = 20, mean 0.5
    large = [0.0, 1.0] * 500  # n = 1000, mean 0.5
    small_low, small_high = bootstrap_interval(small)
    large_low, large_high = bootstrap_interval(large)
    assert small_low < 0.5 < small_high and large_low < 0.5 < large_high
    # Standard error of the mean is 0.5/sqrt(n): a 95% interval is about 2 * 1.96 * 0.5/sqrt(n)
    # wide, 0.438 for n = 20 and 0.062 for n = 1000 (means of 20 values lie on a 0.05 grid). A 90%
    # interval would be 2 * 1.645 * 0.0158 = 0.052 wide for n = 1000.
    assert 0.35 < small_high - small_low < 0.55
    assert 0.057 < large_high - large_low < 0.068


def test_bootstrap_interval_confidence_widens_interval():
    values = [0.0, 1.0] * 50
    low90, high90 = bootstrap_interval(values, confidence=0.90)
    low99, high99 = bootstrap_interval(values, confidence=0.99)
    assert low99 < low90 and high90 < high99


def test_bootstrap_interval_rejects_empty_input():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_paired_bootstrap_difference():
    a = [1.0, 1.0, 0.0, 1.0]
    b = [0.0, 1.0, 0.0, 0.0]
    mean, low, high = paired_bootstrap_difference(a, b)
    assert mean == 0.5  # a - b = [1, 0, 0, 1]
    assert 0.0 <= low <= 0.5 <= high <= 1.0 and low < high


def test_paired_bootstrap_resamples_questions_jointly():
    # Scores differ a lot between questions, but a beats b by exactly 0.5 on every question, so
    # resampling pairs gives no spread at all (resampling a and b separately would).
    a = [1.0, 0.5, 1.0, 0.75]
    b = [0.5, 0.0, 0.5, 0.25]
    assert paired_bootstrap_difference(a, b) == (0.5, 0.5, 0.5)


def test_paired_differences_are_the_paired_bootstrap_per_metric_in_points():
    a = {"exact": [1.0, 1.0, 0.0, 1.0], "f1": [[1.0, 0.5, 0.25], [0.5, 0.5, 1.0]]}  # one seed; seeds x questions
    b = {"exact": [0.0, 1.0, 0.0, 0.0], "f1": [[0.5, 0.5, 0.0], [0.5, 0.0, 1.0]]}
    got = paired_differences_in_points(a, b, samples=200, seed=3)
    assert list(got) == ["exact", "f1"]
    for metric in a:
        expected = paired_bootstrap_difference(a[metric], b[metric], samples=200, seed=3)
        assert got[metric] == [round(100 * v, 2) for v in expected]
    with pytest.raises(ValueError, match="b lacks f1"):
        paired_differences_in_points(a, {"exact": b["exact"]})


def test_paired_bootstrap_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="got 2 and 3"):
        paired_bootstrap_difference([1.0, 0.0], [1.0, 0.0, 1.0])


@pytest.mark.parametrize("output, answer", [
    ("The answer is Paris.", "Paris"),
    ("Answer: 1871", "1871"),
    ("It is the Rhine", "the Rhine"),
    ("Answering machines", "Answering machines"),  # a lead-in is a whole word, not a word's start
    ("Answers to prayers\nmore", "Answers to prayers"),
    ("Itis Pass", "Itis Pass"),
])
def test_the_answer_is_the_first_line_without_lead_ins(output, answer):
    from laffi.prompts import extract_answer

    assert extract_answer(output) == answer


@pytest.mark.parametrize("interval", ["questions", "articles"])
def test_over_seeds_an_interval_resamples_the_seeds_too(interval):
    # seed 0 got every question wrong, seed 1 every one right: only the seeds vary, so an interval that
    # averaged the seeds first would be the point 0.5; drawing 2 seeds of 2 gives means 0, 0.5 or 1
    scores = [[0.0] * 6, [1.0] * 6]
    articles = ["a", "a", "b", "b", "c", "c"]
    low, high = (bootstrap_interval(scores, samples=1000, seed=3) if interval == "questions"
                 else article_interval(scores, articles, samples=1000, seed=3))
    assert (low, high) == (0.0, 1.0)
