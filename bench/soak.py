"""`python -m bench.soak --duration S`: publishers for S seconds through a SIGKILL and a restart.

Publishers send new events and 30% repeats at a steady rate. At a third of the run the server
is SIGKILLed and started again; at two thirds it is restarted gracefully (SIGTERM). At the end
every event must have been stored exactly once, the counters must be exact, and the server's
memory must have stayed steady. Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import grpc
import psycopg

from aggregator.client import AggregatorClient, EventResult, Publisher, workload
from bench import proc, spawn


class _Load:
    """One publisher thread: new events with repeats, paced to `rate` events/s."""

    def __init__(self, name: str, target: str, rate: float, duplicate_rate: float) -> None:
        self.name = name
        self.rate = rate
        self.events = workload.Workload(
            name, duplicate_rate=duplicate_rate, topics=("soak",), sources=(name,), seed=name
        )
        self.results: list[Future[EventResult]] = []
        self.stop = threading.Event()
        self.channel = grpc.insecure_channel(target)
        self.publisher = Publisher(self.channel, reconnect_timeout=120)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        while not self.stop.wait(max(0.0, started + n / self.rate - time.monotonic())):
            [k] = self.events.draw()
            self.results.append(self.publisher.publish(self.events.event(k)))
            n += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self.publisher.close(timeout=120)
        self.channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=600, help="seconds")
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=3000, help="events/s per publisher")
    parser.add_argument("--duplicate-rate", type=float, default=0.3)
    parser.add_argument("--memory-slack-mb", type=float, default=64)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="aggregator-soak-") as tmp,
        spawn.embedded_postgres(Path(tmp)) as url,
    ):
        server = spawn.ServerProcess(url).start()
        loads = [
            _Load(f"p{i}", server.target, args.rate, args.duplicate_rate)
            for i in range(args.publishers)
        ]
        for load in loads:
            load.thread.start()
        started = time.monotonic()
        memory: list[tuple[float, int]] = []  # (seconds, kB) of the server after the restart
        phases = [(args.duration / 3, signal.SIGKILL), (2 * args.duration / 3, signal.SIGTERM)]
        while (elapsed := time.monotonic() - started) < args.duration:
            if phases and elapsed >= phases[0][0]:
                _, sig = phases.pop(0)
                print(f"{elapsed:6.1f}s  {signal.Signals(sig).name} the server", flush=True)
                server.stop(sig)
                server = spawn.ServerProcess(url, port=server.port).start()
                memory.clear()
            memory.append((elapsed, proc.rss_kb(server.pid)))
            time.sleep(1)
        for load in loads:
            load.finish()
        with AggregatorClient(server.target) as agg:
            stats = agg.stats()
        server.stop()
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM events").fetchone()
            rows = int(row[0]) if row else -1

    distinct = sum(load.events.distinct for load in loads)
    sent = sum(len(load.results) for load in loads)
    statuses = [f.result().name for load in loads for f in load.results]
    warm = [kb for t, kb in memory if t - memory[0][0] >= 5] or [kb for _, kb in memory]
    growth_mb = (max(warm) - warm[0]) / 1024
    checks = {
        "every event ACCEPTED or DUPLICATE": set(statuses) <= {"ACCEPTED", "DUPLICATE"},
        "rows == distinct events sent": rows == distinct,
        "stats.accepted == rows": stats.accepted == rows,
        "received == sum of statuses": stats.received
        == stats.accepted + stats.duplicates + stats.rejected + stats.conflicts,
        f"memory steady (+{growth_mb:.1f} MB ≤ {args.memory_slack_mb:g})": growth_mb
        <= args.memory_slack_mb,
    }
    print(
        f"sent {sent} events ({distinct} distinct) in {args.duration:g}s; "
        f"rows {rows}; accepted {stats.accepted}, duplicates {stats.duplicates}; "
        f"reconnects {sum(load.publisher.reconnects for load in loads)}; "
        f"server RSS {warm[0] // 1024}→{max(warm) // 1024} MB"
    )
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
