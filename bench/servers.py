"""The servers parts 2 and 3 measure, each run in its own process:

- the *floor*: the least any request of the compute API can cost on this machine, an HTTP
  round trip through the same stack (uvicorn + Starlette, sync handler in the thread pool) plus,
  for a write, one committed INSERT through `attachfs.db.engine.make_engine` (same SQLite
  pragmas, same BEGIN IMMEDIATE), for a read one SELECT of a row by primary key;
- the compute API alone (no agent, no guests, no metadata service).

    python -m bench.servers floor --db-url URL --port PORT
    python -m bench.servers api --state-dir DIR --db-url URL --port PORT
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

FLOOR_TABLE = "bench_floor"
ROOT = Path(__file__).resolve().parents[1]  # the repository: where `-m bench.servers` imports


def floor_argv(db_url: str, port: int, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "bench.servers", "floor", "--db-url", db_url,
            "--port", str(port), "--workers", str(workers)]


def api_argv(state_dir: Path, db_url: str, port: int, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "bench.servers", "api", "--state-dir", str(state_dir),
            "--db-url", db_url, "--port", str(port), "--workers", str(workers)]


def floor_app(db_url: str) -> Any:
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from attachfs.db.engine import make_engine

    engine = make_engine(db_url)
    meta = MetaData()
    table = Table(FLOOR_TABLE, meta, Column("id", Integer, primary_key=True, autoincrement=True),
                  Column("payload", String(255)))
    meta.create_all(engine)
    with engine.begin() as conn:
        if conn.scalar(select(table.c.id).where(table.c.id == 1)) is None:
            # no explicit id: PostgreSQL's sequence would hand out 1 again to the next write
            conn.execute(insert(table).values(payload="first row"))

    def ping(_request: Request) -> Response:  # HTTP only, no database
        return JSONResponse({"ok": True})

    def write(_request: Request) -> Response:  # one committed INSERT
        with engine.begin() as conn:
            row_id = conn.execute(insert(table).values(payload="x" * 64)).inserted_primary_key
        return JSONResponse({"id": row_id[0] if row_id else None}, status_code=201)

    def read(_request: Request) -> Response:  # one SELECT by primary key, in a transaction
        with engine.begin() as conn:
            row = conn.execute(select(table).where(table.c.id == 1)).one()
        return JSONResponse({"id": row.id, "payload": row.payload})

    return Starlette(routes=[Route("/ping", ping), Route("/write", write, methods=["POST"]),
                             Route("/read", read)])


def api_app(state_dir: str, db_url: str) -> Any:
    """The compute API alone: no agent, no guests, no metadata service."""
    from attachfs.config import load_config
    from attachfs.service import build_api, open_parts, settle_heap

    config = load_config(None, {"state_dir": state_dir, "database_url": db_url,
                                "log_level": "WARNING"})
    app = build_api(open_parts(config))
    settle_heap()  # as `attachfs api` does
    return app


WORKER_ARGS = "ATTACHFS_BENCH_SERVER"  # mode, database and state dir, for each worker


def worker_app() -> Any:
    """One of `--workers N` processes (uvicorn calls it in each)."""
    mode, db_url, state_dir = json.loads(os.environ[WORKER_ARGS])
    return floor_app(db_url) if mode == "floor" else api_app(state_dir, db_url)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m bench.servers")
    p.add_argument("mode", choices=["floor", "api"])
    p.add_argument("--db-url", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state-dir", default="")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    if args.workers == 1:
        app = floor_app(args.db_url) if args.mode == "floor" else api_app(args.state_dir,
                                                                          args.db_url)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
        return
    # As `attachfs api --workers N` does (attachfs/service.py run_api): one listening
    # socket made with IPPROTO_TCP, so that the workers' connections get TCP_NODELAY.
    from uvicorn.supervisors import Multiprocess

    if args.mode == "floor":
        floor_app(args.db_url)  # the table, made once before the workers start
    else:
        api_app(args.state_dir, args.db_url)  # the migrations, once
    os.environ[WORKER_ARGS] = json.dumps([args.mode, args.db_url, args.state_dir])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.set_inheritable(True)
    Multiprocess(uvicorn.Config("bench.servers:worker_app", factory=True,
                                workers=args.workers, log_level="warning"),
                 sockets=[sock]).run()


if __name__ == "__main__":
    main()
