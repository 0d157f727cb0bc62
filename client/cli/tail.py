"""`python -m client tail`: print a topic's events in gap-free order, optionally live.

Without --follow it prints what is stored (from the beginning, or after --after) and
stops; with --follow it keeps printing new events as they commit (from now, unless
--from-start or --after) until Ctrl-C (exit 130). Either way it ends by printing the cursor
on standard error, to pass as --after next time: nothing is skipped or printed twice.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC

from aggregator.client.cli import exit_codes, shapes
from aggregator.client.client import AggregatorClient
from aggregator.v1 import aggregator_pb2 as pb

Connect = Callable[[], AggregatorClient]

HELP = "a topic's events in delivery order; --follow for new ones as they commit"


def add_arguments(tail: argparse.ArgumentParser) -> None:
    """The `tail` command's own options."""
    tail.add_argument("--topic", required=True)
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--from-start",
        action="store_true",
        help="from the topic's first event (the default without --follow)",
    )
    start.add_argument("--after", default="", help="continue after this cursor")
    tail.add_argument("--json", action="store_true", help="print JSON lines")


def run(args: argparse.Namespace, connect: Connect) -> int:
    cursor = args.after
    code = exit_codes.OK
    with connect() as agg:
        if args.follow:  # else subscribe would keep retrying a target never reached
            agg.wait_for_server(timeout=0)
        try:
            if args.follow:
                from_now = not (args.from_start or args.after)
                for response in agg.subscribe(args.topic, after=args.after, from_now=from_now):
                    _print(response.events, args.json)
                    cursor = response.cursor
            else:
                for page in _pages(agg, args.topic, args.after):
                    _print(page.events, args.json)
                    cursor = page.cursor
        except KeyboardInterrupt:
            code = exit_codes.INTERRUPTED  # the usual end of --follow, still an interruption
        finally:
            print(f"cursor: {cursor}", file=sys.stderr, flush=True)
    return code


def _pages(agg: AggregatorClient, topic: str, after: str) -> Iterator[pb.ListEventsResponse]:
    request = pb.ListEventsRequest(topic=topic, page_size=1000, page_token=after)
    while True:
        page: pb.ListEventsResponse = agg.stub.ListEvents(request, timeout=30)
        yield page
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def _print(events: Iterable[pb.StoredEvent], as_json: bool) -> None:
    lines = []
    for stored in events:
        e = stored.event
        if as_json:
            lines.append(shapes.json_line(stored))
        else:
            when = e.timestamp.ToDatetime(UTC).isoformat()
            lines.append(f"{when} {e.topic} {e.event_id} {e.source} {e.payload}")
    if lines:
        print("\n".join(lines), flush=True)
