"""`python -m bench.floor`: the durable floor, the cheapest server that stores each event once.

Where the two ceilings (bench.ceiling, bench.http_ceiling) answer without storing anything,
this one answers after commit, doing the least any such server must: it serves the same
proto on `grpc.aio` (Publish, PublishBatch) and POST /publish with the no-work FastAPI app's
event model, on one event loop; two flush threads each take everything pending and write
it with one statement in autocommit (a transaction, one round trip): INSERT … SELECT FROM
unnest(…) ON CONFLICT (topic, event_id) DO NOTHING RETURNING, into a table of its own
(`floor_events`: the key and the content, nothing else). The first copy of a returned key is
ACCEPTED, any other DUPLICATE.

What it leaves out is what the aggregator adds on top, so the same load against the three
splits the aggregator's cost into storage as such (ceiling → floor) and the aggregator's
own obligations (floor → ours): the batch and request ledgers (an exact answer after a cut
COMMIT or a resend), exact counters, CONFLICT detection, stream order, gap-free delivery
(sequence numbers, notifications), fair share between publishers, bounded memory. It reads
DATABASE_URL like the server does, and takes the server's --host, --port and --http-port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any, TypeAlias

import grpc
import grpc.aio
import orjson
import psycopg
import uvicorn
from fastapi import FastAPI
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator.v1 import aggregator_pb2 as pb
from bench.ceiling import SERVICE
from bench.http_ceiling import Event

Status: TypeAlias = pb.EventStatus.ValueType
_ACCEPTED, _DUPLICATE = pb.EVENT_STATUS_ACCEPTED, pb.EVENT_STATUS_DUPLICATE
_NAMES: dict[Status, str] = {_ACCEPTED: "ACCEPTED", _DUPLICATE: "DUPLICATE"}
_TABLE = """CREATE TABLE IF NOT EXISTS floor_events (
    topic text NOT NULL, event_id text NOT NULL, ts timestamptz NOT NULL,
    source text NOT NULL, payload jsonb NOT NULL, PRIMARY KEY (topic, event_id))"""
_WRITE = """INSERT INTO floor_events (topic, event_id, ts, source, payload)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::jsonb[])
ON CONFLICT (topic, event_id) DO NOTHING
RETURNING topic, event_id"""

Row = tuple[str, str, Any, str, str]  # topic, event_id, timestamp, source, payload (JSON)
Waiter = tuple[list[Row], "asyncio.Future[list[Status]]"]


class GroupCommit:
    """Requests queued from the loop; each free flush thread writes all of them at once."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, workers: int = 2) -> None:
        self._loop = loop
        self._ready = threading.Condition()
        self._pending: list[Waiter] = []
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_TABLE)
        for n in range(workers):
            threading.Thread(target=self._run, args=(url,), name=f"flush-{n}", daemon=True).start()

    async def write(self, rows: list[Row]) -> list[Status]:
        """Each row's status, once committed."""
        done: asyncio.Future[list[Status]] = self._loop.create_future()
        with self._ready:
            self._pending.append((rows, done))
            self._ready.notify()
        return await done

    def _run(self, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
            while True:
                with self._ready:
                    while not self._pending:
                        self._ready.wait()
                    batch, self._pending = self._pending, []
                columns: tuple[list[Any], ...] = ([], [], [], [], [])
                for rows, _ in batch:
                    for row in rows:
                        for column, value in zip(columns, row, strict=True):
                            column.append(value)
                try:
                    cur.execute(_WRITE, columns)
                    stored = set(cur.fetchall())
                except psycopg.Error as exc:
                    self._loop.call_soon_threadsafe(_fail, batch, exc)
                else:
                    self._loop.call_soon_threadsafe(_settle, batch, stored)


def _settle(batch: list[Waiter], stored: set[tuple[Any, ...]]) -> None:
    """ACCEPTED for the first copy of each key stored now, in arrival order."""
    for rows, done in batch:
        statuses = []
        for row in rows:
            key = (row[0], row[1])
            if key in stored:
                stored.discard(key)
                statuses.append(_ACCEPTED)
            else:
                statuses.append(_DUPLICATE)
        if not done.done():
            done.set_result(statuses)


def _fail(batch: list[Waiter], exc: Exception) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(exc)


def _rows(request: pb.PublishRequest) -> list[Row]:
    return [
        (e.topic, e.event_id, e.timestamp.ToDatetime(tzinfo=UTC), e.source, e.payload or "{}")
        for e in request.events
    ]


def _handlers(store: GroupCommit) -> grpc.GenericRpcHandler:
    async def publish(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        # Read on while earlier requests commit; answer in order.
        answers: asyncio.Queue[tuple[int, asyncio.Task[list[Status]]] | None] = asyncio.Queue()

        async def read() -> None:
            async for raw in requests:
                request = pb.PublishRequest.FromString(raw)
                task = asyncio.ensure_future(store.write(_rows(request)))
                answers.put_nowait((request.sequence, task))
            answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        while (item := await answers.get()) is not None:
            sequence, task = item
            yield pb.PublishResponse(sequence=sequence, statuses=await task).SerializeToString()
        await reader

    async def publish_batch(raw: bytes, context: Any) -> bytes:
        request = pb.PublishRequest.FromString(raw)
        statuses = await store.write(_rows(request))
        return pb.PublishResponse(sequence=request.sequence, statuses=statuses).SerializeToString()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Publish": grpc.stream_stream_rpc_method_handler(publish),
            "PublishBatch": grpc.unary_unary_rpc_method_handler(publish_batch),
        },
    )


def http_app(store: GroupCommit) -> FastAPI:
    """bench.http_ceiling's app, answering after commit."""
    app = FastAPI()

    @app.post("/publish")
    async def publish(body: Event | list[Event]) -> dict[str, Any]:
        events = body if isinstance(body, list) else [body]
        statuses = await store.write(
            [
                (e.topic, e.event_id, e.timestamp, e.source, orjson.dumps(e.payload).decode())
                for e in events
            ]
        )
        accepted = statuses.count(_ACCEPTED)
        return {
            "received": len(events),
            "accepted": accepted,
            "duplicates": len(events) - accepted,
            "rejected": 0,
            "conflicts": 0,
            "results": [{"status": _NAMES[s]} for s in statuses],
        }

    @app.get("/health")
    async def healthy() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def serve(url: str, host: str, port: int, http_port: int, stop: asyncio.Event) -> None:
    store = GroupCommit(url, asyncio.get_running_loop())
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(store),))
    checks = health.aio.HealthServicer()
    # What ServerProcess waits for.
    await checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    web = None
    if http_port:
        web = uvicorn.Server(
            uvicorn.Config(
                http_app(store), host=host, port=http_port, log_level="warning", access_log=False
            )
        )
        web_task = asyncio.ensure_future(web.serve())
    print(f"serving {SERVICE} (durable floor) on {host}:{bound}", flush=True)
    await stop.wait()
    if web is not None:
        web.should_exit = True
        await web_task
    await server.stop(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0, help="0: no HTTP")
    args = parser.parse_args(argv)
    url = os.environ.get("DATABASE_URL")
    if not url:
        parser.error("DATABASE_URL names the database to write")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(url, args.host, args.port, args.http_port, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
