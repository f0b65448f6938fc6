"""24 annotators at once against one `laffi serve` on loopback, SQLite and PostgreSQL: afterwards
every submission is in the database once, no item has more than K annotations, none is lost.

    python -m pytest tests/human/test_human_concurrency.py -s    # -s prints submissions per second
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import nullcontext

import pytest
from sqlalchemy import select
from support.human_helpers import add_annotator, csrf, item_id_of, laffi, make_run, postgres, serve, sign_in

from laffi.human import db
from laffi.records import Feedback, read_records

CLIENTS, ITEMS, K = 24, 30, 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_annotators_never_exceed_k_and_lose_nothing(tmp_path, backend):
    run = make_run(tmp_path / "run", n_items=ITEMS)
    with postgres() if backend == "postgresql" else nullcontext("") as db_url:
        db_args = ["--db", db_url] if db_url else []
        tokens = {f"p{i:02d}": add_annotator(run, f"p{i:02d}", *db_args) for i in range(CLIENTS)}
        with serve(run, "--per-item", str(K), *db_args) as url:
            sent, errors = [], []
            start = threading.Barrier(CLIENTS + 1)

            def annotator(name: str) -> None:
                try:
                    session = sign_in(url, tokens[name])
                    start.wait()
                    for n in range(ITEMS):
                        page = session.get(url + "annotate")
                        assert page.status_code == 200, page.status_code
                        if 'id="all-done"' in page.text:
                            return
                        item = item_id_of(page)
                        form = {"csrf_token": csrf(page.text), "verdict": "incorrect", "text": f"{name} on {item}"}
                        response = session.post(url + f"items/{item}", data=form, allow_redirects=False)
                        assert response.status_code == 303, (response.status_code, response.text[:200])
                        sent.append((name, item))
                        if n % 4 == 0:  # a double click: the same form again must not add a record
                            again = session.post(url + f"items/{item}", data=form, allow_redirects=False)
                            assert again.status_code == 303
                    errors.append(f"{name}: still offered items after {ITEMS}")
                except Exception as error:  # reported below, with the client's name
                    errors.append(f"{name}: {error!r}")
                    start.abort()

            threads = [threading.Thread(target=annotator, args=(name,)) for name in tokens]
            for thread in threads:
                thread.start()
            start.wait()
            began = time.perf_counter()
            for thread in threads:
                thread.join(timeout=120)
            elapsed = time.perf_counter() - began
            assert not errors, errors

        out = tmp_path / "human.jsonl"
        assert laffi("export-feedback", str(run), "--out", str(out), *db_args)[0] == 0
        stored = read_records(out, Feedback)
        engine = db.open_engine(db_url or f"sqlite:///{run / 'annotations.db'}")
        with db.read(engine) as conn:
            claims = dict(conn.execute(select(db.items.c.id, db.items.c.claims)).all())
        engine.dispose()

    assert len(sent) == ITEMS * K  # every slot was filled, by someone
    assert sorted((f.annotator, f.id) for f in stored) == sorted(sent)  # each submission once, none lost
    assert all(f.text == f"{f.annotator} on {f.id}" and f.source == "human" for f in stored)
    per_item = Counter(f.id for f in stored)
    assert set(per_item.values()) == {K} and len(per_item) == ITEMS  # K each, never more
    assert claims == dict(per_item)
    print(f"\n{backend}: {len(sent)} submissions from {CLIENTS} clients in {elapsed:.2f} s "
          f"= {len(sent) / elapsed:.0f} submissions/s (each with its claim and two page loads)")
