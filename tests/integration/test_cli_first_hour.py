"""The CLI as a newcomer meets it: bounded, interruptible, honest about files and limits."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from rich import filesize

from aggregator.storage.embedded import free_port
from tests.support import ServerProcess, run_cli, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


@pytest.fixture
def server_process(db_url):
    server = ServerProcess(db_url).start()
    yield server
    server.stop()


def start_cli(*args: str, stderr: Path) -> subprocess.Popen[str]:
    """`python -m client ARGS` in the background; stderr to a file the test can poll."""
    with stderr.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )


def interrupt(cli: subprocess.Popen[str]) -> str:
    """Ctrl-C; its standard output once it has exited."""
    try:
        cli.send_signal(signal.SIGINT)
        out, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    return out


@pytest.mark.parametrize(
    ("target", "reason"),
    [("127.0.0.1:{port}", "Connection refused"), ("nosuchhost.invalid:50051", "")],
    ids=["nothing-listening", "unknown-host"],
)
def test_a_target_never_reached_is_one_line_for_publish_as_for_the_other_commands(target, reason):
    target = target.format(port=free_port())
    # the default --connect-timeout bounds the wait, whatever --retry-for says
    publish = run_cli(
        "publish", "--count", "10", "--retry-for", "600", "--json",
        env={"AGGREGATOR_TARGET": target},
    )  # fmt: skip
    assert (publish.returncode, publish.stdout) == (1, "")  # nothing was sent
    waiting, final = publish.stderr.splitlines()
    assert waiting.startswith(f"cannot reach {target} (") and "retrying for 5s" in waiting
    assert final.startswith(f"error: cannot reach {target} (") and reason in final
    for command in (["stats"], ["health"], ["tail", "--topic", "t", "--follow"]):
        done = run_cli("--target", target, *command)
        assert (done.returncode, done.stderr.splitlines()) == (1, [final])


def test_publish_waits_its_connect_timeout_for_a_server_that_is_starting(db_url, tmp_path):
    port = free_port()
    err = tmp_path / "stderr"
    cli = start_cli(
        "--target", f"127.0.0.1:{port}", "publish", "--count", "100", "--connect-timeout", "120",
        stderr=err,
    )  # fmt: skip
    server = None
    try:
        wait_until(lambda: "retrying for 120s" in err.read_text(), what="the CLI is waiting")
        server = ServerProcess(db_url, port=port).start()
        cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if server is not None:
            server.stop()
    assert cli.returncode == 0, err.read_text()


def test_publish_gives_up_after_retry_for_once_the_server_is_gone(db_url, sql, tmp_path):
    server = ServerProcess(db_url).start()
    err = tmp_path / "stderr"
    cli = start_cli(
        "--target", server.target,
        "publish", "--count", "1000000", "--rate", "2000", "--retry-for", "1", "--json",
        stderr=err,
    )  # fmt: skip
    try:
        wait_until(
            lambda: sql.execute("SELECT count(*) FROM events").fetchone()[0] > 0,
            what="the CLI has stored something",
        )
        server.stop(signal.SIGKILL)
        out, _ = cli.communicate(timeout=120)
    finally:
        server.kill()
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 1
    summary = json.loads(out)
    assert summary["failed"] > 0 and summary["exactly_once"] is False
    # every event the outage failed is one problem, not one line each
    gave_up = [p for p in summary["problems"] if "gave up after 1s" in p]
    assert 1 <= len(gave_up) <= 2 and all("UNAVAILABLE" in p for p in gave_up)
    assert "Traceback" not in err.read_text()


def test_ctrl_c_stops_with_the_partial_summary_and_exit_130(server_process, sql):
    command = [sys.executable, "-m", "client", "--target", server_process.target, "publish"]
    cli = subprocess.Popen(
        [*command, "--count", "1000000", "--rate", "2000", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: sql.execute("SELECT count(*) FROM events").fetchone()[0] > 0,
            what="the CLI has stored something",
        )
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    assert 0 < summary["sent"] < 1_000_000
    answered = sum(summary[k] for k in ("accepted", "duplicate", "rejected", "conflict", "failed"))
    assert answered + summary["unacknowledged"] == summary["sent"]
    stored = sql.execute("SELECT count(*) FROM events").fetchone()[0]
    assert summary["accepted"] <= stored  # every acknowledged event is stored


def test_ctrl_c_while_reconnecting_to_a_dead_server_stops_at_once_with_one_summary(
    db_url, sql, tmp_path
):
    server = ServerProcess(db_url).start()
    err = tmp_path / "stderr"
    cli = start_cli(
        "--target", server.target, "publish", "--count", "1000000", "--rate", "2000", "--json",
        stderr=err,
    )  # fmt: skip
    try:
        wait_until(
            lambda: sql.execute("SELECT count(*) FROM events").fetchone()[0] > 0,
            what="the CLI has stored something",
        )
        server.stop(signal.SIGKILL)
        wait_until(lambda: "reconnecting" in err.read_text(), what="the CLI is reconnecting")
    finally:
        server.kill()
    out = interrupt(cli)
    stderr = err.read_text()
    assert cli.returncode == 130, stderr
    assert "Traceback" not in stderr and "Channel closed" not in stderr
    # one warning per stream for the outage, none after the stop
    assert stderr.count("reconnecting") <= 2, stderr[-2000:]
    summary = json.loads(out)  # one summary, nothing else
    assert summary["interrupted"] is True
    answered = sum(summary[k] for k in ("accepted", "duplicate", "rejected", "conflict", "failed"))
    assert answered + summary["unacknowledged"] == summary["sent"]


def test_summary_after_ctrl_c_counts_what_was_sent_not_what_was_planned(
    server_process, sql, tmp_path
):
    err = tmp_path / "stderr"
    cli = start_cli(
        "--target", server_process.target,
        "publish", "--count", "50000", "--duplicate-rate", "0.3", "--rate", "2000", "--json",
        stderr=err,
    )  # fmt: skip
    wait_until(
        lambda: sql.execute("SELECT count(*) FROM events").fetchone()[0] > 0,
        what="the CLI has stored something",
    )
    summary = json.loads(interrupt(cli))
    assert cli.returncode == 130, err.read_text()
    assert 0 < summary["distinct_sent"] <= summary["sent"] < 50_000  # not the plan's 35,000
    stored = sql.execute("SELECT count(*) FROM events").fetchone()[0]
    # answered events are stored; those still unacknowledged may or may not be
    assert summary["distinct_stored"] <= stored <= summary["distinct_sent"]
    assert summary["exactly_once"] is True  # about what was sent and answered


def test_a_missing_file_is_one_line_and_no_traceback():
    done = run_cli("publish", "--file", "/nonexistent/app.jsonl")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: cannot read --file /nonexistent/app.jsonl: No such file or directory"
    )


def test_file_payloads_may_be_any_json_value_or_the_rest_of_the_record(
    server_process, sql, tmp_path
):
    stamp = "2026-01-01T00:00:00Z"
    records = [
        {"topic": "app", "event_id": "text", "timestamp": stamp, "payload": "plain text line"},
        {"topic": "app", "event_id": "number", "timestamp": stamp, "payload": 42},
        {"topic": "app", "event_id": "object", "timestamp": stamp, "payload": {"a": [1]}},
        {"topic": "app", "event_id": "rest", "timestamp": stamp, "level": "warn", "msg": "hi"},
        {"topic": "app", "event_id": "bare", "timestamp": stamp},
    ]
    path = tmp_path / "app.jsonl"
    path.write_bytes(
        b"\n".join(json.dumps(r).encode() for r in records) + b"\n\xff\xfe not utf-8\n"
    )
    done = run_cli("--target", server_process.target, "publish", "--file", str(path), "--json")
    summary = json.loads(done.stdout)
    assert summary["accepted"] == 5 and summary["rejected"] == 0
    assert summary["distinct_sent"] == summary["distinct_stored"] == 5
    assert summary["exactly_once"] is True
    assert summary["problems"] == ["line 6: skipped: not UTF-8"]
    # a line was skipped: a failure, and the summary says so beside exactly_once
    assert (done.returncode, summary["result"]) == (1, "failed: 1 line skipped")
    stored = dict(sql.execute("SELECT event_id, payload FROM events").fetchall())
    assert stored == {
        "text": "plain text line",
        "number": 42,
        "object": {"a": [1]},
        "rest": {"level": "warn", "msg": "hi"},
        "bare": {},
    }


def test_file_mode_summary_is_false_when_an_event_is_not_stored(server_process, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"topic": "app", "event_id": "x" * 300, "timestamp": 0}) + "\n")
    done = run_cli("--target", server_process.target, "publish", "--file", str(path), "--json")
    summary = json.loads(done.stdout)
    assert (summary["rejected"], summary["distinct_sent"], summary["distinct_stored"]) == (1, 1, 0)
    assert summary["exactly_once"] is False
    assert (done.returncode, summary["result"]) == (1, "failed: 1 event rejected")
    table = run_cli("--target", server_process.target, "publish", "--file", str(path))
    assert table.returncode == 1 and "failed: 1 event rejected" in table.stdout


@pytest.mark.parametrize(
    "wrong",
    [
        ("--duplicate-rate", "1.5"),
        ("--duplicate-rate", "-0.1"),
        ("--count", "0"),
        ("--streams", "0"),
        ("--batch-size", "x"),
        ("--rate", "-1"),
        ("--retry-for", "nan"),
    ],
)
def test_out_of_range_publish_options_are_bad_arguments_exit_2(wrong):
    done = run_cli("--target", f"127.0.0.1:{free_port()}", "publish", *wrong)
    assert done.returncode == 2
    last = done.stderr.splitlines()[-1]
    assert last.startswith("python -m client publish: error: argument " + wrong[0])
    assert "Traceback" not in done.stderr


def test_help_shows_defaults_and_connection_options_work_after_the_command(server_process):
    help_text = run_cli("publish", "--help").stdout
    assert "(default: 20000)" in help_text and "--retry-for SECONDS" in help_text
    assert "--target" in help_text
    top = run_cli("--help", env={"COLUMNS": "200"}).stdout
    assert "(default: $AGGREGATOR_TARGET, else localhost:50051)" in top
    after = run_cli("health", "--target", server_process.target)
    assert (after.returncode, after.stdout.strip()) == (0, "SERVING")
    from_env = run_cli("health", env={"AGGREGATOR_TARGET": server_process.target})
    assert from_env.stdout.strip() == "SERVING"


@pytest.mark.parametrize("command", ["", "publish", "stats", "health", "events", "tail"])
def test_help_shows_each_default_once_and_never_the_token(command):
    wide = {"COLUMNS": "1000", "AGGREGATOR_TOKEN": "s3cret-token"}  # one option per line
    done = run_cli(*([command] if command else []), "--help", env=wide)
    assert done.returncode == 0
    for line in done.stdout.splitlines():
        assert line.count("default") <= 1, line
    for nothing in ("(default: None)", "(default: False)", "(default: )", "s3cret-token"):
        assert nothing not in done.stdout


def run_on_a_terminal(*args: str) -> tuple[int, str]:
    """`python -m client ARGS` with its stderr on a terminal, where rich draws progress: the
    exit code and everything drawn."""
    terminal, its_end = pty.openpty()
    try:
        cli = subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=its_end,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        os.close(its_end)
    drawn = bytearray()
    try:
        while chunk := os.read(terminal, 65536):
            drawn += chunk
    except OSError:  # EIO: the CLI has exited, closing the terminal's other end
        pass
    finally:
        os.close(terminal)
    return cli.wait(timeout=120), drawn.decode(errors="replace")


def test_file_progress_shows_bytes_read_out_of_the_file_size(server_process, tmp_path):
    path = tmp_path / "app.jsonl"
    path.write_text(
        "".join(json.dumps({"topic": "app", "timestamp": i}) + "\n" for i in range(2000))
    )
    code, drawn = run_on_a_terminal(
        "--target", server_process.target, "publish", "--file", str(path)
    )
    assert code == 0, drawn
    assert f"/{filesize.decimal(path.stat().st_size)} read" in drawn


def test_http_targets_are_understood_and_other_urls_rejected_with_a_hint(server_process):
    done = run_cli("--target", f"http://{server_process.target}", "health")
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING")
    wrong = run_cli("--target", "grpc://127.0.0.1:1", "health")
    assert wrong.returncode == 2
    assert "give host:port" in wrong.stderr and "Traceback" not in wrong.stderr


def publish_file(target: str, tmp_path: Path, records: Sequence[Mapping[str, object]]) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = run_cli("--target", target, "publish", "--file", str(path))
    assert done.returncode == 0, done.stderr


def test_events_says_when_it_stops_at_the_limit_and_filters_by_time(server_process, tmp_path):
    records = [
        {"topic": "t", "event_id": str(i), "timestamp": f"2026-01-0{i}T00:00:00Z"}
        for i in range(1, 6)
    ]
    publish_file(server_process.target, tmp_path, records)
    target = ("--target", server_process.target)
    cut = run_cli(*target, "events", "--topic", "t", "--limit", "2", "--json")
    assert len(cut.stdout.splitlines()) == 2
    assert "showing the first 2 events in delivery order; there are more" in cut.stderr
    whole = run_cli(*target, "events", "--topic", "t", "--limit", "5", "--json")
    assert len(whole.stdout.splitlines()) == 5 and whole.stderr == ""
    window = run_cli(
        *target, "events", "--topic", "t", "--json",
        "--since", "2026-01-02T00:00:00Z", "--until", "2026-01-04T00:00:00Z",
    )  # fmt: skip
    ids = [json.loads(line)["event_id"] for line in window.stdout.splitlines()]
    assert ids == ["2", "3"]
    bad = run_cli(*target, "events", "--topic", "t", "--since", "yesterday")
    assert bad.returncode == 2 and "not an RFC 3339 time" in bad.stderr


def test_stats_json_has_numbers_a_topic_filter_and_long_topics_in_full(server_process, tmp_path):
    long_topic = "service." + "x" * 200
    publish_file(
        server_process.target,
        tmp_path,
        [
            {"topic": long_topic, "event_id": "1", "timestamp": 0},
            {"topic": "short", "event_id": "1", "timestamp": 0},
        ],
    )
    target = ("--target", server_process.target)
    parsed = json.loads(run_cli(*target, "stats", "--json").stdout)
    assert parsed["received"] == 2 and isinstance(parsed["topics"][0]["accepted"], int)
    one = json.loads(run_cli(*target, "stats", "--topic", "short", "--json").stdout)
    assert one == {
        "topic": "short",
        "received": 1,
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "conflicts": 0,
    }
    table = run_cli(*target, "stats").stdout
    assert long_topic in table
    missing = run_cli(*target, "stats", "--topic", "nope")
    assert missing.returncode == 1 and "no events stored for topic 'nope'" in missing.stderr


def test_documented_commands_run_as_written():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    commands = [line for block in blocks for line in block.splitlines()]
    # Outside Docker, Python commands name the project's interpreter: no `python` on PATH
    # is assumed to have the dependencies.
    bare = [c for c in commands if re.match(r"\s*python3? ", c)]
    assert bare == []
    for module in ("server", "client"):
        assert f".venv/bin/python -m {module} --help" in text
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0 and done.stdout.startswith("usage: python -m")
