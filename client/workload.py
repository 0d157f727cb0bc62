"""Synthetic events: new ones and a share of repeats, for the CLI simulation, bench and soak.

Event number `k` always renders to the same event (id, timestamp, source, payload), so a
repeat of `k` is a true duplicate: the server must answer it DUPLICATE, never CONFLICT.
Two ways to draw numbers: `plan(count)` repeats exactly `round(count * duplicate_rate)`
earlier events (so a whole CLI run has known counts); `draw()` repeats each next event
with probability `duplicate_rate`, for runs of unknown length (load tests, soak).
"""

from __future__ import annotations

import array
import hashlib
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import NamedTuple

from aggregator.v1 import aggregator_pb2 as pb

_LEVELS = ("info", "warn", "error")
_NS = 1_000_000_000


class Fields(NamedTuple):
    """One event as plain values (the order of storage.NewEvent's fields)."""

    topic: str
    event_id: str
    timestamp_ns: int
    source: str
    payload: str


class Workload:
    """Events `run_id-k` spread over `topics` and `sources`; thread-safe.

    Args:
        run_id: prefix of every event id; a new one gives new events.
        duplicate_rate: share of repeats, in [0, 1).
        topics, sources: names, used round-robin by event number.
        payload_bytes: pad each JSON payload to about this many bytes (0: no padding).
        seed: for the choice of repeats; the same seed gives the same run.
        uuid_ids: ids are random-looking UUIDv4s (a hash of `run_id-k`, so a repeat keeps
            its id), as most publishers send; else `run_id-k`, ordered like UUIDv7s.
        start_ns: timestamp of event 0 (default now); event k is k milliseconds later.
    """

    def __init__(
        self,
        run_id: str,
        *,
        duplicate_rate: float = 0.3,
        topics: Sequence[str] = ("topic-0",),
        sources: Sequence[str] = ("",),
        payload_bytes: int = 0,
        seed: int | str | None = None,
        start_ns: int | None = None,
        uuid_ids: bool = False,
    ) -> None:
        if not 0 <= duplicate_rate < 1:
            raise ValueError("duplicate_rate must be in [0, 1)")
        if not topics or not sources:
            raise ValueError("at least one topic and one source are needed")
        self.run_id = run_id
        self.duplicate_rate = duplicate_rate
        self.topics = list(topics)
        self.sources = list(sources)
        self.distinct = 0  # events drawn so far that were new
        self._uuid_ids = uuid_ids
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._start_ns = time.time_ns() // 1_000_000 * 1_000_000 if start_ns is None else start_ns
        self._pad = ""
        filler = payload_bytes - len(self._payload(0)) - len(',"pad":""')
        if filler > 0:
            self._pad = f',"pad":"{"x" * filler}"'

    def _payload(self, k: int) -> str:
        # A template rather than json.dumps: the load generator builds these on its hot path.
        return f'{{"n":{k},"level":"{_LEVELS[k % 3]}","msg":"event {k}"{self._pad}}}'

    def _event_id(self, k: int) -> str:
        if not self._uuid_ids:
            return f"{self.run_id}-{k}"
        digest = hashlib.blake2b(f"{self.run_id}-{k}".encode(), digest_size=16).digest()
        return str(uuid.UUID(bytes=digest, version=4))

    def fields(self, k: int) -> Fields:
        """Event number `k` as plain values."""
        return Fields(
            self.topics[k % len(self.topics)],
            self._event_id(k),
            self._start_ns + k * 1_000_000,
            self.sources[k % len(self.sources)],
            self._payload(k),
        )

    def event(self, k: int) -> pb.Event:
        """Event number `k` as a protobuf Event (built directly: the load generator's hot path)."""
        ns = self._start_ns + k * 1_000_000
        event = pb.Event(
            topic=self.topics[k % len(self.topics)],
            event_id=self._event_id(k),
            source=self.sources[k % len(self.sources)],
            payload=self._payload(k),
        )
        event.timestamp.seconds, event.timestamp.nanos = divmod(ns, _NS)
        return event

    def draw(self, n: int = 1) -> list[int]:
        """The next `n` event numbers: each a repeat of an earlier one with the set chance."""
        chosen = []
        with self._lock:
            for _ in range(n):
                if self.distinct and self._rng.random() < self.duplicate_rate:
                    chosen.append(self._rng.randrange(self.distinct))
                else:
                    chosen.append(self.distinct)
                    self.distinct += 1
        return chosen

    def plan(self, count: int) -> array.array[int]:
        """`count` event numbers of which exactly round(count * duplicate_rate) are repeats.

        Sets `distinct` to the number of different events in the plan.
        """
        repeats = set(
            self._rng.sample(range(1, count), min(count - 1, round(count * self.duplicate_rate)))
        )
        numbers = array.array("I")
        fresh = 0
        for position in range(count):
            if position in repeats:
                numbers.append(self._rng.randrange(fresh))
            else:
                numbers.append(fresh)
                fresh += 1
        self.distinct = fresh
        return numbers


def names(spec: str, prefix: str) -> list[str]:
    """`"3"` → prefix-0, prefix-1, prefix-2; `"a,b"` → a, b."""
    if spec.isdigit():
        return [f"{prefix}-{i}" for i in range(max(1, int(spec)))]
    return [name.strip() for name in spec.split(",") if name.strip()]
