"""Reading records: what a hand-edited line can get wrong is refused, and the error names where."""

import json

import pytest

from laffi.records import Feedback, Prediction, RecordError, parse_record, to_dict


def feedback_line(**fields) -> str:
    return json.dumps({**to_dict(Feedback("q1", "Paris", "correct", "Right.", "human", "ann")), **fields})


def test_a_field_given_twice_is_refused_not_read_as_its_last_value():
    line = feedback_line()[:-1] + ', "verdict": "incorrect"}'  # what json.loads would read as incorrect
    with pytest.raises(RecordError, match="feedback.jsonl:3: field 'verdict' given twice"):
        parse_record(Feedback, line, "feedback.jsonl:3")
    assert parse_record(Feedback, feedback_line(), "x").verdict == "correct"


def test_an_error_inside_a_nested_record_names_its_path():
    review = {"answer": "Paris", "feedback": "Right.", "verdict": "correct", "revised": None}
    prediction = {"id": "q1", "prediction": "Paris", "output": "Paris", "exact": 1, "f1": 1.0,
                  "reviews": [review, {k: v for k, v in review.items() if k != "verdict"}]}
    with pytest.raises(RecordError, match=r"missing field 'reviews'\[1\]\['verdict'\] for Prediction"):
        parse_record(Prediction, json.dumps(prediction))
    prediction["reviews"][1] = {**review, "verdcit": "correct"}
    with pytest.raises(RecordError, match=r"unknown field 'reviews'\[1\]\['verdcit'\]"):
        parse_record(Prediction, json.dumps(prediction))


def test_a_line_that_is_not_json_says_so():
    with pytest.raises(RecordError, match="x:1: not valid JSON"):
        parse_record(Feedback, '{"id": "q1", oops', "x:1")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    from laffi.config import ConfigError, read_yaml
    from laffi.records import Feedback, RecordError, read_records

    (tmp_path / "bin.jsonl").write_bytes(b"\xff\n")
    with pytest.raises(RecordError, match=r"bin\.jsonl: not a text file in UTF-8"):
        read_records(tmp_path / "bin.jsonl", Feedback)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not a text file in UTF-8"):
        read_yaml(tmp_path / "bin.yaml")
