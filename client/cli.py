"""`python -m client`: publish simulated or real events, show stats, list events."""

from __future__ import annotations

import argparse
import array
import functools
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO

import grpc
from aggregator.v1 import aggregator_pb2 as pb
from google.protobuf import json_format
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client import tail
from client.client import AggregatorClient
from client.errors import ClientError
from client.events import make_event, new_event_id
from client.publisher import ACCEPTED, CONFLICT, DUPLICATE, REJECTED, EventResult

_ENVELOPE = ("topic", "event_id", "timestamp", "source", "payload")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client", description="Talk to an aggregator server."
    )
    parser.add_argument("--target", default="localhost:50051", help="server address host:port")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    parser.add_argument("--tls-ca", help="PEM CA bundle to verify the server (implies --tls)")
    parser.add_argument("--tls-cert", help="PEM client certificate, for mutual TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--token",
        default=os.environ.get("AGGREGATOR_TOKEN"),
        help="bearer token (default: $AGGREGATOR_TOKEN)",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    publish = commands.add_parser(
        "publish",
        help="publish simulated events, or JSON lines from a file",
        description=(
            "Without --file, simulate publishers: --count events of which --duplicate-rate "
            "repeat earlier ones. With --file, ship JSON lines: each an object with "
            "'timestamp' (RFC 3339 or epoch seconds), 'payload', and optionally 'topic' "
            "(else --topic), 'event_id' (else derived from the line, so shipping the same file "
            "twice stores nothing twice) and 'source'."
        ),
    )
    publish.add_argument("--count", type=int, default=20_000, help="events to simulate")
    publish.add_argument(
        "--duplicate-rate", type=float, default=0.3, help="share of re-sent events (0..1)"
    )
    publish.add_argument(
        "--topics", default="4", help="number of topics, or a comma-separated list of names"
    )
    publish.add_argument(
        "--sources", default="2", help="number of sources, or a comma-separated list of names"
    )
    publish.add_argument("--streams", type=int, default=2, help="parallel Publish streams")
    publish.add_argument("--batch-size", type=int, default=500, help="events per request")
    publish.add_argument("--rate", type=float, default=0, help="events/s in total; 0 = no limit")
    publish.add_argument("--seed", type=int, default=None, help="seed for the simulation")
    publish.add_argument("--file", help="JSON-lines file to ship; - reads standard input")
    publish.add_argument("--topic", default="", help="topic for lines that have none")
    publish.add_argument("--source", default="", help="source for lines that have none")
    publish.add_argument("--json", action="store_true", help="print the summary as JSON")
    publish.set_defaults(run=_publish)

    stats = commands.add_parser("stats", help="counters per topic and in total")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(run=_stats)

    health = commands.add_parser(
        "health", help="grpc.health.v1 check: exit 0 when the server is SERVING"
    )
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    health.add_argument("--timeout", type=float, default=5.0)
    health.set_defaults(run=_health)

    events = commands.add_parser("events", help="stored events of a topic, oldest first")
    events.add_argument("--topic", required=True)
    events.add_argument("--limit", type=int, default=100, help="at most this many (0 = all)")
    events.add_argument("--json", action="store_true", help="print JSON lines")
    events.set_defaults(run=_events)
    tail.register(commands, _client)
    return parser


# -- publish ---------------------------------------------------------------------------


@dataclass
class _Tally:
    """Results as they arrive, from many threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("ACCEPTED", "DUPLICATE", "REJECTED", "CONFLICT", "FAILED"), 0
        )
    )
    stored_keys: set[tuple[str, str]] = field(default_factory=set)
    accepted_twice: int = 0
    accepted_keys: set[tuple[str, str]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def record(self, key: tuple[str, str], where: str, future: Future[EventResult]) -> None:
        error = future.exception()
        with self.lock:
            if error is not None:
                self.counts["FAILED"] += 1
                self.problems.append(f"{where}: {error}")
                return
            result = future.result()
            self.counts[result.name] += 1
            if result.status in (ACCEPTED, DUPLICATE):
                self.stored_keys.add(key)
            if result.status == ACCEPTED:
                if key in self.accepted_keys:
                    self.accepted_twice += 1
                self.accepted_keys.add(key)
            if result.status in (REJECTED, CONFLICT):
                self.problems.append(f"{where}: {result.name}: {result.reason}")


def _names(spec: str, prefix: str) -> list[str]:
    if spec.isdigit():
        return [f"{prefix}-{i}" for i in range(max(1, int(spec)))]
    return [name.strip() for name in spec.split(",") if name.strip()]


def _plan(count: int, duplicate_rate: float, seed: int | None) -> tuple[array.array[int], int]:
    """For each position, the index of the distinct event sent there; and the distinct count.

    Exactly round(count * duplicate_rate) positions repeat an event sent earlier.
    """
    rng = random.Random(seed)
    repeats = set(rng.sample(range(1, count), min(count - 1, round(count * duplicate_rate))))
    plan = array.array("I")
    fresh = 0
    for position in range(count):
        if position in repeats:
            plan.append(rng.randrange(fresh))
        else:
            plan.append(fresh)
            fresh += 1
    return plan, fresh  # fresh: how many distinct events the plan sends


def _simulated(
    args: argparse.Namespace, plan: array.array[int], stream: int
) -> Iterator[tuple[str, pb.Event]]:
    """This stream's share of the plan; a repeat is identical to its original."""
    topics, sources = _names(args.topics, "topic"), _names(args.sources, "source")
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for position in range(stream, len(plan), args.streams):
        k = plan[position]
        yield (
            f"simulated #{k}",
            make_event(
                topics[k % len(topics)],
                {"seq": k, "level": ("info", "warn", "error")[k % 3], "msg": f"event {k}"},
                event_id=f"{args.run_id}-{k}",
                timestamp=base + timedelta(milliseconds=k),
                source=sources[k % len(sources)],
            ),
        )


def _file_events(
    handle: IO[str], default_topic: str, default_source: str, tally: _Tally
) -> Iterator[tuple[str, pb.Event]]:
    for number, line in enumerate(handle, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            yield f"line {number}", _parse_line(text, default_topic, default_source)
        except ValueError as exc:
            with tally.lock:
                tally.problems.append(f"line {number}: skipped: {exc}")


def _parse_line(text: str, default_topic: str, default_source: str) -> pb.Event:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    topic = obj.get("topic", default_topic)
    if not isinstance(topic, str) or not topic:
        raise ValueError("no topic (add one, or pass --topic)")
    stamp = obj.get("timestamp")
    if isinstance(stamp, bool) or stamp is None:
        raise ValueError("no timestamp")
    try:
        if isinstance(stamp, int | float):
            when = datetime.fromtimestamp(stamp, UTC)
        elif isinstance(stamp, str):
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
        else:
            raise ValueError
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"timestamp {stamp!r} is not RFC 3339 or epoch seconds") from None
    payload = obj.get("payload", {})
    payload_text = payload if isinstance(payload, str) else json.dumps(payload)
    event_id = obj.get("event_id") or hashlib.sha256(text.encode()).hexdigest()[:32]
    source = obj.get("source", default_source)
    if not isinstance(event_id, str) or not isinstance(source, str):
        raise ValueError("event_id and source must be strings")
    return make_event(topic, payload_text, event_id=event_id, timestamp=when, source=source)


def _client(args: argparse.Namespace) -> AggregatorClient:
    return AggregatorClient(
        args.target,
        tls=args.tls,
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        token=args.token,
    )


def _publish(args: argparse.Namespace) -> int:
    tally = _Tally()
    console = Console(stderr=True)
    args.run_id = new_event_id()[:18]
    if args.file:
        handle = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        sources = [_file_events(handle, args.topic, args.source, tally)]
        total = None
    else:
        if not 0 <= args.duplicate_rate < 1 or args.count < 1:
            raise SystemExit("--count must be positive and --duplicate-rate in [0, 1)")
        args.streams = max(1, args.streams)
        plan, args.distinct = _plan(args.count, args.duplicate_rate, args.seed)
        sources = [_simulated(args, plan, s) for s in range(args.streams)]
        total = args.count
    started = time.perf_counter()
    with _client(args) as agg:
        workers = [
            threading.Thread(
                target=_pump, args=(agg, events, args, len(sources), tally), daemon=True
            )
            for events in sources
        ]
        for worker in workers:
            worker.start()
        _show_progress(console, workers, tally, total)
    elapsed = time.perf_counter() - started
    if args.file and args.file != "-":
        handle.close()
    return _summary(args, tally, elapsed, console)


def _pump(
    agg: AggregatorClient,
    events: Iterator[tuple[str, pb.Event]],
    args: argparse.Namespace,
    streams: int,
    tally: _Tally,
) -> None:
    """Publish one source of events over its own stream, paced to its share of --rate."""
    interval = streams / args.rate if args.rate > 0 else 0.0
    with agg.publisher(max_batch_events=args.batch_size) as publisher:
        started = time.monotonic()
        for n, (where, event) in enumerate(events):
            if interval:
                ahead = started + n * interval - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            record = functools.partial(tally.record, (event.topic, event.event_id), where)
            publisher.publish(event).add_done_callback(record)


def _show_progress(
    console: Console, workers: list[threading.Thread], tally: _Tally, total: int | None
) -> None:
    columns = [
        TextColumn("[bold]publishing"),
        BarColumn(),
        TextColumn(
            "{task.completed:>9,.0f}/{task.total:,.0f}" if total else "{task.completed:,.0f}"
        ),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[rate]:>10,.0f} events/s"),
        TimeElapsedColumn(),
    ]
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("publish", total=total, counts="", rate=0.0)
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(0.2)
            done = tally.done
            c = tally.counts
            progress.update(
                task,
                completed=done,
                counts=(
                    f"[green]acc {c['ACCEPTED']:,}[/] [cyan]dup {c['DUPLICATE']:,}[/] "
                    f"[red]rej {c['REJECTED']:,}[/] [yellow]conf {c['CONFLICT']:,}[/]"
                ),
                rate=done / max(1e-9, time.perf_counter() - started),
            )


def _summary(args: argparse.Namespace, tally: _Tally, elapsed: float, console: Console) -> int:
    c = tally.counts
    accepted = len(tally.accepted_keys)
    pre_existing = len(tally.stored_keys) - accepted  # stored before this run: DUPLICATE only
    expected = None if args.file else args.distinct
    exactly_once = tally.accepted_twice == 0 and c["FAILED"] == 0
    if expected is not None:
        exactly_once = exactly_once and accepted + pre_existing == expected
    summary: dict[str, object] = {
        "sent": tally.done,
        "accepted": c["ACCEPTED"],
        "duplicate": c["DUPLICATE"],
        "rejected": c["REJECTED"],
        "conflict": c["CONFLICT"],
        "failed": c["FAILED"],
        "distinct_sent": expected,
        "distinct_stored": len(tally.stored_keys),
        "pre_existing": pre_existing,
        "skipped_lines": sum("skipped" in p for p in tally.problems),
        "seconds": round(elapsed, 3),
        "events_per_second": round(tally.done / elapsed) if elapsed else 0,
        "exactly_once": exactly_once,
    }
    for problem in tally.problems[:50]:
        console.print(f"[yellow]{escape(problem)}[/]", highlight=False)
    if len(tally.problems) > 50:
        console.print(f"... and {len(tally.problems) - 50} more")
    if args.json:
        print(json.dumps({**summary, "problems": tally.problems[:1000]}))
    else:
        table = Table(title="publish summary", show_header=False)
        for key, value in summary.items():
            shown = f"{value:,}" if type(value) is int else str(value)
            table.add_row(key.replace("_", " "), shown)
        Console().print(table)
    return 0 if exactly_once and not tally.problems else 1


# -- stats and events --------------------------------------------------------------------

_COUNTERS = ("received", "accepted", "duplicates", "rejected", "conflicts")


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as agg:
        stats = agg.stats()
    if args.json:
        print(json_format.MessageToJson(stats, always_print_fields_with_no_presence=True))
        return 0
    table = Table(title=f"uptime {stats.uptime_seconds:,.0f}s")
    table.add_column("topic")
    for name in _COUNTERS:
        table.add_column(name, justify="right")
    for topic in stats.topics:
        table.add_row(topic.topic, *(f"{getattr(topic, n):,}" for n in _COUNTERS))
    table.add_row("[bold]total", *(f"[bold]{getattr(stats, n):,}" for n in _COUNTERS))
    Console().print(table)
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args) as agg:
        status = agg.health(args.service, timeout=args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


def _events(args: argparse.Namespace) -> int:
    shown = 0
    table = Table("sequence", "event_id", "timestamp", "source", "payload")
    with _client(args) as agg:
        page_size = min(1000, args.limit) if args.limit > 0 else 1000
        for stored in agg.list_events(args.topic, page_size=page_size):
            if args.limit and shown >= args.limit:
                break
            shown += 1
            e = stored.event
            if args.json:
                print(json_format.MessageToJson(stored, indent=None))
            else:
                table.add_row(
                    str(stored.sequence),
                    e.event_id,
                    e.timestamp.ToDatetime(UTC).isoformat(),
                    e.source,
                    e.payload,
                )
    if not args.json:
        Console().print(table)
    return 0
