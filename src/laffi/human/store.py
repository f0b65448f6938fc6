"""Every read and write of the annotation app, one short transaction each.

    engine = open_engine(url)
    token = add_annotator(engine, "alice")
    person, _why = authenticate(engine, token)   # (None, the reason) for a bad token
    item_id = claim(engine, person.id, per_item=2)
    submit(engine, person.id, item_id, "incorrect", "The answer is the year, not the place.", "1871")

Assignment. `items.claims` counts the annotations that hold a slot on an item (assigned or done).
A claim is the conditional update `claims = claims + 1 WHERE claims < K`, which both databases
apply atomically, so concurrent annotators never push an item past K; the unique
(item, annotator) pair keeps one person from getting an item twice. A person holds at most one
open item at a time and gets it back on return, so nothing needs to expire; skipping or being
revoked gives the slot back.

Items. An item is one answer of the model, (question id, sample): with generate.samples=K a question
gives K items, handed out in train-pool order, a question's answers one after another. An item's id
is the answer's name (laffi.records.answer_name), so an item made before samples existed keeps its
question id as its id.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Iterable

from sqlalchemy import Connection, Engine, and_, delete, exists, func, insert, select, update

from laffi.human.db import annotations, annotators, items, meta, read, write
from laffi.records import VERDICTS, Answer, QAExample, answer_name, record_key

NAME = re.compile(r"^[\w.@-]{1,64}$")


class StoreError(Exception):
    """A request the store refuses; `status` is the HTTP status the app answers with."""

    status = 400


class NotFound(StoreError):
    status = 404


class Forbidden(StoreError):
    status = 403


class Conflict(StoreError):
    status = 409


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    is_admin: bool


@dataclass(frozen=True)
class Item:
    id: str
    position: int
    title: str
    context: str
    question: str
    gold: list[str]
    answer: str
    question_id: str
    sample: int  # which of the question's answers (Answer.sample)


@dataclass(frozen=True)
class Annotation:
    item_id: str
    annotator: str
    status: str  # assigned | done | skipped
    answer: str
    verdict: str | None
    text: str | None
    corrected_answer: str | None
    submitted_at: float | None
    question_id: str  # the item's answer: (question id, sample)
    sample: int


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def secret(engine: Engine) -> str:
    """The per-database key that signs CSRF tokens."""
    with read(engine) as conn:
        return conn.execute(select(meta.c.value).where(meta.c.key == "secret")).scalar_one()


# --- annotators ---------------------------------------------------------------------------------


def add_annotator(engine: Engine, name: str, admin: bool = False) -> str:
    """Create a person (or give a revoked or imported one a new token); returns the token, shown once."""
    if not NAME.match(name):
        raise StoreError(f"annotator name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
    token = "laffi_" + secrets.token_urlsafe(32)
    with write(engine) as conn:
        row = conn.execute(select(annotators).where(annotators.c.name == name)).first()
        if row is None:
            conn.execute(insert(annotators).values(name=name, token_hash=hash_token(token), is_admin=admin,
                                                   created_at=time.time()))
        elif row.token_hash is not None and row.revoked_at is None:
            raise Conflict(f"annotator {name!r} already exists; revoke the old token first to issue a new one")
        else:
            conn.execute(update(annotators).where(annotators.c.id == row.id)
                         .values(token_hash=hash_token(token), is_admin=admin, revoked_at=None))
    return token


def revoke_annotator(engine: Engine, name: str) -> None:
    """The token stops working at once; the person's open item goes back to the pool, their work stays."""
    with write(engine) as conn:
        row = conn.execute(select(annotators).where(annotators.c.name == name)).first()
        if row is None:
            raise NotFound(f"no annotator named {name!r}")
        conn.execute(update(annotators).where(annotators.c.id == row.id).values(revoked_at=time.time()))
        _release_open(conn, row.id)


def _release_open(conn: Connection, person_id: int) -> None:
    open_items = conn.execute(select(annotations.c.item_id).where(
        annotations.c.annotator_id == person_id, annotations.c.status == "assigned")).scalars().all()
    for item_id in open_items:
        conn.execute(update(items).where(items.c.id == item_id).values(claims=items.c.claims - 1))
    conn.execute(delete(annotations).where(annotations.c.annotator_id == person_id,
                                           annotations.c.status == "assigned"))


def list_annotators(engine: Engine) -> list[dict]:
    """Every person with their counts of done, skipped and open items."""
    counts = {}
    with read(engine) as conn:
        for person_id, status, n in conn.execute(select(annotations.c.annotator_id, annotations.c.status,
                                                        func.count()).group_by(annotations.c.annotator_id,
                                                                               annotations.c.status)):
            counts[(person_id, status)] = n
        rows = conn.execute(select(annotators).order_by(annotators.c.name)).all()
    return [{"name": r.name, "admin": r.is_admin,
             "state": "revoked" if r.revoked_at else ("no token" if r.token_hash is None else "active"),
             "done": counts.get((r.id, "done"), 0), "skipped": counts.get((r.id, "skipped"), 0),
             "open": counts.get((r.id, "assigned"), 0)} for r in rows]


def authenticate(engine: Engine, token: str) -> tuple[Person | None, str]:
    """The person a token belongs to, or None and why not (shown to the user)."""
    if not token:
        return None, "Sign in with your annotator token."
    with read(engine) as conn:
        row = conn.execute(select(annotators).where(annotators.c.token_hash == hash_token(token))).first()
    if row is None:
        return None, "Unknown token."
    if row.revoked_at is not None:
        return None, "This token was revoked."
    return Person(row.id, row.name, row.is_admin), ""


# --- items ----------------------------------------------------------------------------------------


def sync_items(engine: Engine, examples: Iterable[QAExample], answers: Iterable[Answer]) -> tuple[int, int]:
    """Load the answers to annotate, one item per (question, sample), in train-pool order; returns (added, updated)."""
    by_id = {e.id: (position, e) for position, e in enumerate(examples)}
    added = updated = 0
    with write(engine) as conn:
        known = {(r.question_id, r.sample): r for r in conn.execute(
            select(items.c.id, items.c.question_id, items.c.sample, items.c.answer, items.c.position))}
        taken = {r.id for r in known.values()}
        refuse_another_runs({r.question_id for r in known.values()} - by_id.keys())
        for answer in answers:
            if answer.id not in by_id:
                raise StoreError(f"answers.jsonl: answer to unknown question {answer.id!r}, which data/train.jsonl "
                                 "does not have; delete answers.jsonl and run `laffi generate` again")
            key, name = record_key(answer), answer_name(record_key(answer))
            position, example = by_id[answer.id]
            values = dict(position=position, title=example.title, context=example.context,
                          question=example.question, gold=json.dumps(example.answers), answer=answer.prediction)
            if key not in known:
                if name in taken:
                    raise StoreError(f"item {name!r}: a question id looks like another question's sampled answer")
                conn.execute(insert(items).values(id=name, question_id=answer.id, sample=answer.sample, claims=0,
                                                  **values))
                taken.add(name)
                added += 1
            elif (known[key].answer, known[key].position) != (answer.prediction, position):
                # Annotations keep the answer they were written about (annotations.answer).
                conn.execute(update(items).where(items.c.id == known[key].id).values(**values))
                updated += 1
    return added, updated


def refuse_another_runs(foreign: set[str]) -> None:
    """Items of questions the run does not have: the database was given to another run too."""
    if foreign:
        raise StoreError(f"the database holds items of {len(foreign)} questions this run does not have (e.g. "
                         f"{min(foreign)!r}): it is another run's; give each run a database of its own (--db)")


def check_items_of(engine: Engine, questions: Iterable[str]) -> None:
    """`refuse_another_runs` without loading anything: what reading the database (an export) checks."""
    with read(engine) as conn:
        refuse_another_runs(set(conn.execute(select(items.c.question_id).distinct()).scalars()) - set(questions))


def _item(row) -> Item:
    return Item(row.id, row.position, row.title, row.context, row.question, json.loads(row.gold), row.answer,
                row.question_id, row.sample)


def get_item(engine: Engine, item_id: str) -> Item:
    with read(engine) as conn:
        row = conn.execute(select(items).where(items.c.id == item_id)).first()
    if row is None:
        raise NotFound(f"no item {item_id!r}")
    return _item(row)


# --- assignment and submissions -------------------------------------------------------------------


def claim(engine: Engine, person_id: int, per_item: int) -> str | None:
    """The item this person should work on next: their open one, else a fresh claim; None when done."""
    with write(engine) as conn:
        # Serialises one person's concurrent claims (two tabs) on PostgreSQL; SQLite's
        # BEGIN IMMEDIATE already serialises every writer.
        revoked = conn.execute(select(annotators.c.revoked_at).where(annotators.c.id == person_id)
                               .with_for_update()).scalar()
        if revoked is not None:  # revoked after this request's token was checked: no slot for them
            raise Forbidden("This token was revoked.")
        held = conn.execute(select(annotations.c.item_id).where(
            annotations.c.annotator_id == person_id, annotations.c.status == "assigned")
            .order_by(annotations.c.id).limit(1)).scalar()
        if held is not None:
            return held
        mine = exists().where(annotations.c.item_id == items.c.id, annotations.c.annotator_id == person_id)
        while True:
            # No SKIP LOCKED here: an item another claim has locked is not taken, only busy, and
            # skipping it would tell this person "all done" while slots are left. The conditional
            # UPDATE below waits for that claim and re-checks `claims < K` against its outcome.
            candidates = conn.execute(select(items.c.id).where(items.c.claims < per_item, ~mine)
                                      .order_by(items.c.position, items.c.sample).limit(16)).scalars().all()
            if not candidates:
                return None
            for item_id in candidates:
                taken = conn.execute(update(items).where(items.c.id == item_id, items.c.claims < per_item)
                                     .values(claims=items.c.claims + 1))
                if taken.rowcount == 1:
                    answer = conn.execute(select(items.c.answer).where(items.c.id == item_id)).scalar_one()
                    conn.execute(insert(annotations).values(item_id=item_id, annotator_id=person_id,
                                                            status="assigned", answer=answer,
                                                            assigned_at=time.time()))
                    return item_id


def _own(conn: Connection, person_id: int, item_id: str):
    row = conn.execute(select(annotations).where(annotations.c.item_id == item_id,
                                                 annotations.c.annotator_id == person_id)).first()
    if row is None:
        if conn.execute(select(items.c.id).where(items.c.id == item_id)).first() is None:
            raise NotFound(f"no item {item_id!r}")
        raise Forbidden("This item is not assigned to you.")
    return row


def get_annotation(engine: Engine, person_id: int, item_id: str) -> Annotation:
    """This person's annotation of the item; Forbidden if the item is not theirs."""
    with read(engine) as conn:
        row = _own(conn, person_id, item_id)
        name = conn.execute(select(annotators.c.name).where(annotators.c.id == person_id)).scalar_one()
        answer = conn.execute(select(items.c.question_id, items.c.sample).where(items.c.id == item_id)).one()
    return Annotation(item_id, name, row.status, row.answer, row.verdict, row.text, row.corrected_answer,
                      row.submitted_at, answer.question_id, answer.sample)


def submit(engine: Engine, person_id: int, item_id: str, verdict: str, text: str,
           corrected_answer: str | None) -> None:
    """Record (or revise) this person's feedback on their item; committed when this returns."""
    if verdict not in VERDICTS:
        raise StoreError(f"verdict must be one of {', '.join(VERDICTS)}")
    if not text.strip():
        raise StoreError("Feedback text is required.")
    with write(engine) as conn:
        row = _own(conn, person_id, item_id)
        if row.status == "skipped":
            raise Conflict("You skipped this item; it has gone back to the pool.")
        # conditional, as the read above took no lock: on PostgreSQL a skip or a revocation committed since
        # is seen here, and the feedback is refused instead of reported saved while nothing was
        saved = conn.execute(update(annotations).where(annotations.c.id == row.id, annotations.c.status != "skipped")
                             .values(status="done", verdict=verdict, text=text,
                                     corrected_answer=corrected_answer or None, submitted_at=time.time()))
        if saved.rowcount != 1:
            raise Conflict("This item is no longer yours: it was skipped or your access was revoked meanwhile.")


def skip(engine: Engine, person_id: int, item_id: str) -> None:
    """Give an open item back to the pool; this person will not be offered it again."""
    with write(engine) as conn:
        row = _own(conn, person_id, item_id)
        if row.status == "done":
            raise Conflict("You already submitted feedback on this item; edit it instead.")
        if row.status == "assigned":  # conditional: of two skips at once (a double click) one gives the slot back
            given = conn.execute(update(annotations).where(annotations.c.id == row.id,
                                                           annotations.c.status == "assigned").values(status="skipped"))
            if given.rowcount == 1:
                conn.execute(update(items).where(items.c.id == item_id).values(claims=items.c.claims - 1))


def my_annotations(engine: Engine, person_id: int) -> list[tuple[Item, Annotation]]:
    """This person's submitted feedback, newest first."""
    with read(engine) as conn:
        rows = conn.execute(select(items, annotations.c.status, annotations.c.answer.label("seen"),
                                   annotations.c.verdict, annotations.c.text, annotations.c.corrected_answer,
                                   annotations.c.submitted_at, annotators.c.name.label("who"))
                            .join(annotations, annotations.c.item_id == items.c.id)
                            .join(annotators, annotators.c.id == annotations.c.annotator_id)
                            .where(annotations.c.annotator_id == person_id, annotations.c.status == "done")
                            .order_by(annotations.c.submitted_at.desc())).all()
    return [(_item(r), Annotation(r.id, r.who, r.status, r.seen, r.verdict, r.text, r.corrected_answer,
                                  r.submitted_at, r.question_id, r.sample)) for r in rows]


def progress(engine: Engine, person_id: int, per_item: int) -> dict[str, int]:
    """What one person has done, and how far the whole team is."""
    with read(engine) as conn:
        mine = dict(conn.execute(select(annotations.c.status, func.count()).where(
            annotations.c.annotator_id == person_id).group_by(annotations.c.status)).all())
        total = conn.execute(select(func.count()).select_from(items)).scalar_one()
        done = select(annotations.c.item_id).where(annotations.c.status == "done").group_by(
            annotations.c.item_id).having(func.count() >= per_item).subquery()
        complete = conn.execute(select(func.count()).select_from(done)).scalar_one()
        taken = exists().where(annotations.c.item_id == items.c.id, annotations.c.annotator_id == person_id)
        available = conn.execute(select(func.count()).select_from(items).where(
            items.c.claims < per_item, ~taken)).scalar_one()
    return {"done": mine.get("done", 0), "skipped": mine.get("skipped", 0), "open": mine.get("assigned", 0),
            "available": available, "total": total, "complete": complete}


def done_annotations(engine: Engine) -> list[Annotation]:
    """All submitted feedback, in train-pool order, then by person."""
    with read(engine) as conn:
        rows = conn.execute(select(annotations, annotators.c.name, items.c.question_id, items.c.sample)
                            .join(annotators, annotators.c.id == annotations.c.annotator_id)
                            .join(items, items.c.id == annotations.c.item_id)
                            .where(annotations.c.status == "done")
                            .order_by(items.c.position, items.c.sample, annotators.c.name)).all()
    return [Annotation(r.item_id, r.name, r.status, r.answer, r.verdict, r.text, r.corrected_answer,
                       r.submitted_at, r.question_id, r.sample) for r in rows]


def import_annotations(engine: Engine, records: list[Annotation]) -> tuple[int, int]:
    """Add submitted feedback made elsewhere, all or nothing; returns (added, already there).

    People unknown here are created without a token (`laffi annotators add` gives them one).
    Imports may take an item past K: they record work already done, they do not assign. A record names its
    item by its answer, (question_id, sample); its item_id is not read.
    """
    added = same = 0
    with write(engine) as conn:
        people = {r.name: r.id for r in conn.execute(select(annotators.c.name, annotators.c.id))}
        for record in records:
            name = answer_name((record.question_id, record.sample))
            if not NAME.match(record.annotator):
                raise StoreError(f"{name}: annotator name {record.annotator!r}: use 1-64 letters, digits, '.', '_', "
                                 "'@' or '-'")
            item = conn.execute(select(items.c.id, items.c.answer).where(items.c.question_id == record.question_id,
                                                                         items.c.sample == record.sample)).first()
            if item is None:
                raise NotFound(f"{name}: no such item in this run's answers")
            # feedback on another answer (another model's, or this one's before it answered again) would train
            # as if this run's model had given that answer
            if record.answer != item.answer:
                raise StoreError(f"{name}: the feedback of {record.annotator} is on the answer {record.answer!r}, and "
                                 f"this run's answer is {item.answer!r}; only feedback on this run's answers is imported")
            if not record.text.strip():  # as the app refuses it
                raise StoreError(f"{name}: the feedback of {record.annotator} has no text; the app asks for one")
            record = replace(record, item_id=item.id)
            if record.annotator not in people:
                people[record.annotator] = conn.execute(insert(annotators).values(
                    name=record.annotator, is_admin=False, created_at=time.time())).inserted_primary_key[0]
            person_id = people[record.annotator]
            row = conn.execute(select(annotations).where(and_(annotations.c.item_id == record.item_id,
                                                              annotations.c.annotator_id == person_id))).first()
            values = dict(status="done", answer=record.answer, verdict=record.verdict, text=record.text,
                          corrected_answer=record.corrected_answer, submitted_at=record.submitted_at or time.time())
            if row is not None and row.status == "done":
                if (row.answer, row.verdict, row.text, row.corrected_answer) != (
                        record.answer, record.verdict, record.text, record.corrected_answer):
                    raise Conflict(f"{record.item_id}: {record.annotator} already has different feedback here; "
                                   "leave the record out of the file, or revise the feedback in the app")
                same += 1
                continue
            if row is None:
                conn.execute(insert(annotations).values(item_id=record.item_id, annotator_id=person_id,
                                                        assigned_at=time.time(), **values))
            else:
                conn.execute(update(annotations).where(annotations.c.id == row.id).values(**values))
            if row is None or row.status == "skipped":  # an open (assigned) one already holds its slot
                conn.execute(update(items).where(items.c.id == record.item_id).values(claims=items.c.claims + 1))
            added += 1
    return added, same
