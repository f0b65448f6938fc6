"""Several answers per question (generate.samples) in the annotation app: each (question, sample) answer
is an item, exported feedback carries its sample, and a database made before (schema version 2, items
keyed by question id) is migrated in place on SQLite and PostgreSQL with its items as sample 0.

    python -m pytest tests/human/test_human_samples.py
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
from sqlalchemy import inspect, select
from support.human_helpers import add_annotator, csrf, item_id_of, make_run, postgres, serve, sign_in

from laffi.human import db, exchange, store
from laffi.human.config import default_db_url
from laffi.records import Answer, Feedback, read_records, write_records

SAMPLES = 3


def with_samples(run, n_items: int):
    """The run's answers as SAMPLES per question: the greedy one as it was, then sampled ones."""
    greedy = read_records(run / "answers.jsonl", Answer)
    write_records(run / "answers.jsonl", [
        a if s == 0 else Answer(a.id, f"{a.prediction} {s}", "raw", "tiny", s) for a in greedy[:n_items]
        for s in range(SAMPLES)])
    return run


def person(engine, name):
    return store.authenticate(engine, store.add_annotator(engine, name))[0]


def test_each_answer_is_an_item_and_its_feedback_carries_the_sample(tmp_path):
    run = with_samples(make_run(tmp_path / "run", n_items=2), 2)
    engine = db.open_engine(default_db_url(run))
    assert exchange.sync_run_items(engine, run) == (2 * SAMPLES, 0)
    alice = person(engine, "alice")
    claimed = []
    while (item := store.claim(engine, alice.id, per_item=1)) is not None:
        claimed.append(item)
        shown = store.get_item(engine, item)
        store.submit(engine, alice.id, item, "incorrect", f"On {shown.answer}.", None)
    # a question's answers one after another, the greedy one first under the question id it always had
    assert claimed == ["q000", "q000#s1", "q000#s2", "q001", "q001#s1", "q001#s2"]
    assert [(i.question_id, i.sample) for i in map(lambda c: store.get_item(engine, c), claimed)] == [
        (q, s) for q in ("q000", "q001") for s in range(SAMPLES)]

    exported = exchange.export_feedback(engine, tmp_path / "human.jsonl")
    assert [(f.id, f.sample, f.answer) for f in exported] == [
        ("q000", 0, "south"), ("q000", 1, "south 1"), ("q000", 2, "south 2"),
        ("q001", 0, "north"), ("q001", 1, "north 1"), ("q001", 2, "north 2")]
    assert read_records(tmp_path / "human.jsonl", Feedback) == exported
    # import into another database: every answer's feedback back on its own item
    other = db.open_engine(f"sqlite:///{tmp_path / 'other.db'}")
    exchange.sync_run_items(other, run)
    assert exchange.import_feedback(other, run, tmp_path / "human.jsonl") == (6, 0)
    assert exchange.export_feedback(other, tmp_path / "back.jsonl") == exported
    # two people agree per answer: each of a question's answers is an item of its own
    bob = [Feedback(f.id, f.answer, "correct" if f.sample == 1 else f.verdict, "x", "human", "bob", sample=f.sample)
           for f in exported]
    report = exchange.agreement_report(exported + bob, [])
    assert report["human_pooled"]["n"] == 6 and round(report["human_pooled"]["percent"], 1) == 66.7
    engine.dispose()
    other.dispose()


def test_the_app_serves_a_sampled_answer_by_its_item_id(tmp_path):
    run = with_samples(make_run(tmp_path / "run", n_items=1), 1)
    token = add_annotator(run, "alice")
    with serve(run, "--per-item", "1") as url:
        alice = sign_in(url, token)
        for expected in ("q000", "q000#s1", "q000#s2"):
            page = alice.get(url + "annotate")
            assert page.status_code == 200 and item_id_of(page) == expected
            assert ("One of several answers" in page.text) == (expected != "q000")
            saved = alice.post(page.url, data={"csrf_token": csrf(page.text), "verdict": "incorrect",
                                               "text": f"About {expected}."})
            assert saved.status_code == 200
    engine = db.open_engine(default_db_url(run))
    assert [(f.sample, f.text) for f in exchange.export_feedback(engine, tmp_path / "out.jsonl")] == [
        (0, "About q000."), (1, "About q000#s1."), (2, "About q000#s2.")]
    engine.dispose()


def _schema(engine) -> dict:
    found = inspect(engine)
    return {"columns": sorted(c["name"] for c in found.get_columns("items")),
            "indexes": sorted(i["name"] for i in found.get_indexes("items") if i["name"] != "sqlite_autoindex_items_1")}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_of_schema_version_2_keeps_its_items_as_sample_0(tmp_path, backend):
    run = make_run(tmp_path / "run", n_items=3)
    with postgres() if backend == "postgresql" else nullcontext(default_db_url(run)) as url:
        old = db.make_engine(url)
        assert db.upgrade(old, to_version=2) == 2  # the schema before generate.samples
        with db.write(old) as conn:  # what that version's app wrote: items keyed by question id
            for position, (qid, answer) in enumerate((("q000", "south"), ("q001", "north"))):
                conn.exec_driver_sql(
                    "INSERT INTO items (id, position, title, context, question, gold, answer, claims) "
                    f"VALUES ('{qid}', {position}, 'T', 'The Nile flows north.', 'Where?', '[\"north\"]', '{answer}', "
                    f"{1 if qid == 'q000' else 0})")
            conn.exec_driver_sql("INSERT INTO annotators (name, is_admin, created_at) VALUES ('alice', false, 0)")
            conn.exec_driver_sql(
                "INSERT INTO annotations (item_id, annotator_id, status, answer, verdict, text, assigned_at, "
                "submitted_at) VALUES ('q000', 1, 'done', 'south', 'incorrect', 'It is north.', 0, 1)")
        old.dispose()

        engine = db.open_engine(url)  # upgraded in place
        with db.read(engine) as conn:
            version = conn.execute(select(db.meta.c.value).where(db.meta.c.key == "schema_version")).scalar()
            rows = conn.execute(select(db.items.c.id, db.items.c.question_id, db.items.c.sample)
                                .order_by(db.items.c.position)).all()
        assert int(version) == db.SCHEMA_VERSION == 3
        assert [tuple(r) for r in rows] == [("q000", "q000", 0), ("q001", "q001", 0)]
        assert exchange.export_feedback(engine, tmp_path / "human.jsonl") == [
            Feedback("q000", "south", "incorrect", "It is north.", "human", "alice", submitted_at=1.0)]
        # the run's answers as they are now: the old items stay (same ids, same annotation), samples join
        with_samples(run, 3)
        assert exchange.sync_run_items(engine, run) == (3 * SAMPLES - 2, 0)
        bob = person(engine, "bob")
        assert store.claim(engine, bob.id, per_item=1) == "q000#s1"  # q000 holds its one slot already
        migrated = _schema(engine)
        engine.dispose()

    fresh = db.open_engine(f"sqlite:///{tmp_path / 'fresh.db'}")  # made at version 3 step by step
    assert _schema(fresh) == migrated and "items_by_answer" in migrated["indexes"]
    assert set(migrated["columns"]) == {c.name for c in db.items.columns}
    fresh.dispose()
