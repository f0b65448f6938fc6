"""The `laffi` subcommands of the human-feedback app; `laffi.cli` registers them.

    laffi serve RUN_DIR [--db URL] [--host 127.0.0.1] [--port 8000] [--per-item K] [--threads 8] [--trusted-proxy ADDR]
    laffi annotators add NAME --run RUN_DIR [--admin] [--db URL]     # prints the token, once
    laffi annotators list --run RUN_DIR [--db URL]
    laffi annotators revoke NAME --run RUN_DIR [--db URL]
    laffi export-feedback RUN_DIR [--db URL] [--out FILE]            # default RUN_DIR/feedback.human.jsonl
    laffi import-feedback RUN_DIR FILE.jsonl [--db URL]

Heavy imports (Flask, SQLAlchemy) happen inside the handlers, so `laffi --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("serve", "annotators", "export-feedback", "import-feedback")


def register(sub) -> None:
    serve = sub.add_parser("serve", help="the web app where people write feedback on the model's answers")
    serve.add_argument("run_dir", help="the run directory (its answers.jsonl are the items)")
    serve.add_argument("--db", default="", help="database URL (default: sqlite in RUN_DIR/annotations.db); "
                                                "postgresql://USER@HOST/DB for PostgreSQL")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free port; the URL is printed)")
    serve.add_argument("--per-item", type=int, default=1, help="K: human annotations wanted per item")
    serve.add_argument("--threads", type=int, default=8, help="server worker threads")
    serve.add_argument("--trusted-proxy", default="", help="the address of an HTTPS proxy in front of the app, whose "
                       "X-Forwarded-Proto, -Host and -Port are then trusted (e.g. 127.0.0.1); without it, forms "
                       "posted through an HTTPS proxy are refused as coming from another site")

    people = sub.add_parser("annotators", help="add, list or revoke the people who annotate")
    action = people.add_subparsers(dest="action", required=True)
    for name, help in (("add", "create a person and print their secret token"),
                       ("list", "everyone, with their progress"),
                       ("revoke", "disable a person's token at once; their work is kept")):
        parser = action.add_parser(name, help=help)
        if name != "list":
            parser.add_argument("name", help="the person's name (letters, digits, . _ @ -)")
        parser.add_argument("--run", dest="run_dir", required=True, help="the run directory")
        parser.add_argument("--db", default="", help="database URL (default: sqlite in the run directory)")
        if name == "add":
            parser.add_argument("--admin", action="store_true", help="may open the admin page")

    export = sub.add_parser("export-feedback", help="write human feedback as Feedback JSONL, with agreement")
    export.add_argument("run_dir")
    export.add_argument("--db", default="")
    export.add_argument("--out", help="output file (default: RUN_DIR/feedback.human.jsonl)")

    load = sub.add_parser("import-feedback", help="load human Feedback JSONL into the app's database")
    load.add_argument("run_dir")
    load.add_argument("file", help="JSONL of Feedback records with source human")
    load.add_argument("--db", default="")


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from laffi.human.db import SchemaError
    from laffi.human.store import StoreError

    try:
        return _run(args)
    except (StoreError, SchemaError, SQLAlchemyError) as error:
        print(f"laffi {args.command}: error: {error}", file=sys.stderr)
        return 2


def _engine(args: argparse.Namespace):
    from laffi.human.config import check_db_url, default_db_url
    from laffi.human.db import open_engine
    from laffi.layout import RunLayout

    RunLayout.existing(args.run_dir)  # before the database: a directory that is not a run gets no annotations.db
    url = check_db_url(args.db or default_db_url(args.run_dir))
    # exporting reads a database: a new empty one (a mistyped --db) would write 0 records over the last export
    if args.command == "export-feedback" and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(f"--db: no annotation database at {url.removeprefix('sqlite:///')} (`laffi serve` "
                                "or `laffi annotators add` starts one)")
    return open_engine(url, pool_size=2)


def _run(args: argparse.Namespace) -> int:
    from laffi.human import exchange, store
    from laffi.human.config import ServeConfig
    from laffi.layout import RunLayout

    if args.command == "serve":
        from laffi.human.serve import serve

        serve(ServeConfig(run_dir=args.run_dir, db=args.db, host=args.host, port=args.port,
                          per_item=args.per_item, threads=args.threads, trusted_proxy=args.trusted_proxy))
        return 0
    if args.command == "import-feedback" and not Path(args.file).is_file():  # before the database is opened
        raise FileNotFoundError(f"{args.file}: no such file of feedback records")
    engine = _engine(args)
    if args.command == "annotators" and args.action == "add":
        token = store.add_annotator(engine, args.name, admin=args.admin)
        print(f"token for {args.name}{' (admin)' if args.admin else ''}, shown only this once:", file=sys.stderr)
        print(token)
    elif args.command == "annotators" and args.action == "revoke":
        store.revoke_annotator(engine, args.name)
        print(f"revoked {args.name}; their submitted feedback is kept")
    elif args.command == "annotators":
        print(f"{'name':24} {'state':9} {'done':>6} {'skipped':>8} {'open':>5}")
        for p in store.list_annotators(engine):
            print(f"{p['name'] + (' (admin)' if p['admin'] else ''):24} {p['state']:9} {p['done']:>6} "
                  f"{p['skipped']:>8} {p['open']:>5}")
    elif args.command == "export-feedback":
        out = args.out or RunLayout(args.run_dir).human_feedback
        exchange.check_run_items(engine, args.run_dir)  # a database of another run's is refused
        records = exchange.export_feedback(engine, out)
        print(f"{len(records)} human feedback records in {out}")
        print(exchange.format_report(exchange.agreement_report(records, exchange.ai_feedback(args.run_dir))))
    elif args.command == "import-feedback":
        added, same = exchange.import_feedback(engine, args.run_dir, args.file)
        print(f"imported {added} feedback records ({same} already there)")
    engine.dispose()
    return 0
