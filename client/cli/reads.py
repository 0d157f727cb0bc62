"""`stats`, `events` and `health`: reading back what the server holds."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC

from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from aggregator.client.cli import exit_codes, shapes
from aggregator.client.client import AggregatorClient
from aggregator.v1 import aggregator_pb2 as pb

COUNTERS = ("received", "accepted", "duplicates", "rejected", "conflicts")

Connect = Callable[[], AggregatorClient]


def _console() -> Console:
    # Not a terminal (a pipe, a file): as wide as the table needs, so nothing is cut.
    return Console() if sys.stdout.isatty() else Console(width=100_000)


def stats(args: argparse.Namespace, connect: Connect) -> int:
    with connect() as agg:
        response = agg.stats(topic=args.topic or "")
        topics = list(response.topics)
        page = response
        while page.next_page_token:  # totals are exact on every page; topics come in pages
            page = agg.stats(page_token=page.next_page_token, topic=args.topic or "")
            topics.extend(page.topics)
    if args.topic is not None and not topics:
        print(f"error: no events stored for topic {args.topic!r}", file=sys.stderr)
        return exit_codes.FAILED
    if args.json:
        # protobuf's JSON mapping, but counters as JSON numbers (it writes 64-bit integers as
        # strings, which scripts then have to convert).
        document = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
        document.update({name: getattr(response, name) for name in COUNTERS})
        document.pop("nextPageToken", None)  # every page is in `topics`
        document["topics"] = [
            {"topic": t.topic, **{name: getattr(t, name) for name in COUNTERS}} for t in topics
        ]
        print(json.dumps(document["topics"][0] if args.topic is not None else document))
        return exit_codes.OK
    table = Table(title=f"uptime {response.uptime_seconds:,.0f}s")
    table.add_column("topic", overflow="fold")
    for name in COUNTERS:
        table.add_column(name, justify="right")
    for topic in topics:
        table.add_row(topic.topic, *(f"{getattr(topic, n):,}" for n in COUNTERS))
    if args.topic is None:
        table.add_row("[bold]total", *(f"[bold]{getattr(response, n):,}" for n in COUNTERS))
    _console().print(table)
    return exit_codes.OK


def health(args: argparse.Namespace, connect: Connect) -> int:
    with connect() as agg:
        status = agg.health(args.service, timeout=args.timeout)
    print(status)
    return exit_codes.OK if status == "SERVING" else exit_codes.FAILED


def events(args: argparse.Namespace, connect: Connect) -> int:
    shown = 0
    more = False
    table = Table("sequence", "event_id", "timestamp", "source", "payload")
    for column in table.columns:
        column.overflow = "fold"
    with connect() as agg:
        page_size = min(1000, args.limit + 1) if args.limit > 0 else 1000
        listing = agg.list_events(
            args.topic, page_size=page_size, start_time=args.since, end_time=args.until
        )
        for stored in listing:
            if args.limit and shown >= args.limit:
                more = True  # one more than asked for exists
                break
            shown += 1
            if args.json:
                print(shapes.json_line(stored))
            else:
                table.add_row(*_row(stored))
    if not args.json:
        _console().print(table)
    if more:
        print(
            f"showing the first {args.limit} events in delivery order; there are more "
            "(--limit N for more, --limit 0 for all)",
            file=sys.stderr,
        )
    return exit_codes.OK


def _row(stored: pb.StoredEvent) -> tuple[str, ...]:
    e = stored.event
    return (
        str(stored.sequence),
        e.event_id,
        e.timestamp.ToDatetime(UTC).isoformat(),
        e.source,
        e.payload,
    )
