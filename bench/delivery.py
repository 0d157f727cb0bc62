"""Commit → subscriber latency: probe events published one at a time to a followed topic.

A subscriber follows the probe topic from now; every `interval` one event is published with
PublishBatch. For each probe: *ack → delivered* (the ack comes right after the commit, so
this is the commit → subscriber delay, give or take the ack's own transit) and *send →
delivered* (an upper bound that includes the commit).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from aggregator.client import AggregatorClient, make_event

TOPIC = "bench-delivery-probe"


@dataclass
class Latencies:
    ack_to_delivered: list[float] = field(default_factory=list)  # seconds
    send_to_delivered: list[float] = field(default_factory=list)
    lost: int = 0  # probes not delivered within the wait

    def summary(self) -> dict[str, float]:
        def pct(values: list[float], p: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, round(p / 100 * len(ordered)))] if ordered else 0

        return {
            "probes": len(self.ack_to_delivered),
            "lost": self.lost,
            "ack→delivered p50 ms": pct(self.ack_to_delivered, 50) * 1000,
            "ack→delivered p99 ms": pct(self.ack_to_delivered, 99) * 1000,
            "send→delivered p50 ms": pct(self.send_to_delivered, 50) * 1000,
            "send→delivered p99 ms": pct(self.send_to_delivered, 99) * 1000,
        }


class Probe:
    """Publishes probes until stop(); then latencies()."""

    def __init__(self, target: str, *, interval: float = 0.05) -> None:
        self._client = AggregatorClient(target)
        self._interval = interval
        self._stop = threading.Event()
        self._delivered: dict[str, float] = {}
        self._sent: dict[str, tuple[float, float]] = {}  # id → (send, ack)
        self._cond = threading.Condition()
        self._follow = self._client.subscribe(TOPIC, from_now=True)
        next(self._follow)  # subscribed: its cursor is set before the first probe
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer = threading.Thread(target=self._write, daemon=True)

    def start(self) -> Probe:
        self._reader.start()
        self._writer.start()
        return self

    def _read(self) -> None:
        try:
            for response in self._follow:
                now = time.perf_counter()
                with self._cond:
                    for stored in response.events:
                        self._delivered[stored.event.event_id] = now
                    self._cond.notify_all()
        except Exception:
            return  # closed

    def _write(self) -> None:
        while not self._stop.is_set():
            event_id = str(uuid.uuid4())
            sent = time.perf_counter()
            self._client.publish([make_event(TOPIC, {"probe": event_id}, event_id=event_id)])
            self._sent[event_id] = (sent, time.perf_counter())
            self._stop.wait(self._interval)

    def stop(self, wait: float = 10.0) -> Latencies:
        self._stop.set()
        self._writer.join()
        deadline = time.monotonic() + wait
        with self._cond:
            while set(self._sent) - set(self._delivered) and time.monotonic() < deadline:
                self._cond.wait(0.1)
        self._client.close()
        result = Latencies()
        for event_id, (sent, acked) in self._sent.items():
            delivered = self._delivered.get(event_id)
            if delivered is None:
                result.lost += 1
                continue
            result.ack_to_delivered.append(delivered - acked)
            result.send_to_delivered.append(delivered - sent)
        return result
