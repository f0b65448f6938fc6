"""The annotation database without the web layer: schema upgrades, assignment up to K, skipping,
revocation, export and import through the CLI, and the agreement report.

    python -m pytest tests/human/test_human_store.py
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import inspect, select
from support.human_helpers import add_annotator, laffi, make_run

from laffi.config import ConfigError
from laffi.human import db, exchange, store
from laffi.human.config import ServeConfig, default_db_url
from laffi.records import Feedback, read_records, write_records


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run", n_items=5)


@pytest.fixture
def engine(run):
    engine = db.open_engine(default_db_url(run))
    exchange.sync_run_items(engine, run)
    yield engine
    engine.dispose()


def person(engine, name):
    return store.authenticate(engine, store.add_annotator(engine, name))[0]


def test_schema_is_created_in_wal_mode_and_an_old_database_is_upgraded(run):
    url = default_db_url(run)
    old = db.make_engine(url)
    assert db.upgrade(old, to_version=1) == 1  # what the first release created
    assert "annotations_by_person" not in {i["name"] for i in inspect(old).get_indexes("annotations")}
    old.dispose()

    engine = db.open_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        version = conn.execute(select(db.meta.c.value).where(db.meta.c.key == "schema_version")).scalar()
    assert int(version) == db.SCHEMA_VERSION == 3
    assert "annotations_by_person" in {i["name"] for i in inspect(engine).get_indexes("annotations")}
    assert db.upgrade(engine) == 3  # idempotent
    with db.write(engine) as conn:
        conn.execute(db.meta.update().where(db.meta.c.key == "schema_version").values(value="99"))
    with pytest.raises(db.SchemaError, match="newer"):
        db.open_engine(url)
    engine.dispose()


def test_each_item_gets_at_most_k_people_and_skips_give_the_slot_back(engine):
    alice, bob, carol = (person(engine, n) for n in ("alice", "bob", "carol"))
    first = store.claim(engine, alice.id, per_item=2)
    assert first == "q000"
    assert store.claim(engine, alice.id, per_item=2) == "q000"  # the open item comes back, no second claim
    assert store.claim(engine, bob.id, per_item=2) == "q000"
    assert store.claim(engine, carol.id, per_item=2) == "q001"  # q000 holds K=2 already
    store.skip(engine, bob.id, "q000")
    store.submit(engine, alice.id, "q000", "incorrect", "The model said south; the Nile flows north.", "north")
    assert store.claim(engine, alice.id, per_item=2) == "q001"
    assert store.claim(engine, bob.id, per_item=2) == "q002"  # never q000 again: bob skipped it
    with pytest.raises(store.Conflict):
        store.submit(engine, bob.id, "q000", "correct", "x", None)  # skipped items cannot be submitted
    with pytest.raises(store.Forbidden):
        store.submit(engine, carol.id, "q000", "correct", "x", None)  # not carol's
    with pytest.raises(store.NotFound):
        store.get_annotation(engine, carol.id, "nope")
    with pytest.raises(store.StoreError, match="verdict"):
        store.submit(engine, alice.id, "q001", "great", "x", None)
    with db.read(engine) as conn:
        claims = dict(conn.execute(select(db.items.c.id, db.items.c.claims)).all())
    assert claims == {"q000": 1, "q001": 2, "q002": 1, "q003": 0, "q004": 0}


def test_revoking_keeps_the_work_and_frees_the_open_item(engine, run):
    token = store.add_annotator(engine, "dave")
    dave = store.authenticate(engine, token)[0]
    store.claim(engine, dave.id, 1)
    store.submit(engine, dave.id, "q000", "correct", "Right.", None)
    assert store.claim(engine, dave.id, 1) == "q001"
    store.revoke_annotator(engine, "dave")
    assert store.authenticate(engine, token) == (None, "This token was revoked.")
    assert store.authenticate(engine, "laffi_wrong") == (None, "Unknown token.")
    eve = person(engine, "eve")
    assert store.claim(engine, eve.id, 1) == "q001"  # dave's open item went back to the pool
    assert [p["state"] for p in store.list_annotators(engine)] == ["revoked", "active"]
    assert [(r.id, r.annotator) for r in exchange.export_feedback(engine, run / "out.jsonl")] == [("q000", "dave")]
    with pytest.raises(store.Conflict, match="already exists"):
        store.add_annotator(engine, "eve")
    assert store.authenticate(engine, store.add_annotator(engine, "dave"))[0].name == "dave"  # a new token
    with pytest.raises(store.StoreError, match="name"):
        store.add_annotator(engine, "<script>")


def test_cli_add_list_revoke_export_and_import_round_trip(run, tmp_path):
    token = add_annotator(run, "alice")
    assert token.startswith("laffi_") and len(token) > 40
    engine = db.open_engine(default_db_url(run))
    with db.read(engine) as conn:  # only the hash is stored
        assert conn.execute(select(db.annotators.c.token_hash)).scalar() == store.hash_token(token)
    exchange.sync_run_items(engine, run)
    alice = store.authenticate(engine, token)[0]
    for verdict, text in (("incorrect", "Wrong: it is north."), ("correct", "Right, and short.")):
        item = store.claim(engine, alice.id, 1)
        store.submit(engine, alice.id, item, verdict, text, "north" if verdict == "incorrect" else None)
    code, out, _ = laffi("annotators", "list", "--run", str(run))
    assert code == 0 and "alice" in out and " 2 " in out

    code, out, _ = laffi("export-feedback", str(run))
    assert code == 0 and "2 human feedback records" in out and "human vs AI reference: 100.0% agree" in out
    exported = read_records(run / "feedback.human.jsonl", Feedback)
    assert [replace(f, submitted_at=None) for f in exported] == [
        Feedback("q000", "south", "incorrect", "Wrong: it is north.", "human", "alice", "north"),
        Feedback("q001", "north", "correct", "Right, and short.", "human", "alice", None)]
    with db.read(engine) as conn:  # when each was submitted, as the database has it
        assert sorted(f.submitted_at for f in exported) == sorted(conn.execute(select(db.annotations.c.submitted_at)).scalars())

    # Import into a fresh database (say, PostgreSQL after SQLite): same records come back out.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    extra = Feedback("q002", "south", "partially correct", "Close.", "human", "bob")
    write_records(tmp_path / "in.jsonl", exported + [extra])
    code, out, err = laffi("import-feedback", str(run), str(tmp_path / "in.jsonl"), "--db", other)
    assert code == 0, err
    assert "imported 3" in out
    code, out, _ = laffi("import-feedback", str(run), str(tmp_path / "in.jsonl"), "--db", other)
    assert "imported 0 feedback records (3 already there)" in out
    laffi("export-feedback", str(run), "--db", other, "--out", str(tmp_path / "back.jsonl"))
    back = read_records(tmp_path / "back.jsonl", Feedback)
    assert back[:2] == exported  # submission times included
    assert replace(back[2], submitted_at=None) == extra and back[2].submitted_at  # none given: the import's time

    changed = [Feedback("q002", "south", "correct", "Changed my mind.", "human", "bob")]
    write_records(tmp_path / "conflict.jsonl", changed)
    code, _, err = laffi("import-feedback", str(run), str(tmp_path / "conflict.jsonl"), "--db", other)
    assert code == 2 and "different feedback" in err and "leave the record out of the file" in err
    # feedback on an answer this run's model did not give (another model's, on the same questions), or none at all
    for bad, message in ((Feedback("q002", "Paris", "incorrect", "No.", "human", "carol"),
                          "is on the answer 'Paris', and this run's answer is 'south'"),
                         (Feedback("q002", "south", "incorrect", " ", "human", "carol"), "has no text")):
        write_records(tmp_path / "bad.jsonl", [bad])
        code, _, err = laffi("import-feedback", str(run), str(tmp_path / "bad.jsonl"), "--db", other)
        assert code == 2 and message in err, err
    write_records(tmp_path / "ai.jsonl", [Feedback("q003", "north", "correct", "AI.", "ai", "reference")])
    code, _, err = laffi("import-feedback", str(run), str(tmp_path / "ai.jsonl"), "--db", other)
    assert code == 2 and "only human feedback" in err

    code, _, _ = laffi("annotators", "revoke", "alice", "--run", str(run))
    assert code == 0
    code, _, err = laffi("annotators", "revoke", "nobody", "--run", str(run))
    assert code == 2 and "no annotator named" in err
    engine.dispose()


def test_agreement_report_between_people_and_with_the_ai():
    def fb(qid, who, verdict, source="human", answer="a"):
        return Feedback(qid, answer, verdict, "t", source, who)

    human = [fb("1", "ann", "correct"), fb("1", "bob", "correct"), fb("2", "ann", "incorrect"),
             fb("2", "bob", "correct"), fb("3", "ann", "incorrect"), fb("3", "bob", "incorrect"),
             fb("4", "ann", "correct")]
    ai = [fb("1", "ref", "correct", "ai"), fb("2", "ref", "incorrect", "ai"),
          fb("3", "ref", "correct", "ai", answer="another answer")]  # judged a different answer: not paired
    report = exchange.agreement_report(human, ai)
    pair = report["human_pairs"][0]
    assert (pair["a"], pair["b"], pair["n"]) == ("ann", "bob", 3)
    assert pair["percent"] == pytest.approx(200 / 3)
    assert report["human_pooled"]["kappa"] == pytest.approx(0.4)  # p_o 2/3, p_e 4/9
    assert {p["annotator"]: (p["n"], p["percent"]) for p in report["human_ai"]} == {"ann": (2, 100.0),
                                                                                   "bob": (2, 50.0)}
    assert "human vs human: 66.7% agree, kappa 0.400 (n=3)" in exchange.format_report(report)
    assert exchange.agreement_report([], [])["human_pooled"] is None
    # two AI annotators (an experiment's feedback.NAME.jsonl files): each person against each, never merged
    strict = [fb("1", "strict", "incorrect", "ai"), fb("2", "strict", "incorrect", "ai")]
    both = exchange.agreement_report(human, ai + strict)
    assert {(p["annotator"], p["ai"]): p["percent"] for p in both["human_ai"]} == {
        ("ann", "ref"): 100.0, ("ann", "strict"): 50.0, ("bob", "ref"): 50.0, ("bob", "strict"): 0.0}
    assert "  ann vs strict: 50.0% agree" in exchange.format_report(both)
    # all people against each AI annotator: a person's verdict counts once per line, not once per annotator
    assert {p["ai"]: (p["n"], p["percent"]) for p in both["human_ai_pooled"]} == {"ref": (4, 75.0),
                                                                                  "strict": (4, 25.0)}
    assert "human vs AI strict: 25.0% agree" in exchange.format_report(both)


def test_the_ai_feedback_of_an_experiment_directory_is_its_annotators_files(tmp_path):
    run = make_run(tmp_path / "x", n_items=3)
    (run / "feedback.jsonl").rename(run / "feedback.reference.jsonl")  # as `laffi experiment` names it
    write_records(run / "feedback.human.jsonl", [Feedback("q000", "south", "correct", "t", "human", "ann")])
    assert [f.id for f in exchange.ai_feedback(run)] == ["q000", "q001", "q002"]  # the people's left out


def test_serve_config_is_checked_and_binds_loopback_by_default(run):
    config = ServeConfig(run_dir=str(run))
    assert config.host == "127.0.0.1" and config.per_item == 1
    assert config.db == default_db_url(run) and config.db.endswith("annotations.db")
    for kwargs, flag in (({"port": 70000}, "--port"), ({"per_item": 0}, "--per-item"),
                         ({"db": "mysql://x"}, "--db"), ({"max_body_bytes": 10}, "max_body_bytes")):
        with pytest.raises(ConfigError, match=flag):
            ServeConfig(run_dir=str(run), **kwargs)


def test_admin_page_shows_progress_and_agreement(run, engine):
    from support.human_helpers import CSRF

    from laffi.human.app import create_app

    app = create_app(ServeConfig(run_dir=str(run), per_item=2), engine)
    ann, bob = person(engine, "ann"), person(engine, "bob")
    # AI verdicts in make_run: q000 incorrect, q001 correct
    for who, verdicts in ((ann, ("incorrect", "correct")), (bob, ("incorrect", "incorrect"))):
        for verdict in verdicts:
            store.submit(engine, who.id, store.claim(engine, who.id, 2), verdict, "why", None)
    client = app.test_client()
    page = client.get("/")
    token = store.add_annotator(engine, "boss", admin=True)
    signed_in = client.post("/", data={"token": token, "csrf_token": CSRF.search(page.text).group(1)})
    assert signed_in.status_code == 303 and signed_in.headers["Location"].endswith("/admin")
    admin = client.get("/admin").text
    assert "2 of 5 items have 2 human annotations (K = 2)" in admin
    assert "All pairs: 50.0% · kappa 0.000 · n=2" in admin  # ann/bob agree on q000 only
    assert ("All people vs reference: 75.0%" in admin and "ann vs reference</td><td>100.0%" in admin
            and "bob vs reference</td><td>50.0%" in admin)
    assert "<td>ann</td><td>active</td>" in admin.replace("\n      ", "")


def test_a_database_url_of_another_kind_is_refused_by_name():
    with pytest.raises(db.SchemaError, match="mysql://u@h/x: a SQLite file"):
        db.make_engine("mysql://u@h/x")


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///:memory:"])
def test_a_sqlite_url_without_a_file_is_refused(url):
    with pytest.raises(db.SchemaError, match="needs a file path"):
        db.make_engine(url)


def test_a_sqlite_file_where_none_can_be_is_named(tmp_path):
    with pytest.raises(db.SchemaError, match="no folder .*nowhere to keep x.db in"):
        db.make_engine(f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}")
    with pytest.raises(db.SchemaError, match="is a folder"):
        db.make_engine(f"sqlite:///{tmp_path}")


def test_the_answer_is_marked_where_it_is_in_the_passage():
    from laffi.human.app import highlight

    # lowercased, "İ" is two characters: a match found in a lowercased copy lands one character early
    assert str(highlight("İstanbul is big", "IS BIG")) == "İstanbul <mark>is big</mark>"
    assert str(highlight("a <b> Paris", "paris")) == "a &lt;b&gt; <mark>Paris</mark>"
    assert str(highlight("Paris", " ")) == "Paris"


def test_a_claim_after_the_revocation_its_token_check_missed_takes_no_slot(engine):
    # the token was checked (before_request), then `laffi annotators revoke` committed, then the claim ran
    alice, bob = person(engine, "alice"), person(engine, "bob")
    store.revoke_annotator(engine, "alice")
    with pytest.raises(store.Forbidden, match="revoked"):
        store.claim(engine, alice.id, 1)
    assert store.claim(engine, bob.id, 1) == "q000"  # the first item's one slot is still free
    assert next(p for p in store.list_annotators(engine) if p["name"] == "alice")["open"] == 0


def test_a_database_of_another_run_is_refused_not_mixed_in(engine, tmp_path):
    other = make_run(tmp_path / "other", n_items=3, context="Another passage.")
    for path in (other / "data" / "train.jsonl", other / "answers.jsonl"):  # other questions: ids of its own
        path.write_text(path.read_text().replace('"q00', '"other-q00'))
    with pytest.raises(store.StoreError, match="holds items of 5 questions this run does not have .*another run's"):
        exchange.sync_run_items(engine, other)
    with db.read(engine) as conn:
        assert conn.execute(select(db.items.c.question_id)).scalars().all() == [f"q{i:03d}" for i in range(5)]
    code, _, err = laffi("export-feedback", str(other), "--db", str(engine.url))
    assert code == 2 and "another run's" in err and not (other / "feedback.human.jsonl").exists()


def test_export_reads_the_database_alone_while_the_answers_are_made_again(engine, run):
    alice = person(engine, "alice")
    store.submit(engine, alice.id, store.claim(engine, alice.id, 1), "incorrect", "It flows north.", "north")
    (run / "answers.jsonl").unlink()  # deleted to generate again
    code, out, err = laffi("export-feedback", str(run), "--db", str(engine.url))
    assert code == 0, err
    assert "1 human feedback records" in out
