"""Arguments, the connection they describe, and turning failures into one line and an exit
code (client.cli.exit_codes)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import grpc

from aggregator.client.channel import parse_target, unreachable_reason
from aggregator.client.cli import exit_codes, publish, reads, tail
from aggregator.client.client import AggregatorClient
from aggregator.client.errors import ClientError, Unreachable

_PROG = "python -m client"

Parser = argparse.ArgumentParser
Run = Callable[[argparse.Namespace, Callable[[], AggregatorClient]], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        parse_target(args.target)
    except ValueError as exc:
        parser.error(f"--target: {exc}")

    def connect() -> AggregatorClient:
        return AggregatorClient(
            args.target,
            tls=args.tls,
            ca_file=args.tls_ca,
            cert_file=args.tls_cert,
            key_file=args.tls_key,
            token=args.token,
        )

    try:
        return int(args.run(args, connect))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    except grpc.RpcError as exc:
        reason = unreachable_reason(exc)
        if reason is not None:  # as Unreachable says it, for every command alike
            print(f"error: {Unreachable(args.target, reason)}", file=sys.stderr)
        else:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return exit_codes.FAILED
    except OSError as exc:  # TLS files that cannot be read, and the like
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.FAILED


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written; shows an option's default once, where it says something:
    not for a help text that names its own, nor for a flag, nor for nothing (None, "")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == ""
        if "default" in text or nothing or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)" if action.option_strings else text


def _connection_options(defaults: bool) -> argparse.ArgumentParser:
    """Where and how to connect. Given before or after the command: the parent parser holds
    the defaults; each command's copy uses SUPPRESS so it only overrides what is given."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection (before or after the command)")
    group.add_argument(
        "--target",
        default=default(os.environ.get("AGGREGATOR_TARGET", "localhost:50051")),
        help="server address host:port (default: $AGGREGATOR_TARGET, else localhost:50051)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="use TLS with the system's roots",
    )
    group.add_argument(
        "--tls-ca", default=default(None), help="PEM CA bundle to verify the server (implies TLS)"
    )
    group.add_argument("--tls-cert", default=default(None), help="PEM client certificate (mTLS)")
    group.add_argument("--tls-key", default=default(None), help="PEM private key of --tls-cert")
    group.add_argument(
        "--token",
        default=default(os.environ.get("AGGREGATOR_TOKEN")),
        help="bearer token (default: $AGGREGATOR_TOKEN)",
    )
    return options


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _at_least_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number at least 0")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1)")
    return value


def _when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Talk to an aggregator server.",
        parents=[_connection_options(defaults=True)],
        formatter_class=_Formatter,
    )
    after = [_connection_options(defaults=False)]
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run: Run, text: str, description: str | None = None) -> Parser:
        sub = commands.add_parser(
            name, parents=after, formatter_class=_Formatter, help=text, description=description
        )
        sub.set_defaults(run=run)
        return sub

    p = command(
        "publish",
        publish.run,
        "publish simulated events, or JSON lines from a file",
        "Without --file, simulate publishers: --count events of which --duplicate-rate\n"
        "repeat earlier ones. With --file, ship JSON lines: each an object with\n"
        "'timestamp' (RFC 3339 or epoch seconds) and optionally 'topic' (else --topic),\n"
        "'event_id' (else derived from the line, so shipping the same file twice stores\n"
        "nothing twice), 'source', and 'payload' (any JSON value; without it, the other\n"
        "keys of the line are the payload).\n"
        "Ctrl-C stops and prints what was acknowledged so far (exit 130).",
    )
    p.add_argument("--count", type=_positive, default=20_000, help="events to simulate")
    p.add_argument("--duplicate-rate", type=_share, default=0.3, help="share of repeats, [0, 1)")
    p.add_argument("--topics", default="4", help="number of topics, or comma-separated names")
    p.add_argument("--sources", default="2", help="number of sources, or comma-separated names")
    p.add_argument("--streams", type=_positive, default=2, help="parallel Publish streams")
    p.add_argument("--batch-size", type=_positive, default=500, help="events per request")
    p.add_argument("--rate", type=_at_least_zero, default=0, help="events/s in total; 0 = no limit")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for the simulation (default: a new one each run)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_at_least_zero,
        default=5.0,
        metavar="SECONDS",
        help="wait this long for the server before sending anything; never reached: exit 1",
    )
    p.add_argument(
        "--retry-for",
        type=_at_least_zero,
        default=60.0,
        metavar="SECONDS",
        help="once connected, give up after an outage this long without progress",
    )
    p.add_argument("--file", help="JSON-lines file to ship; - reads standard input")
    p.add_argument("--topic", default="", help="topic for lines that have none")
    p.add_argument("--source", default="", help="source for lines that have none")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = command("stats", reads.stats, "counters per topic and in total")
    p.add_argument("--topic", default=None, help="only this topic")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("health", reads.health, "grpc.health.v1 check: exit 0 when the server is SERVING")
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds")

    p = command("events", reads.events, "stored events of a topic, in delivery order")
    p.add_argument("--topic", required=True)
    p.add_argument("--limit", type=int, default=100, help="at most this many (0 = all)")
    p.add_argument("--since", type=_when, help="events with a timestamp at or after (RFC 3339)")
    p.add_argument("--until", type=_when, help="events with a timestamp before (RFC 3339)")
    p.add_argument("--json", action="store_true", help="print JSON lines")

    tail.add_arguments(command("tail", tail.run, tail.HELP, tail.__doc__))
    return parser
