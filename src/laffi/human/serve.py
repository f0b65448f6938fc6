"""Run the annotation app on waitress, a production WSGI server (threads, no reloader, no debugger).

    laffi serve runs/demo [--db postgresql://me@localhost/laffi] [--host 127.0.0.1] [--port 8000] [--per-item 2]
    laffi serve runs/demo --trusted-proxy 127.0.0.1     # behind an HTTPS proxy on this machine

Opens (creating or upgrading) the database, loads RUN/answers.jsonl as the items to annotate,
prints the address, and serves until interrupted.
"""

from __future__ import annotations

import errno
import logging
import sys

from waitress import create_server

from laffi.config import ConfigError
from laffi.human import store
from laffi.human.app import create_app
from laffi.human.config import ServeConfig
from laffi.human.db import open_engine
from laffi.human.exchange import read_run_items


def serve(config: ServeConfig) -> None:
    examples, answers = read_run_items(config.run_dir)  # before the database: a wrong RUN_DIR creates nothing
    engine = open_engine(config.db, pool_size=config.threads)
    added, updated = store.sync_items(engine, examples, answers)
    app = create_app(config, engine)
    # "Task queue depth is N" on every request that waits for a free thread: load, not trouble.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    proxy = {"trusted_proxy": config.trusted_proxy, "clear_untrusted_proxy_headers": True,
             "trusted_proxy_headers": {"x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"}}
    try:
        server = create_server(app, host=config.host, port=config.port, threads=config.threads,
                               # a backstop only: the app refuses bodies over max_body_bytes with a clear 413
                               max_request_body_size=4 * config.max_body_bytes, ident="laffi",
                               **(proxy if config.trusted_proxy else {}))
    except (OSError, ValueError) as error:  # the port taken (another serve?), an address this machine lacks
        engine.dispose()
        taken = isinstance(error, OSError) and error.errno == errno.EADDRINUSE
        raise ConfigError(f"--host {config.host} --port {config.port}: {error}"
                          + (" (another laffi serve? --port 0 picks a free port)" if taken else "")) from error
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"laffi serve: {added} new item(s), {updated} updated; database {engine.url.render_as_string()}",
          file=sys.stderr)
    # Tests read this line to find a port chosen with --port 0.
    print(f"laffi serve: http://{host}:{server.effective_port}/", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        engine.dispose()
