"""A tiny benchmark run in-process: the JSON report parses and holds ghz's keys and ours."""

from __future__ import annotations

import json

import pytest

from bench import __main__ as bench_main
from bench import report

pytestmark = pytest.mark.integration

GHZ_KEYS = {
    "date",
    "endReason",
    "options",
    "count",
    "total",
    "average",
    "fastest",
    "slowest",
    "rps",
    "errorDistribution",
    "statusCodeDistribution",
    "latencyDistribution",
    "histogram",
    "details",
}


@pytest.mark.parametrize("call", ["publish", "publish-batch"])
def test_tiny_bench_produces_a_ghz_json_report_with_event_metrics(server, db_url, call):
    args = bench_main.parse(
        [
            "--target",
            f"127.0.0.1:{server.port}",
            "-n",
            "6",
            "-c",
            "2",
            "--batch-size",
            "20",
            "--call",
            call,
            "-O",
            "json",
            "--baselines",
            "--database-url",
            db_url,
            "--baseline-events",
            "200",
        ]
    )
    built = bench_main.run(args, in_process=True)
    data = json.loads(report.render(built, "json"))
    assert set(data) == GHZ_KEYS | {"events"}
    assert data["count"] == 6
    assert data["statusCodeDistribution"] == {"OK": 6}
    assert all(isinstance(data[k], int) for k in ("total", "average", "fastest", "slowest"))
    assert [d["percentage"] for d in data["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert all(isinstance(d["latency"], int) for d in data["latencyDistribution"])
    assert len(data["details"]) == 6
    events = data["events"]
    assert events["count"] == 120
    assert sum(events["statusDistribution"].values()) == 120
    assert events["intendedDuplicateRate"] == 0.3
    assert len(events["baselines"]) == 4  # naive, storage with and without ledger, COPY
    assert all(b["eventsPerSecond"] > 0 for b in events["baselines"].values())
    assert {"load generator", "PostgreSQL"} <= set(events["cpu"])
    text = report.render(built, "summary")
    for heading in ("Summary:", "Latency distribution:", "Status code distribution:", "Events:"):
        assert heading in text
    assert report.render(built, "csv").startswith("duration (ms),status,error")


def test_percentiles_weight_each_event():
    assert report.percentile([1, 2, 3, 4], 50) == 2
    # one request of 1 event at 10 ns, one of 99 events at 20 ns: the event p50 is 20 ns
    assert report.weighted_percentile([(10, 1), (20, 99)], 50) == 20
