"""Feedback content levels come from the recorded parts, never from cutting free text.

    python -m pytest tests/annotators/test_content.py
"""

from __future__ import annotations

import pytest

from laffi.annotators.content import CONTENTS, ContentError, content_text, with_content
from laffi.annotators.reference import DIAGNOSES, QUOTES, RIGHT_ANSWERS, VERDICTS, ReferenceAnnotator
from laffi.records import Answer, Feedback, QAExample, RecordError, from_dict, to_dict

CONTEXT = ("The Eiffel Tower was designed by the engineering firm of Gustave Eiffel. "
           "It was built for the 1889 World's Fair in Paris.")


def reference(prediction: str) -> Feedback:
    example = QAExample("q1", "Eiffel Tower", CONTEXT, "Who designed the Eiffel Tower?", ["Gustave Eiffel"])
    [note] = ReferenceAnnotator(seed=3).annotate([(example, Answer("q1", prediction, prediction, "m"))])
    return note


def test_the_reference_annotator_records_its_parts_in_order():
    note = reference("Paris")
    assert list(note.parts) == ["verdict", "diagnosis", "evidence", "answer"]
    assert note.text == " ".join(note.parts.values())
    assert note.parts["verdict"] in VERDICTS["incorrect"]
    assert note.parts["answer"] in [t.format(gold="Gustave Eiffel") for t in RIGHT_ANSWERS]
    assert any(note.parts["evidence"].startswith(q.split("{")[0]) for q in QUOTES)
    assert from_dict(Feedback, to_dict(note)) == note  # survives JSONL
    # a correct answer has no right-answer part
    assert "answer" not in reference("Gustave Eiffel").parts


def test_levels_are_prefixes_of_the_feedback_made_of_whole_parts():
    note = reference("the engineering firm of Gustave Eiffel")
    verdict, explained, full = (content_text(note, c) for c in CONTENTS)
    assert verdict == note.parts["verdict"]
    assert explained == " ".join([note.parts["verdict"], note.parts["diagnosis"], note.parts["evidence"]])
    assert full == note.text and full.startswith(explained) and explained.startswith(verdict)
    # the diagnosis names the extra words, not the answer; the evidence sentence does contain it
    assert note.parts["diagnosis"] in [t.format(extra='"the engineering firm of"') for t in DIAGNOSES["too long"]]
    assert "Gustave Eiffel" in note.parts["evidence"]
    cut = with_content(note, "verdict+explanation")
    assert cut.text == explained and cut.verdict == note.verdict and cut.id == note.id
    assert list(cut.parts) == ["verdict", "diagnosis", "evidence"]
    assert with_content(note, "verdict+explanation+answer") is note


def test_free_text_takes_only_the_verdict_or_the_whole_text():
    human = Feedback("q1", "Paris", "incorrect", "No, the designer was Gustave Eiffel's firm.", "human", "alice")
    assert content_text(human, "verdict") == "The answer is incorrect."
    assert content_text(human, "verdict+explanation+answer") == human.text
    with pytest.raises(ContentError, match="free text without recorded parts"):
        content_text(human, "verdict+explanation")
    with pytest.raises(ContentError, match="unknown content"):
        content_text(human, "answer")


def test_parts_must_join_into_the_text():
    with pytest.raises(RecordError, match="do not join"):
        from_dict(Feedback, {"id": "q", "answer": "a", "verdict": "correct", "text": "Correct. Extra.", "source": "ai",
                             "annotator": "reference", "parts": {"verdict": "Correct."}})
