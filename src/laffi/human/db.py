"""The annotation database: one SQLAlchemy engine for SQLite or PostgreSQL, and its schema.

    engine = open_engine("sqlite:///runs/demo/annotations.db")   # creates / upgrades the schema
    with write(engine) as conn: ...                               # a transaction that will write

SQLite runs in WAL mode (readers never wait for the writer) with synchronous=FULL, so a commit
is on disk before the app answers. Its write transactions start with BEGIN IMMEDIATE: they take
the write lock up front and wait for it (busy_timeout) instead of failing when two threads
upgrade a read lock at once. PostgreSQL needs no such care; assignment stays correct there
through conditional updates and row locks (store.py).

The schema carries a version in `meta`; `upgrade` applies the steps a database has not had yet,
so an older annotations.db is upgraded in place when the app opens it. Step 1 creates the tables as
the first release made them, never the live ones below, so every later step finds what it expects.
"""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    update,
)

metadata = MetaData()

meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

annotators = Table(
    "annotators", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    # sha256 of the token: tokens are 256-bit random, so a fast hash is enough and allows lookup.
    # NULL for people whose work was imported and who never got a token.
    Column("token_hash", String(64), unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

def _first_item_columns() -> list[Column]:
    """The items table's columns as the first release created it (step 1 makes them; step 3 adds two)."""
    return [
        # the answer's name (laffi.records.answer_name): the question id for sample 0, "ID#sN" for sample N
        Column("id", String(256), primary_key=True),
        Column("position", Integer, nullable=False),  # order of the train pool; items are handed out in it
        Column("title", Text, nullable=False),
        Column("context", Text, nullable=False),
        Column("question", Text, nullable=False),
        Column("gold", Text, nullable=False),  # JSON list of the gold answers
        Column("answer", Text, nullable=False),  # the model's answer
        # annotations that hold a slot: assigned or done. Never above K when assigned by the app.
        Column("claims", Integer, nullable=False, default=0),
    ]


# An item is one answer of the model: (question id, sample), one of the question's generate.samples answers.
items = Table(
    "items", metadata,
    *_first_item_columns(),
    Column("question_id", String(256), nullable=False),
    Column("sample", Integer, nullable=False, default=0),
)

annotations = Table(
    "annotations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(256), ForeignKey("items.id"), nullable=False),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("status", String(16), nullable=False),  # assigned | done | skipped
    Column("answer", Text, nullable=False),  # the answer the annotator saw
    Column("verdict", String(32)),
    Column("text", Text),
    Column("corrected_answer", Text),
    Column("assigned_at", Float, nullable=False),
    Column("submitted_at", Float),
    UniqueConstraint("item_id", "annotator_id", name="one_annotation_per_person"),
)


def _create_tables(conn: Connection) -> None:
    first = MetaData()  # the first release's tables: the items table without what later steps added
    tables = [annotators.to_metadata(first), Table("items", first, *_first_item_columns()),
              annotations.to_metadata(first)]
    first.create_all(conn, tables=tables)
    conn.execute(insert(meta).values(key="secret", value=secrets.token_hex(32)))


def _index_annotator_status(conn: Connection) -> None:
    # Progress pages and "your open item" look annotations up by person and status. Plain DDL: an
    # Index object would attach itself to the table and reappear in step 1 of later databases.
    conn.exec_driver_sql("CREATE INDEX annotations_by_person ON annotations (annotator_id, status)")


def _items_per_answer(conn: Connection) -> None:
    # generate.samples: a question can have several answers, and an item is one of them. An item made
    # before is the question's only answer, sample 0, and keeps its id (the question id), so its
    # annotations and links stay as they were.
    conn.exec_driver_sql("ALTER TABLE items ADD COLUMN question_id VARCHAR(256) NOT NULL DEFAULT ''")
    conn.exec_driver_sql("ALTER TABLE items ADD COLUMN sample INTEGER NOT NULL DEFAULT 0")
    conn.exec_driver_sql("UPDATE items SET question_id = id")
    conn.exec_driver_sql("CREATE UNIQUE INDEX items_by_answer ON items (question_id, sample)")


# Step i brings a database from version i to i + 1. Append; never edit a released step.
STEPS: list[Callable[[Connection], None]] = [_create_tables, _index_annotator_status, _items_per_answer]
SCHEMA_VERSION = len(STEPS)


class SchemaError(RuntimeError):
    """A database this version of laffi cannot use."""


def upgrade(engine: Engine, to_version: int = SCHEMA_VERSION) -> int:
    """Create or upgrade the schema in one transaction; returns the version it is now at."""
    with write(engine) as conn:
        meta.create(conn, checkfirst=True)
        row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaError(f"{engine.url.render_as_string()}: schema version {version} is newer than this "
                              f"laffi knows ({SCHEMA_VERSION}); upgrade laffi")
        for step in STEPS[version:to_version]:
            step(conn)
        if to_version != version:
            if row:
                conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(to_version)))
            else:
                conn.execute(insert(meta).values(key="schema_version", value=str(to_version)))
        return max(version, to_version)


def make_engine(url: str, pool_size: int = 8) -> Engine:
    """An engine without touching the schema (see `open_engine`)."""
    if url.startswith("sqlite:///"):
        if url.removeprefix("sqlite:///") in ("", ":memory:"):  # annotations kept in memory die with the process
            raise SchemaError(f"--db {url}: needs a file path, e.g. sqlite:///runs/demo/annotations.db")
        file = Path(url.removeprefix("sqlite:///").split("?")[0])  # sqlite:////abs/path is /abs/path
        if file.is_dir() or not file.parent.is_dir():
            raise SchemaError(f"--db {url}: {file} is a folder" if file.is_dir() else
                              f"--db {url}: no folder {file.parent} to keep {file.name} in (sqlite:///REL/PATH is "
                              "relative to here, sqlite:////ABS/PATH absolute)")
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                               connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if not url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise SchemaError(f"--db {url}: a SQLite file (sqlite:///PATH) or PostgreSQL (postgresql://...) is supported")
    try:
        import psycopg  # noqa: F401
    except ImportError as error:
        raise SchemaError("--db postgresql://...: needs psycopg; pip install 'laffi[postgres]'") from error
    if url.startswith("postgresql://"):  # psycopg 3, not SQLAlchemy's default psycopg2
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def open_engine(url: str, pool_size: int = 8) -> Engine:
    engine = make_engine(url, pool_size)
    upgrade(engine)
    return engine


def _sqlite_connect(dbapi_connection, _record) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (the sqlite3 module would defer it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("laffi_write") else "BEGIN")


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A transaction that writes: committed when the block ends, rolled back if it raises."""
    with engine.connect() as conn:
        conn.execution_options(laffi_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: one consistent snapshot."""
    with engine.connect() as conn:
        with conn.begin():
            yield conn
