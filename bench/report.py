"""ghz-style reports (summary, json, pretty, csv) plus the event metrics ghz lacks."""

from __future__ import annotations

import collections
import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aggregator.v1 import aggregator_pb2 as pb
from bench.load import WorkerResult

PERCENTAGES = (10, 25, 50, 75, 90, 95, 99)
EVENT_PERCENTAGES = (50, 90, 99, 99.9)


@dataclass
class Report:
    options: dict[str, Any]
    end_reason: str
    date: datetime
    total_ns: int
    latencies: list[int]  # ns, of the requests counted in the stats
    codes: collections.Counter[str]
    errors: collections.Counter[str]
    events: int
    statuses: collections.Counter[int]
    event_latencies: list[tuple[int, int]]  # (latency ns, events acknowledged)
    details: list[tuple[float, int, str, str]]  # (unix time, latency ns, error, status)
    cpu: dict[str, float] = field(default_factory=dict)  # name → share of one core
    # server → µs of its CPU per request (ours, and the gRPC ceiling's in its own run)
    cpu_per_request: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)  # name → events/s
    ceiling_runs: list[float] = field(default_factory=list)  # events/s, before and after ours
    delivery: dict[str, dict[str, float]] = field(default_factory=dict)  # when → figures
    # the same load at a share of this run's rate (--at-fraction): its rate and ack latency
    at_fraction: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / (self.total_ns / 1e9) if self.total_ns else 0.0

    @property
    def requests_per_second(self) -> float:
        return len(self.details) / (self.total_ns / 1e9) if self.total_ns else 0.0

    def cpu_us_per_request(self, share: float) -> float:
        """µs of CPU per request for a process that used `share` of a core in this run."""
        rate = self.requests_per_second
        return share / rate * 1e6 if rate else 0.0


def build(
    results: list[WorkerResult], options: dict[str, Any], *, skip_first: int, count_errors: bool
) -> Report:
    started = min(r.started for r in results)
    ended = max(r.ended for r in results)
    rows = sorted(
        (r.started + sent / 1e9, latency, size, code, error)
        for r in results
        for sent, latency, size, code, error in zip(
            r.sent_ns, r.latency_ns, r.events, r.codes, r.error_texts, strict=True
        )
    )[skip_first:]
    counted = [row for row in rows if count_errors or row[3] == "OK"]
    statuses: collections.Counter[int] = collections.Counter()
    for r in results:
        statuses.update(r.statuses)
    errors: collections.Counter[str] = collections.Counter()
    for r in results:
        errors.update(r.errors)
    return Report(
        options=options,
        end_reason="timeout" if options.get("duration") else "normal",
        date=datetime.fromtimestamp(started, UTC),
        total_ns=int((ended - started) * 1e9),
        latencies=sorted(row[1] for row in counted),
        codes=collections.Counter(row[3] for row in rows),
        errors=errors,
        events=sum(statuses.values()),
        statuses=statuses,
        event_latencies=sorted((row[1], row[2]) for row in rows if row[3] == "OK"),
        details=[(row[0], row[1], row[4] or "", row[3]) for row in rows],
    )


def percentile(sorted_values: list[int], pct: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def weighted_percentile(pairs: list[tuple[int, int]], pct: float) -> int:
    """Percentile of per-event latency: each request's latency counts once per event."""
    total = sum(weight for _, weight in pairs)
    if not total:
        return 0
    threshold = pct / 100 * total
    seen = 0
    for value, weight in pairs:
        seen += weight
        if seen >= threshold:
            return value
    return pairs[-1][0]


def histogram(values: list[int], buckets: int = 10) -> list[dict[str, Any]]:
    if not values:
        return []
    fastest, slowest = values[0], values[-1]
    step = (slowest - fastest) / buckets or 1
    marks = [fastest + step * i for i in range(buckets + 1)]
    counts = [0] * len(marks)
    for value in values:
        index = min(len(marks) - 1, int((value - fastest) / step + 0.5))
        counts[index] += 1
    return [
        {"mark": mark / 1e9, "count": count, "frequency": count / len(values)}
        for mark, count in zip(marks, counts, strict=True)
    ]


def _event_block(report: Report) -> dict[str, Any]:
    names = {s: pb.EventStatus.Name(pb.EventStatus.ValueType(s)) for s in report.statuses}
    total = report.events or 1
    return {
        "count": report.events,
        "eventsPerSecond": report.events_per_second,
        "intendedDuplicateRate": report.options.get("duplicate_rate"),
        "statusDistribution": {names[s]: n for s, n in sorted(report.statuses.items())},
        "observedDuplicateRate": report.statuses.get(pb.EVENT_STATUS_DUPLICATE, 0) / total,
        "ackLatencyDistribution": [
            {"percentage": p, "latency": weighted_percentile(report.event_latencies, p)}
            for p in EVENT_PERCENTAGES
        ],
        "cpu": report.cpu,
        "cpuMicrosecondsPerRequest": report.cpu_per_request,
        "delivery": report.delivery,
        "atFraction": report.at_fraction,
        "baselines": {
            name: {"eventsPerSecond": rate, "ratio": report.events_per_second / rate}
            for name, rate in report.baselines.items()
        },
        "ceilingRuns": report.ceiling_runs,
    }


def as_json(report: Report) -> dict[str, Any]:
    """ghz's JSON report (durations in integer nanoseconds) plus one key: `events`."""
    lat = report.latencies
    return {
        "date": report.date.isoformat().replace("+00:00", "Z"),
        "endReason": report.end_reason,
        "options": report.options,
        "count": len(report.details),
        "total": report.total_ns,
        "average": int(sum(lat) / len(lat)) if lat else 0,
        "fastest": lat[0] if lat else 0,
        "slowest": lat[-1] if lat else 0,
        "rps": report.requests_per_second,
        "errorDistribution": dict(report.errors),
        "statusCodeDistribution": dict(report.codes),
        "latencyDistribution": [
            {"percentage": p, "latency": percentile(lat, p)} for p in PERCENTAGES
        ],
        "histogram": histogram(lat),
        "details": [
            {
                "timestamp": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z"),
                "latency": latency,
                "error": error,
                "status": status,
            }
            for t, latency, error, status in report.details
        ],
        "events": _event_block(report),
    }


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


def summary(report: Report) -> str:
    data = as_json(report)
    out = io.StringIO()
    w = out.write
    w("\nSummary:\n")
    w(f"  Count:\t{data['count']}\n")
    w(f"  Total:\t{report.total_ns / 1e9:.2f} s\n")
    w(f"  Slowest:\t{_ms(data['slowest'])}\n")
    w(f"  Fastest:\t{_ms(data['fastest'])}\n")
    w(f"  Average:\t{_ms(data['average'])}\n")
    w(f"  Requests/sec:\t{data['rps']:.2f}\n")
    w("\nResponse time histogram:\n")
    biggest = max((b["count"] for b in data["histogram"]), default=1) or 1
    for bucket in data["histogram"]:
        bar = "∎" * round(40 * bucket["count"] / biggest)
        w(f"  {bucket['mark'] * 1000:.3f} [{bucket['count']}]\t|{bar}\n")
    w("\nLatency distribution:\n")
    for item in data["latencyDistribution"]:
        w(f"  {item['percentage']} % in {_ms(item['latency'])} \n")
    w("\nStatus code distribution:\n")
    for code, n in sorted(report.codes.items()):
        w(f"  [{code}]\t{n} responses\n")
    if report.errors:
        w("\nError distribution:\n")
        for error, n in report.errors.most_common():
            w(f"  [{n}]\t{error}\n")
    events = data["events"]
    w("\nEvents:\n")
    w(f"  Count:\t{events['count']}\n")
    w(f"  Events/sec:\t{events['eventsPerSecond']:.0f}\n")
    w("\nEvent status distribution:\n")
    for name, n in events["statusDistribution"].items():
        share = n / (events["count"] or 1)
        w(f"  [{name.removeprefix('EVENT_STATUS_')}]\t{n} events ({share:.1%})\n")
    intended = events["intendedDuplicateRate"]
    if intended is not None:
        w(f"  duplicates observed {events['observedDuplicateRate']:.1%}, intended {intended:.1%}\n")
    w("\nEvent ack latency (send → status):\n")
    for item in events["ackLatencyDistribution"]:
        w(f"  {item['percentage']} % in {_ms(item['latency'])} \n")
    if report.cpu:
        w("\nCPU (share of one core during the run):\n")
        for name, share in report.cpu.items():
            w(f"  {name}:\t{share:.0%}\n")
    if report.cpu_per_request:
        w("\nServer CPU per request:\n")
        for name, micros in report.cpu_per_request.items():
            w(f"  {name}:\t{micros:,.0f} µs\n")
    if report.delivery:
        w("\nCommit → subscriber latency (probe events, one at a time):\n")
        for when, figures in report.delivery.items():
            text = ", ".join(f"{name} {value:,.1f}" for name, value in figures.items())
            w(f"  {when}:\t{text}\n")
    if report.at_fraction:
        at = report.at_fraction
        w(
            f"\nAt {at['fraction']:.0%} of that rate ({at['requestsPerSecond']:,.1f} requests/s,"
            f" {at['eventsPerSecond']:,.0f} events/s, {at['requests']:,.0f} requests),"
            " ack latency:\n"
        )
        for name, value in at.items():
            if name.startswith("p"):
                w(f"  {name}:\t{value:,.1f}\n")
    if report.baselines:
        w("\nBaselines (same run, same database, same data):\n")
        for name, item in events["baselines"].items():
            w(
                f"  {name}:\t{item['eventsPerSecond']:>10,.0f} events/s\t"
                f"end-to-end is {item['ratio']:.2f}x\n"
            )
    if report.ceiling_runs:
        runs = " and ".join(f"{rate:,.0f}" for rate in report.ceiling_runs)
        w(f"  (the ceiling's runs, before and after ours: {runs} events/s)\n")
    return out.getvalue()


def render(report: Report, fmt: str) -> str:
    if fmt == "summary":
        return summary(report)
    if fmt == "json":
        return json.dumps(as_json(report))
    if fmt == "pretty":
        return json.dumps(as_json(report), indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["duration (ms)", "status", "error"])
        for _, latency, error, status in report.details:
            writer.writerow([f"{latency / 1e6:.2f}", status, error])
        return out.getvalue()
    raise ValueError(f"unknown format {fmt!r}")
