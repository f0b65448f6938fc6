import dataclasses
import re

import pytest
import yaml

from laffi.annotators.reference import DIAGNOSES, OVERLAP_F1, QUOTES, RIGHT_ANSWERS, VERDICTS, ReferenceAnnotator
from laffi.config import ANNOTATORS, ConfigError, load_config
from laffi.layout import RunLayout, sidecar_config
from laffi.records import Answer, QAExample, read_records, write_records
from laffi.stages.annotate import annotate as annotate_stage
from laffi.stages.prepare import prepare

CONTEXT = (
    "The Eiffel Tower was designed by the engineering firm of Gustave Eiffel. "
    "Dr. Smith of the U.S. Embassy said the tower drew 32.5 million visitors in its first year. "
    "It was built for the 1889 World's Fair in Paris."
)
SENTENCES = [
    "The Eiffel Tower was designed by the engineering firm of Gustave Eiffel.",
    "Dr. Smith of the U.S. Embassy said the tower drew 32.5 million visitors in its first year.",
    "It was built for the 1889 World's Fair in Paris.",
]


def example(answers, qid="q1", question="Who designed the Eiffel Tower?", impossible=False, context=CONTEXT):
    return QAExample(qid, "Eiffel Tower", context, question, answers, impossible)


def annotate(ex, prediction, seed=0):
    [feedback] = ReferenceAnnotator(seed).annotate([(ex, Answer(ex.id, prediction, prediction, "test-model"))])
    assert feedback.id == ex.id and feedback.answer == prediction
    assert feedback.source == "ai" and feedback.annotator == "reference"
    return feedback


def uses(text, table):
    """The phrasings of `table` found in the text, with any field value in the {placeholders}."""
    patterns = [re.escape(p).replace(r"\{", "{").replace(r"\}", "}") for p in table]
    return [p for p, pattern in zip(table, patterns) if re.search(re.sub(r"\{\w+\}", ".+?", pattern), text)]


def sentence_count(text):
    unquoted = re.sub(r'"[^"]*"', "Q", text)
    return len(re.split(r"(?<=[.!?Q])\s+(?=[A-Z])", unquoted))


def test_exact_after_normalisation_is_correct():
    fb = annotate(example(["Eiffel Tower"], question="What was designed by Eiffel's firm?"), "The Eiffel Tower.")
    assert fb.verdict == "correct" and fb.corrected_answer is None
    assert fb.text.startswith(VERDICTS["correct"]) and uses(fb.text, DIAGNOSES["correct"])
    assert SENTENCES[0] in fb.text
    assert not uses(fb.text, RIGHT_ANSWERS)


def test_too_long_names_the_extra_words():
    fb = annotate(example(["Gustave Eiffel"]), "Gustave Eiffel in Paris")
    assert fb.verdict == "partially correct"
    assert uses(fb.text, DIAGNOSES["too long"])
    assert '"in Paris"' in fb.text
    assert fb.corrected_answer == "Gustave Eiffel"


def test_incomplete_names_the_missing_words():
    fb = annotate(example(["the engineering firm of Gustave Eiffel"]), "Gustave Eiffel")
    assert fb.verdict == "partially correct"
    assert uses(fb.text, DIAGNOSES["incomplete"])
    assert '"the engineering firm of"' in fb.text


def test_wrong_entity_from_the_passage():
    fb = annotate(example(["Gustave Eiffel"]), "Dr. Smith")
    assert fb.verdict == "incorrect"
    assert uses(fb.text, DIAGNOSES["wrong span"])
    assert not uses(fb.text, DIAGNOSES["unsupported"])


def test_hallucinated_answer_is_not_supported():
    fb = annotate(example(["Gustave Eiffel"]), "Alexandre Martin")
    assert fb.verdict == "incorrect"
    assert uses(fb.text, DIAGNOSES["unsupported"])
    assert '"Alexandre Martin"' in fb.text


def test_partly_hallucinated_answer_quotes_only_the_unsupported_words():
    fb = annotate(example(["1889"], question="When was it built?"), "Gustave Martin")
    assert fb.verdict == "incorrect" and uses(fb.text, DIAGNOSES["unsupported"])
    assert '"Martin"' in fb.text and '"Gustave"' not in fb.text


@pytest.mark.parametrize("prediction", ["", "   "])
def test_empty_answer(prediction):
    fb = annotate(example(["Gustave Eiffel"]), prediction)
    assert fb.verdict == "incorrect"
    assert uses(fb.text, DIAGNOSES["empty"])
    assert fb.corrected_answer == "Gustave Eiffel"


def test_impossible_question():
    ex = example([], question="When was the tower demolished?", impossible=True)
    blank = annotate(ex, "")
    assert blank.verdict == "correct" and blank.corrected_answer is None
    assert uses(blank.text, DIAGNOSES["blank"])
    guess = annotate(ex, "1889")
    assert guess.verdict == "incorrect" and guess.corrected_answer == ""
    assert uses(guess.text, DIAGNOSES["unanswerable"]) and '"1889"' in guess.text


@pytest.mark.parametrize(
    "gold, sentence",
    [("Gustave Eiffel", SENTENCES[0]), ("32.5 million", SENTENCES[1]), ("U.S. Embassy", SENTENCES[1]),
     ("World's Fair", SENTENCES[2])],
)
def test_quotes_the_supporting_sentence(gold, sentence):
    fb = annotate(example([gold]), "something else entirely")
    [quote] = [q for q in SENTENCES if q in fb.text]  # exactly one sentence, whole, not split at "U.S." or "32.5"
    assert quote == sentence
    assert any(q.format(sentence=sentence) in fb.text for q in QUOTES)


def test_answer_across_sentences_quotes_the_shortest_window():
    fb = annotate(example(["Gustave Eiffel. Dr. Smith"]), "nobody")
    assert f'"{SENTENCES[0]} {SENTENCES[1]}"' in fb.text
    assert SENTENCES[2] not in fb.text


def test_quote_prefers_a_whole_word_match():
    context = "The party was held on Monday. Modern art was shown on Tuesday."
    fb = annotate(example(["art"], question="What was shown?", context=context), "music")
    assert "Modern art was shown on Tuesday." in fb.text and "party" not in fb.text


@pytest.mark.parametrize("prediction", ["Gustave Eiffel in Paris", "Eiffel", "Dr. Smith", "Alexandre Martin", ""])
def test_non_correct_feedback_states_the_right_answer(prediction):
    fb = annotate(example(["Gustave Eiffel"]), prediction)
    assert fb.verdict != "correct"
    assert any(r.format(gold="Gustave Eiffel") in fb.text for r in RIGHT_ANSWERS)


def test_majority_gold_is_chosen():
    fb = annotate(example(["Eiffel", "Gustave Eiffel", "the engineering firm", "Gustave Eiffel"]), "Paris")
    assert fb.corrected_answer == "Gustave Eiffel"
    # a tie goes to the answer given first
    assert annotate(example(["1889", "Paris", "Paris", "1889"]), "Eiffel").corrected_answer == "1889"
    # spellings that normalise alike count together, reported as first given
    assert annotate(example(["Paris", "the Eiffel Tower", "Eiffel Tower."]), "x").corrected_answer == "the Eiffel Tower"


def test_feedback_is_short():
    for prediction in ["Gustave Eiffel in Paris", "Eiffel", "Dr. Smith", "Alexandre Martin", "", "Gustave Eiffel"]:
        text = annotate(example(["Gustave Eiffel"]), prediction).text
        assert 2 <= sentence_count(text) <= 4, text


def test_same_seed_and_id_give_the_same_text_in_any_batch_order():
    pairs = [(example(["Gustave Eiffel"], qid=f"q{i}"), Answer(f"q{i}", p, p, "m"))
             for i, p in enumerate(["Gustave Eiffel in Paris", "Eiffel", "Dr. Smith", "Alexandre Martin", ""] * 4)]
    forward = {fb.id: fb.text for fb in ReferenceAnnotator(seed=3).annotate(pairs)}
    backward = {fb.id: fb.text for fb in ReferenceAnnotator(seed=3).annotate(pairs[::-1])}
    one_by_one = {fb.id: fb.text for pair in pairs for fb in ReferenceAnnotator(seed=3).annotate([pair])}
    assert forward == backward == one_by_one


def test_wording_varies_across_items_and_seeds():
    pairs = [(example(["Gustave Eiffel"], qid=f"q{i}"), Answer(f"q{i}", "Dr. Smith", "", "m")) for i in range(30)]
    texts = [fb.text for fb in ReferenceAnnotator(seed=0).annotate(pairs)]
    verdict_sentences = {p for t in texts for p in VERDICTS["incorrect"] if t.startswith(p + " ")}
    assert len(verdict_sentences) > 1
    assert len({tuple(uses(t, DIAGNOSES["wrong span"])) for t in texts}) > 1
    assert len({tuple(uses(t, RIGHT_ANSWERS)) for t in texts}) > 1
    one_item = [annotate(example(["Gustave Eiffel"]), "Dr. Smith", seed=s).text for s in range(8)]
    assert len(set(one_item)) > 1


def test_every_part_has_several_phrasings():
    tables = [*VERDICTS.values(), *DIAGNOSES.values(), QUOTES, RIGHT_ANSWERS]
    assert all(len(set(table)) >= 4 for table in tables)


def test_mismatched_pair_is_refused():
    with pytest.raises(ValueError, match="paired"):
        ReferenceAnnotator().annotate([(example(["Paris"]), Answer("other", "Paris", "Paris", "m"))])


def strict(ex, prediction):
    answer = Answer(ex.id, prediction, prediction, "m")
    [feedback] = ReferenceAnnotator(name="reference-strict").annotate([(ex, answer)])
    assert feedback.annotator == "reference-strict"
    return feedback


@pytest.mark.parametrize("prediction, kind", [
    ("Gustave Martin of Lyon", "unsupported"),  # shares "Gustave": token F1 0.33 with the gold
    ("the firm of Dr. Smith", "wrong span"),  # shares "firm of", every word in the passage: F1 0.44
])
def test_strict_calls_an_answer_that_only_shares_a_word_incorrect(prediction, kind):
    ex = example(["engineering firm of Gustave Eiffel"] if kind == "wrong span" else ["Gustave Eiffel"])
    assert annotate(ex, prediction).verdict == "partially correct"
    fb = strict(ex, prediction)
    assert fb.verdict == "incorrect" and uses(fb.text, DIAGNOSES[kind])
    assert fb.corrected_answer == ex.answers[0]


def test_strict_does_not_take_a_number_for_the_start_of_another():
    ex = example(["1889"], question="When was it built?")
    assert annotate(ex, "188").verdict == "partially correct"  # "188" starts "1889"
    assert strict(ex, "188").verdict == "incorrect"


def test_strict_keeps_close_overlaps_and_containment_partially_correct():
    close = strict(example(["engineering firm of Gustave Eiffel"]), "Eiffel firm")  # token F1 0.57
    assert close.verdict == "partially correct" and uses(close.text, DIAGNOSES["overlap"])
    long_ = strict(example(["1889"], question="When was it built?"), "It was built for the fair in 1889")  # F1 0.2
    assert long_.verdict == "partially correct" and uses(long_.text, DIAGNOSES["too long"])
    short = strict(example(["the engineering firm of Gustave Eiffel"]), "Eiffel")
    assert short.verdict == "partially correct" and uses(short.text, DIAGNOSES["incomplete"])


def test_strict_counts_shared_words_from_a_token_f1_of_one_half():
    fb = strict(example(["Gustave Eiffel"]), "Gustave Martin")  # F1 exactly 0.5
    assert fb.verdict == "partially correct" and uses(fb.text, DIAGNOSES["overlap"])


def test_strict_judges_by_another_gold_answer_where_the_first_shares_too_little():
    # the majority gold (twice) shares only "firm" with the answer; the third gold is in it
    ex = example(["the firm of Smith", "the firm of Smith", "Gustave Eiffel"])
    assert uses(annotate(ex, "Gustave Eiffel and his firm").text, DIAGNOSES["overlap"])  # F1 0.25 with the majority
    fb = strict(ex, "Gustave Eiffel and his firm")
    assert fb.verdict == "partially correct" and uses(fb.text, DIAGNOSES["too long"]) and '"and his firm"' in fb.text


@pytest.mark.parametrize("prediction",
                         ["Gustave Eiffel", "Dr. Smith", "Alexandre Martin", "Gustave Eiffel in Paris", ""])
def test_strict_words_every_other_answer_as_reference_does(prediction):
    ex = example(["Gustave Eiffel"])
    assert strict(ex, prediction).text == annotate(ex, prediction).text


def test_every_reference_variant_the_config_accepts_has_its_rule():
    assert set(ANNOTATORS) - {"llm"} == set(OVERLAP_F1)
    assert load_config(overrides=["annotate.annotator=reference-strict"]).annotate.annotator == "reference-strict"


def test_an_unknown_reference_variant_is_refused():
    with pytest.raises(ValueError, match="unknown reference annotator 'reference-lax'; available: reference, "
                                         "reference-strict"):
        ReferenceAnnotator(name="reference-lax")


def test_the_annotate_stage_runs_the_variant_it_is_given_and_refuses_to_mix_them(tmp_path):
    config = load_config(overrides=["data.eval_size=8", "data.train_size=6", "annotate.annotator=reference-strict"])
    layout = RunLayout(tmp_path)
    prepare(layout, config.data)
    questions = read_records(layout.train_examples, QAExample)
    # each answer shares one word, "Paris", with a made-up gold answer: partially correct under reference only
    examples = [dataclasses.replace(q, answers=["Paris in France"], is_impossible=False) for q in questions]
    write_records(layout.train_examples, examples)
    write_records(layout.answers, [Answer(q.id, "Paris Hilton", "Paris Hilton", "m") for q in questions])
    feedback = annotate_stage(layout, config.annotate)
    assert {(f.annotator, f.verdict) for f in feedback} == {("reference-strict", "incorrect")}
    assert yaml.safe_load(sidecar_config(layout.feedback).read_text()) == {
        "annotate": {"annotator": "reference-strict", "seed": 0}}
    with pytest.raises(ConfigError, match=r"different settings \(annotate\.annotator\)"):
        annotate_stage(layout, load_config(overrides=["data.eval_size=8", "data.train_size=6"]).annotate)
    loose = annotate_stage(layout, load_config(overrides=[]).annotate, out="reference.jsonl")
    assert {(f.annotator, f.verdict) for f in loose} == {("reference", "partially correct")}
