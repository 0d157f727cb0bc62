"""`python -m bench.chaos --seed N --duration S`: publishers through randomly injected faults.

A primary with a synchronous standby, each behind a loopback proxy this run owns, and one
server given both (a libpq multi-host URL, target_session_attrs=read-write). While the
publishers send new events and repeats and subscribers follow the topic from its beginning
(Subscribe, resuming by cursor), a seeded schedule injects one fault at a time and
waits for the publishers to make progress again (the recovery time):

  server-kill        SIGKILL the server, start it again on the same port
  server-restart     SIGTERM (graceful) and start again
  pg-fast            PostgreSQL primary: fast stop, start again
  pg-immediate       PostgreSQL primary: immediate stop (as a crash), start again
  db-cut             drop every database connection at a random moment
  db-cut-at-commit   drop the connection right after forwarding a COMMIT, before its reply
  failover           the primary is lost; the standby is promoted; a new standby is built

At the end: every acknowledged event is stored; the table holds each distinct event exactly
once; every subscriber received every stored event exactly once (no gap, no repeat); every
event's first send was answered ACCEPTED to its publisher, and the counters equal what the
publishers sent, exactly, whatever was killed or cut: the client library names its
requests, so a resend of a request whose answer was lost (a SIGKILLed server, a cut COMMIT,
UNAVAILABLE) gets its original statuses and counts nothing again. The server's memory
stays steady.
Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import collections
import logging
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psycopg

from aggregator import storage
from aggregator.client import AggregatorClient, EventResult, Publisher, make_event
from bench import proc, spawn
from bench.pgproxy import PgProxy

FAULTS = (
    "server-kill",
    "server-restart",
    "pg-fast",
    "pg-immediate",
    "db-cut",
    "db-cut-at-commit",
    "failover",
)
_BASE = datetime(2026, 1, 1, tzinfo=UTC)
_DATABASE = "chaos"
_TOPIC = "chaos"


class _Databases:
    """The primary, its synchronous standby, and one proxy in front of each node slot."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._nodes = 0
        # fsync off: the faults here kill processes, never the machine's page cache.
        self.primary = storage.EmbeddedPostgres(
            self._next_dir(), database=_DATABASE, throwaway=True
        )
        self.primary.start()
        try:
            with storage.Database(self.primary.url, min_connections=1, max_connections=1) as db:
                db.migrate()
            self.standby = self.primary.standby(self._next_dir())
        except BaseException:
            self.primary.stop()
            raise
        assert self.primary.port is not None and self.standby.port is not None
        self.proxies = {"a": PgProxy(self.primary.port), "b": PgProxy(self.standby.port)}
        self._slot = {id(self.primary): "a", id(self.standby): "b"}
        ports = [p.port for p in self.proxies.values()]
        # Every node is a copy of the first: one password for all (EmbeddedPostgres.standby).
        self.url = spawn.multi_host_url(ports, _DATABASE, self.primary.password)

    def _next_dir(self) -> Path:
        self._nodes += 1
        return self.workdir / f"node{self._nodes}"

    @property
    def primary_proxy(self) -> PgProxy:
        return self.proxies[self._slot[id(self.primary)]]

    def restart_primary(self, mode: str) -> None:
        self.primary.stop(mode)
        self.primary.start()

    def failover(self) -> None:
        """Lose the primary, promote the standby, build a new standby in the lost one's slot."""
        lost, promoted = self.primary, self.standby
        lost.stop("immediate")
        promoted.promote()
        self.primary = promoted
        slot = self._slot.pop(id(lost))
        shutil.rmtree(lost.data_dir, ignore_errors=True)  # it may hold unacknowledged commits
        self.standby = promoted.standby(self._next_dir())
        self._slot[id(self.standby)] = slot
        assert self.standby.port is not None
        self.proxies[slot].retarget(self.standby.port)

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
        self.standby.stop()
        self.primary.stop()


class _Load:
    """One publisher: new events and repeats at `rate` events/s, on one Publish stream."""

    def __init__(self, name: str, target: str, rate: float, duplicate_rate: float, seed: int):
        self.name = name
        self.rate = rate
        self.duplicate_rate = duplicate_rate
        self.rng = random.Random(f"{seed}-{name}")
        self.ids: list[str] = []  # distinct event ids, in the order first sent
        self.sends: list[tuple[str, Future[EventResult]]] = []  # (event id, result) per send
        self.acked = 0
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.channel = grpc.insecure_channel(target)
        self.publisher = Publisher(self.channel, reconnect_timeout=300)
        self.thread = threading.Thread(target=self._run, name=f"load-{name}", daemon=True)

    def _ack(self, _: Future[EventResult]) -> None:
        with self._lock:
            self.acked += 1

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        while not self.stop.is_set():
            ahead = started + n / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            first = not self.ids or self.rng.random() >= self.duplicate_rate
            k = len(self.ids) if first else self.rng.randrange(len(self.ids))
            if first:
                self.ids.append(f"{self.name}-{k}")
            future = self.publisher.publish(
                make_event(
                    _TOPIC,
                    {"k": k, "by": self.name},
                    event_id=f"{self.name}-{k}",
                    timestamp=_BASE,
                    source=self.name,
                )
            )
            future.add_done_callback(self._ack)
            self.sends.append((f"{self.name}-{k}", future))
            n += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self.publisher.close(timeout=300)
        self.channel.close()


class _Subscriber:
    """Follows the topic from its beginning, as a consumer would, through every fault."""

    def __init__(self, name: str, target: str) -> None:
        self.client = AggregatorClient(target)
        self.delivered: list[str] = []  # event ids in delivery order
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"subscriber-{name}", daemon=True)

    def _run(self) -> None:
        try:
            for response in self.client.subscribe(_TOPIC, reconnect_timeout=300):
                self.delivered.extend(stored.event.event_id for stored in response.events)
        except Exception as exc:  # closing the client at the end ends the call too
            self.error = exc

    def finish(self, expected: int, timeout: float) -> None:
        """Wait until `expected` events were delivered (bounded), then stop following."""
        deadline = time.monotonic() + timeout
        while len(self.delivered) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.close()
        self.thread.join(30)


class _Chaos:
    def __init__(self, args: argparse.Namespace, databases: _Databases) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.databases = databases
        self.server = self._server_process(port=0).start()
        self.loads = [
            _Load(f"p{i}", self.server.target, args.rate, args.duplicate_rate, args.seed)
            for i in range(args.publishers)
        ]
        self.subscribers = [
            _Subscriber(f"s{i}", self.server.target) for i in range(args.subscribers)
        ]
        self.started = time.monotonic()
        self.recoveries: dict[str, list[float]] = collections.defaultdict(list)
        self.memory: list[tuple[float, int]] = []  # (seconds since the server started, kB)
        self.memory_growth_mb = 0.0
        self.server_started = time.monotonic()

    def _server_process(self, port: int) -> spawn.ServerProcess:
        return spawn.ServerProcess(
            self.databases.url, "--db-retry-timeout", "300", "--flush-workers", "2", port=port
        )

    def acked(self) -> int:
        return sum(load.acked for load in self.loads)

    def log(self, text: str) -> None:
        print(f"{time.monotonic() - self.started:7.1f}s  {text}", flush=True)

    def run(self) -> None:
        self.log(f"seed {self.args.seed}: faults {', '.join(self.args.faults)}")
        for subscriber in self.subscribers:
            subscriber.thread.start()
        for load in self.loads:
            load.thread.start()
        deadline = self.started + self.args.duration
        while time.monotonic() < deadline:
            self._pause(self.rng.uniform(self.args.min_gap, self.args.max_gap), deadline)
            if time.monotonic() >= deadline:
                break
            fault = self.rng.choice(self.args.faults)
            before = self.acked()
            injected = time.monotonic()
            detail = self._inject(fault)
            self._await_progress(before, fault)
            took = time.monotonic() - injected
            self.recoveries[fault].append(took)
            self.log(f"{fault}{detail}: publishers acked again after {took:.2f}s")
        for load in self.loads:
            load.finish()

    def _pause(self, seconds: float, deadline: float) -> None:
        until = min(time.monotonic() + seconds, deadline)
        while (now := time.monotonic()) < until:
            self._sample_memory()
            time.sleep(min(1.0, until - now))

    def _sample_memory(self) -> None:
        age = time.monotonic() - self.server_started
        self.memory.append((age, proc.rss_kb(self.server.pid)))
        warm = [kb for t, kb in self.memory if t >= 5]
        if len(warm) > 1:
            growth = (max(warm) - warm[0]) / 1024
            self.memory_growth_mb = max(self.memory_growth_mb, growth)

    def _restart_server(self, sig: signal.Signals) -> None:
        port = self.server.port
        self.server.stop(sig)
        self.server = self._server_process(port=port).start()
        self.server_started = time.monotonic()
        self.memory = []

    def _inject(self, fault: str) -> str:
        dbs = self.databases
        if fault == "server-kill":
            self._restart_server(signal.SIGKILL)
        elif fault == "server-restart":
            self._restart_server(signal.SIGTERM)
        elif fault == "pg-fast":
            dbs.restart_primary("fast")
        elif fault == "pg-immediate":
            dbs.restart_primary("immediate")
        elif fault == "db-cut":
            return f" ({dbs.primary_proxy.cut_all()} connections)"
        elif fault == "db-cut-at-commit":
            proxy = dbs.primary_proxy
            proxy.cut_at_commit()
            if not proxy.commit_cut.wait(60):
                proxy.disarm()
                return " (no COMMIT came)"
        elif fault == "failover":
            dbs.failover()
        return ""

    def _await_progress(self, before: int, fault: str) -> None:
        """Wait until the publishers get acknowledgements again (bounded)."""
        deadline = time.monotonic() + self.args.recovery_timeout
        target = max(before, self.acked()) + 1
        while self.acked() < target:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no acknowledgement within {self.args.recovery_timeout}s "
                    f"after {fault}:\n" + "".join(self.server.output[-40:])
                )
            time.sleep(0.05)

    def check(self) -> bool:
        with AggregatorClient(self.server.target) as agg:
            stats = agg.stats()
        with psycopg.connect(self.databases.primary.url) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT (topic, event_id)) FROM events"
            ).fetchone()
            stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
        rows, distinct_rows = (int(row[0]), int(row[1])) if row else (-1, -1)
        for subscriber in self.subscribers:
            subscriber.finish(rows, timeout=120)
        self.server.stop()
        # Each subscriber got every stored event, each once: no gap, no repeat.
        gapless = all(
            len(s.delivered) == len(set(s.delivered)) and set(s.delivered) == stored
            for s in self.subscribers
        )
        ids = {i for load in self.loads for i in load.ids}
        sends = [send for load in self.loads for send in load.sends]
        answered = [
            (event_id, f.result().name)
            for event_id, f in sends
            if f.done() and f.exception() is None
        ]
        statuses = collections.Counter(name for _, name in answered)
        accepted_per_id = collections.Counter(i for i, name in answered if name == "ACCEPTED")
        # Each event's first send: answered ACCEPTED, whatever happened to its request.
        first_answers: dict[str, str] = {}
        for event_id, name in answered:
            first_answers.setdefault(event_id, name)
        not_accepted_first = sum(name != "ACCEPTED" for name in first_answers.values())
        repeats = len(sends) - len(ids)
        growth, slack = self.memory_growth_mb, self.args.memory_slack_mb
        checks = {
            "every publish acknowledged (none failed)": len(answered) == len(sends),
            "every status ACCEPTED or DUPLICATE": set(statuses) <= {"ACCEPTED", "DUPLICATE"},
            "every event's first send answered ACCEPTED": not_accepted_first == 0,
            "every acknowledged event stored": ids <= stored,
            "table = distinct events (no extra, no copies)": rows == distinct_rows == len(ids)
            and stored == ids,
            "accepted = distinct events": stats.accepted == len(ids),
            "received = events sent, exactly (resends count once)": stats.received == len(sends),
            "duplicates = repeats sent": stats.duplicates == repeats,
            "rejected = conflicts = 0": stats.rejected == stats.conflicts == 0,
            "no event ACCEPTED twice": max(accepted_per_id.values(), default=1) == 1,
            f"{len(self.subscribers)} subscribers: every stored event, once each (no gap)": gapless,
            f"server memory steady (+{growth:.1f} MB ≤ {slack:g})": growth <= slack,
        }
        print(
            f"seed {self.args.seed}: {len(sends)} events sent ({len(ids)} distinct) by "
            f"{len(self.loads)} publishers in {self.args.duration:g}s; rows {rows}; "
            f"received {stats.received}, accepted {stats.accepted}, duplicates "
            f"{stats.duplicates}; reconnects {sum(p.publisher.reconnects for p in self.loads)}; "
            f"delivered to subscribers {[len(s.delivered) for s in self.subscribers]}; "
            f"first sends not answered ACCEPTED {not_accepted_first}"
        )
        print("faults injected and survived (recovery = until publishers were acked again):")
        for fault in FAULTS:
            times = self.recoveries.get(fault)
            if times:
                print(
                    f"  {fault:17} {len(times):3}x, recovery mean {sum(times) / len(times):.2f}s"
                    f", max {max(times):.2f}s"
                )
        for name, ok in checks.items():
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
        return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=180, help="seconds of faults")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=300, help="events/s per publisher")
    parser.add_argument("--duplicate-rate", type=float, default=0.3)
    parser.add_argument("--subscribers", type=int, default=2, help="following the topic")
    parser.add_argument(
        "--min-gap", type=float, default=1.0, help="seconds between faults, at least"
    )
    parser.add_argument("--max-gap", type=float, default=5.0)
    parser.add_argument(
        "--faults",
        type=lambda s: s.split(","),
        default=list(FAULTS),
        help="comma-separated subset of: " + ", ".join(FAULTS),
    )
    parser.add_argument("--recovery-timeout", type=float, default=120)
    parser.add_argument("--memory-slack-mb", type=float, default=64)
    args = parser.parse_args(argv)
    logging.getLogger("aggregator.client").setLevel(logging.ERROR)  # reconnects are expected here
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")

    workdir = Path(tempfile.mkdtemp(prefix="aggregator-chaos-"))
    workdir.chmod(0o755)  # the unprivileged PostgreSQL user must be able to enter it
    try:
        databases = _Databases(workdir)
        try:
            chaos = _Chaos(args, databases)
            try:
                chaos.run()
                return 0 if chaos.check() else 1
            finally:
                chaos.server.kill()
        finally:
            databases.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
