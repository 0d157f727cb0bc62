"""`publish`: simulated publishers or a JSON-lines file over parallel Publish streams.

Live progress on stderr; at the end (or at Ctrl-C) a summary of what was acknowledged and
what was not, checked against what was sent: every distinct event stored exactly once.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import BinaryIO

from rich import filesize
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aggregator.client import workload
from aggregator.client.cli import exit_codes, jsonlines
from aggregator.client.client import AggregatorClient
from aggregator.client.errors import ClientError, PublisherClosed, Unreachable
from aggregator.client.events import new_event_id
from aggregator.client.publisher import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
    REJECTED,
    EventResult,
    Publisher,
)
from aggregator.v1 import aggregator_pb2 as pb

Source = Iterator[tuple[str, pb.Event]]  # (where it came from, the event)


@dataclass
class Tally:
    """Results as they arrive, from many threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("ACCEPTED", "DUPLICATE", "REJECTED", "CONFLICT", "FAILED"), 0
        )
    )
    published: int = 0
    sent_keys: set[tuple[str, str]] = field(default_factory=set)
    answered_keys: set[tuple[str, str]] = field(default_factory=set)  # a result or a failure
    stored_keys: set[tuple[str, str]] = field(default_factory=set)
    accepted_twice: int = 0
    accepted_keys: set[tuple[str, str]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    read_bytes: int = 0  # of the --file, by its one reader
    # An outage fails many events with one text: reported once, with where the first was.
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    first_failed: dict[str, str] = field(default_factory=dict)
    skipped_lines: int = 0

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def sent(self, key: tuple[str, str]) -> None:
        with self.lock:
            self.published += 1
            self.sent_keys.add(key)

    def skipped(self, problem: str) -> None:
        with self.lock:
            self.skipped_lines += 1
            self.problems.append(problem)

    def record(self, key: tuple[str, str], where: str, future: Future[EventResult]) -> None:
        if future.cancelled() or isinstance(future.exception(), PublisherClosed):
            return  # stopped before its answer came: it stays unacknowledged
        error = future.exception()
        with self.lock:
            self.answered_keys.add(key)
            if error is not None:
                self.counts["FAILED"] += 1
                self.failures[str(error)] += 1
                self.first_failed.setdefault(str(error), where)
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


def run(args: argparse.Namespace, connect: Callable[[], AggregatorClient]) -> int:
    tally = Tally()
    console = Console(stderr=True)
    file_size: int | None = None
    if args.file:
        source, file_size = _file_source(args, tally)
        sources = [source]
    else:
        sources = _simulated(args)
    stop = threading.Event()
    started = time.perf_counter()
    interrupted = False
    with connect() as agg:
        _wait_for_server(agg, args.connect_timeout)
        publishers = [
            agg.publisher(max_batch_events=args.batch_size, reconnect_timeout=args.retry_for)
            for _ in sources
        ]
        pumps = [
            threading.Thread(
                target=_pump, args=(p, events, args.rate / len(sources), tally, stop), daemon=True
            )
            for p, events in zip(publishers, sources, strict=True)
        ]
        try:
            for pump in pumps:
                pump.start()
            _show_progress(console, pumps, tally, None if args.file else args.count, file_size)
            for publisher in publishers:
                _close(publisher, None)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            console.print("[yellow]interrupted: summary of what was acknowledged so far[/]")
            deadline = time.monotonic() + 0.5  # answers already on their way still count
            for publisher in publishers:
                _close(publisher, max(0.0, deadline - time.monotonic()))
    return _summary(args, tally, time.perf_counter() - started, console, interrupted)


def _wait_for_server(agg: AggregatorClient, timeout: float) -> None:
    """A target never reached is an error before anything is sent (Unreachable), after one
    line saying so and up to `timeout` seconds for a server that is still starting."""
    try:
        agg.wait_for_server(timeout=0)
    except Unreachable as exc:
        if timeout <= 0:
            raise
        print(f"{exc}; retrying for {timeout:g}s (--connect-timeout)", file=sys.stderr)
        agg.wait_for_server(timeout=timeout)


def _close(publisher: Publisher, timeout: float | None) -> None:
    # A failure is already counted: the events concerned are failed or unacknowledged.
    with contextlib.suppress(ClientError, TimeoutError):
        publisher.close(timeout)


def _file_source(args: argparse.Namespace, tally: Tally) -> tuple[Source, int | None]:
    """The events of --file, and how many bytes it has left to read when that is known
    (a regular file, also as standard input; not a pipe)."""
    if args.file == "-":
        handle = sys.stdin.buffer
    else:
        try:
            handle = open(args.file, "rb")  # noqa: SIM115 (closed when the lines run out)
        except OSError as exc:
            raise SystemExit(f"error: cannot read --file {args.file}: {exc.strerror}") from None
    size = None
    with contextlib.suppress(OSError, ValueError):
        status = os.fstat(handle.fileno())
        if stat.S_ISREG(status.st_mode):
            size = max(0, status.st_size - handle.tell())
    lines = _counted(handle, tally)
    events = jsonlines.read(lines, args.topic, args.source, tally.skipped)
    return (events if args.file == "-" else _closing(handle, events)), size


def _counted(handle: BinaryIO, tally: Tally) -> Iterator[bytes]:
    for line in handle:
        tally.read_bytes += len(line)
        yield line


def _closing(handle: BinaryIO, events: Source) -> Source:
    with handle:
        yield from events


def _simulated(args: argparse.Namespace) -> list[Source]:
    """One source per stream, each a share of one plan; a repeat equals its original."""
    load = workload.Workload(
        new_event_id()[:18],
        duplicate_rate=args.duplicate_rate,
        topics=workload.names(args.topics, "topic"),
        sources=workload.names(args.sources, "source"),
        seed=args.seed,
    )
    plan = load.plan(args.count)
    streams = max(1, args.streams)

    def share(stream: int) -> Source:
        for position in range(stream, len(plan), streams):
            k = plan[position]
            yield f"simulated #{k}", load.event(k)

    return [share(s) for s in range(streams)]


def _pump(
    publisher: Publisher, events: Source, rate: float, tally: Tally, stop: threading.Event
) -> None:
    """Publish one source over its own stream, paced to `rate` events/s (0: no limit)."""
    interval = 1 / rate if rate > 0 else 0.0
    started = time.monotonic()
    try:
        for n, (where, event) in enumerate(events):
            if interval and stop.wait(max(0.0, started + n * interval - time.monotonic())):
                return
            if stop.is_set():
                return
            key = (event.topic, event.event_id)
            future = publisher.publish(event)
            tally.sent(key)
            future.add_done_callback(functools.partial(tally.record, key, where))
    except ClientError:
        return  # the publisher failed or was closed: its events are counted as such


def _show_progress(
    console: Console,
    pumps: list[threading.Thread],
    tally: Tally,
    count: int | None,
    file_size: int | None,
) -> None:
    """Events answered out of --count; or, with --file, bytes read (out of its size when
    known), beside the answers so far."""
    if count is not None:
        amount = TextColumn("{task.completed:>9,.0f}/{task.total:,.0f}")
    else:
        amount = TextColumn("{task.fields[read]} read")
    columns = [
        TextColumn("[bold]publishing"),
        BarColumn(),
        amount,
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[rate]:>10,.0f} events/s"),
        TimeElapsedColumn(),
    ]
    total = count if count is not None else file_size
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("publish", total=total, counts="", rate=0.0, read="")
        while True:
            done = tally.done
            c = tally.counts
            read = tally.read_bytes
            progress.update(
                task,
                completed=done if count is not None else read,
                read=filesize.decimal(read)
                + ("" if file_size is None else f"/{filesize.decimal(file_size)}"),
                counts=(
                    f"[green]acc {c['ACCEPTED']:,}[/] [cyan]dup {c['DUPLICATE']:,}[/] "
                    f"[red]rej {c['REJECTED']:,}[/] [yellow]conf {c['CONFLICT']:,}[/]"
                ),
                rate=done / max(1e-9, time.perf_counter() - started),
            )
            if not any(p.is_alive() for p in pumps):
                return
            for p in pumps:
                p.join(0.2)


def _summary(
    args: argparse.Namespace, tally: Tally, elapsed: float, console: Console, interrupted: bool
) -> int:
    with tally.lock:  # late answers may still arrive after an interrupt
        c = dict(tally.counts)
        done = sum(c.values())
        stored, accepted = len(tally.stored_keys), len(tally.accepted_keys)
        answered = len(tally.answered_keys)
        problems = list(tally.problems) + [
            f"{tally.first_failed[text]}{f' and {n - 1:,} more' if n > 1 else ''}: {text}"
            for text, n in tally.failures.items()
        ]
        summary: dict[str, object] = {
            "sent": tally.published,
            "accepted": c["ACCEPTED"],
            "duplicate": c["DUPLICATE"],
            "rejected": c["REJECTED"],
            "conflict": c["CONFLICT"],
            "failed": c["FAILED"],
            "unacknowledged": tally.published - done,
            "distinct_sent": len(tally.sent_keys),
            "distinct_stored": stored,
            "pre_existing": stored - accepted,  # stored before this run: DUPLICATE only
            "skipped_lines": tally.skipped_lines,
            "seconds": round(elapsed, 3),
            "events_per_second": round(done / elapsed) if elapsed else 0,
            # Every distinct event sent that has its answer is stored, and none was stored
            # twice (after Ctrl-C, events still unacknowledged are not judged).
            "exactly_once": tally.accepted_twice == 0 and stored == answered,
            "interrupted": interrupted,
        }
        failures = _failures(
            lines_skipped=tally.skipped_lines,
            rejected=c["REJECTED"],
            in_conflict=c["CONFLICT"],
            failed=c["FAILED"],
            unacknowledged=tally.published - done,
            accepted_twice=tally.accepted_twice,
            exactly_once=bool(summary["exactly_once"]),
        )
    # The exit code, said in words: 130 interrupted, 1 failed (and why), else 0.
    if interrupted:
        summary["result"], code = "interrupted", exit_codes.INTERRUPTED
    elif failures:
        summary["result"], code = f"failed: {', '.join(failures)}", exit_codes.FAILED
    else:
        summary["result"], code = "ok", exit_codes.OK
    for problem in problems[:50]:
        console.print(f"[yellow]{escape(problem)}[/]", highlight=False)
    if len(problems) > 50:
        console.print(f"... and {len(problems) - 50} more")
    if args.json:
        print(json.dumps({**summary, "problems": problems[:1000]}))
    else:
        table = Table(title="publish summary", show_header=False)
        for key, value in summary.items():
            shown = f"{value:,}" if type(value) is int else str(value)
            table.add_row(key.replace("_", " "), shown)
        Console().print(table)
    return code


def _failures(
    *,
    lines_skipped: int,
    rejected: int,
    in_conflict: int,
    failed: int,
    unacknowledged: int,
    accepted_twice: int,
    exactly_once: bool,
) -> list[str]:
    """Why the run failed, in the summary's counts ("2 lines skipped"); empty if it did not."""

    def count(n: int, noun: str) -> str:
        return f"{n:,} {noun}{'' if n == 1 else 's'}"

    failures = [f"{count(lines_skipped, 'line')} skipped"] if lines_skipped else []
    for n, what in (
        (rejected, "rejected"),
        (in_conflict, "in conflict"),
        (failed, "failed"),
        (unacknowledged, "unacknowledged"),
        (accepted_twice, "accepted twice"),
    ):
        if n:
            failures.append(f"{count(n, 'event')} {what}")
    if not exactly_once and not failures:
        failures.append("not stored exactly once")
    return failures
