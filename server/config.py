"""Server configuration: read once (flag → environment → default) into a frozen dataclass."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 50051
    http_port: int = 8000
    http_max_connections: int = 1000
    http_request_timeout: float = 30.0
    reuse_port: bool = False
    database_url: str | None = None
    data_dir: Path = Path(".data")
    wal_dir: Path | None = None
    flush_workers: int = 2
    read_connections: int = 4
    max_batch_events: int = 5000
    recent_keys_bytes: int = 0  # off: see docs/guarantees.md
    max_pending_events: int = 100_000
    max_pending_bytes: int = 256 * MIB
    max_events_per_request: int = 10_000
    max_payload_bytes: int = 1 * MIB
    max_message_bytes: int = 16 * MIB
    max_inflight_requests: int = 64
    max_inflight_bytes: int = 64 * MIB
    max_streams: int = 100
    max_subscribers: int = 100
    max_concurrent_rpcs: int = 200
    max_health_watchers: int = 16
    enqueue_timeout: float = 5.0
    db_retry_timeout: float = 30.0
    request_retention: float = 3600.0
    shutdown_grace: float = 15.0
    log_level: str = "info"
    log_format: str = "text"
    metrics_port: int = 0
    metrics_host: str | None = None
    metrics_topics: int = 100
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens: str | None = None
    auth_tokens_file: Path | None = None


def _flag(text: str) -> bool:
    """An on/off environment value: 1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


# name → (environment variable, parser, help). Every field of Config has one.
_OPTIONS: dict[str, tuple[str, Callable[[str], object], str]] = {
    "host": (
        "AGGREGATOR_HOST",
        str,
        "address to listen on; 0.0.0.0 (or ::) for every interface",
    ),
    "port": ("AGGREGATOR_PORT", int, "gRPC port; 0 picks a free one"),
    "http_port": (
        "AGGREGATOR_HTTP_PORT",
        int,
        "HTTP/JSON port (POST /publish, GET /events, /stats, /health, /docs); 0 turns it off",
    ),
    "http_max_connections": (
        "AGGREGATOR_HTTP_MAX_CONNECTIONS",
        int,
        "HTTP connections open at once; more are answered 503 and closed (lowered at start to "
        "fit the file limit, which is raised to what the system allows)",
    ),
    "http_request_timeout": (
        "AGGREGATOR_HTTP_REQUEST_TIMEOUT",
        float,
        "seconds an HTTP client has to send a request's head (32 KiB at most), and then its "
        "body; a connection that sends nothing is closed after as long",
    ),
    "reuse_port": (
        "AGGREGATOR_REUSE_PORT",
        _flag,
        "let several servers share --port (SO_REUSEPORT: the kernel splits clients "
        "between them); off, a taken port is an error",
    ),
    "database_url": (
        "DATABASE_URL",
        str,
        "PostgreSQL URL; when unset, an embedded cluster is started under --data-dir",
    ),
    "data_dir": ("AGGREGATOR_DATA_DIR", Path, "where the embedded cluster keeps its data"),
    "wal_dir": (
        "AGGREGATOR_WAL_DIR",
        Path,
        "where the embedded cluster keeps its WAL (pg_wal), e.g. on a disk of its own; chosen "
        "when the cluster is made, and checked at every later start; unset: in its data dir",
    ),
    "flush_workers": (
        "AGGREGATOR_FLUSH_WORKERS",
        int,
        "batches written in parallel, one database connection each",
    ),
    "read_connections": (
        "AGGREGATOR_READ_CONNECTIONS",
        int,
        "database connections for ListEvents and GetStats, never used by the flush workers",
    ),
    "max_batch_events": ("AGGREGATOR_MAX_BATCH_EVENTS", int, "most events in one transaction"),
    "recent_keys_bytes": (
        "AGGREGATOR_RECENT_KEYS_BYTES",
        int,
        "memory for recently stored events, so that an exact re-send is answered DUPLICATE "
        "without a database lookup (about 650 bytes an event with a 200-byte payload; 0: off, "
        "the default; worth it when the database, not the server, is the bottleneck)",
    ),
    "max_pending_events": (
        "AGGREGATOR_MAX_PENDING_EVENTS",
        int,
        "events queued for writing before publishers are pushed back",
    ),
    "max_pending_bytes": (
        "AGGREGATOR_MAX_PENDING_BYTES",
        int,
        "bytes of events (payload plus ~200 bytes each) queued for writing before publishers "
        "are pushed back",
    ),
    "max_events_per_request": (
        "AGGREGATOR_MAX_EVENTS_PER_REQUEST",
        int,
        "a request with more events is refused with INVALID_ARGUMENT",
    ),
    "max_payload_bytes": (
        "AGGREGATOR_MAX_PAYLOAD_BYTES",
        int,
        "an event whose payload is larger (UTF-8 bytes) is REJECTED",
    ),
    "max_message_bytes": ("AGGREGATOR_MAX_MESSAGE_BYTES", int, "largest gRPC message accepted"),
    "max_inflight_bytes": (
        "AGGREGATOR_MAX_INFLIGHT_BYTES",
        int,
        "bytes of events in unanswered requests per stream before the server stops reading it",
    ),
    "max_inflight_requests": (
        "AGGREGATOR_MAX_INFLIGHT_REQUESTS",
        int,
        "unanswered requests per stream before the server stops reading it",
    ),
    "max_streams": (
        "AGGREGATOR_MAX_STREAMS",
        int,
        "open Publish streams at once; more get RESOURCE_EXHAUSTED",
    ),
    "max_subscribers": (
        "AGGREGATOR_MAX_SUBSCRIBERS",
        int,
        "open Subscribe calls at once; more get RESOURCE_EXHAUSTED",
    ),
    "max_concurrent_rpcs": (
        "AGGREGATOR_MAX_CONCURRENT_RPCS",
        int,
        "calls (streams included) served at once; more get RESOURCE_EXHAUSTED",
    ),
    "max_health_watchers": (
        "AGGREGATOR_MAX_HEALTH_WATCHERS",
        int,
        "open Health.Watch streams without a valid token; more get RESOURCE_EXHAUSTED",
    ),
    "enqueue_timeout": (
        "AGGREGATOR_ENQUEUE_TIMEOUT",
        float,
        "seconds a PublishBatch call waits for queue room before RESOURCE_EXHAUSTED",
    ),
    "db_retry_timeout": (
        "AGGREGATOR_DB_RETRY_TIMEOUT",
        float,
        "seconds a batch is retried while the database is unreachable before UNAVAILABLE",
    ),
    "request_retention": (
        "AGGREGATOR_REQUEST_RETENTION",
        float,
        "seconds a named request (request_id, Idempotency-Key) is remembered: a resend within "
        "them gets the original answer; later it is a new request",
    ),
    "shutdown_grace": (
        "AGGREGATOR_SHUTDOWN_GRACE",
        float,
        "seconds open calls get to finish on SIGTERM/SIGINT",
    ),
    "log_level": ("AGGREGATOR_LOG_LEVEL", str, "debug, info, warning or error"),
    "log_format": ("AGGREGATOR_LOG_FORMAT", str, "text, or json (one object per line)"),
    "tls_cert": (
        "AGGREGATOR_TLS_CERT",
        Path,
        "PEM certificate (chain): serve TLS instead of plaintext",
    ),
    "tls_key": ("AGGREGATOR_TLS_KEY", Path, "PEM private key of --tls-cert"),
    "tls_client_ca": (
        "AGGREGATOR_TLS_CLIENT_CA",
        Path,
        "PEM CA bundle: require client certificates it signed (mutual TLS)",
    ),
    "auth_tokens": (
        "AGGREGATOR_AUTH_TOKENS",
        str,
        "comma-separated bearer tokens; when set (or --auth-tokens-file), calls need one "
        "(health stays open). Prefer the environment variable to the flag",
    ),
    "auth_tokens_file": (
        "AGGREGATOR_AUTH_TOKENS_FILE",
        Path,
        "file of bearer tokens, one per line (lines starting with # are comments)",
    ),
    "metrics_port": (
        "AGGREGATOR_METRICS_PORT",
        int,
        "serve Prometheus metrics on http://METRICS-HOST:PORT/metrics (no authentication); "
        "0 turns them off",
    ),
    "metrics_topics": (
        "AGGREGATOR_METRICS_TOPICS",
        int,
        "topics with their own label in aggregator_events_total; the rest share '~other'",
    ),
    "metrics_host": (
        "AGGREGATOR_METRICS_HOST",
        str,
        "address the metrics endpoint listens on; unset means --host",
    ),
}


def load(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Config:
    """Build the Config from command-line flags, then environment variables, then defaults."""
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Idempotent event ingestion over gRPC into PostgreSQL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(Config):
        env_name, parse, text = _OPTIONS[f.name]
        default = getattr(defaults, f.name)
        if env_name in environ:
            try:
                default = parse(environ[env_name])
            except ValueError as exc:
                parser.error(f"{env_name}: {exc}")
        flag = "--" + f.name.replace("_", "-")
        if parse is _flag:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{text} [env {env_name}]",
            )
            continue
        parser.add_argument(flag, type=parse, default=default, help=f"{text} [env {env_name}]")
    args = parser.parse_args(argv)
    config = Config(**vars(args))
    _check(parser, config)
    return config


def _check(parser: argparse.ArgumentParser, config: Config) -> None:
    positive = [
        "flush_workers",
        "read_connections",
        "max_batch_events",
        "max_pending_events",
        "max_events_per_request",
        "max_payload_bytes",
        "max_message_bytes",
        "max_inflight_requests",
        "max_inflight_bytes",
        "max_pending_bytes",
        "max_streams",
        "max_subscribers",
        "max_concurrent_rpcs",
        "max_health_watchers",
        "http_max_connections",
    ]
    for name in positive:
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if config.recent_keys_bytes < 0:
        parser.error("--recent-keys-bytes must not be negative")
    if not 0 <= config.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if (config.tls_cert is None) != (config.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file"):
        path = getattr(config, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name.replace('_', '-')} {path}: no such file")
    if config.wal_dir is not None and config.database_url:
        parser.error(
            "--wal-dir is for the embedded cluster, and DATABASE_URL is set: that "
            "server's own configuration (initdb --waldir) places its WAL"
        )
    if config.log_format not in {"text", "json"}:
        parser.error("--log-format must be text or json")
    if config.request_retention <= 0:
        parser.error("--request-retention must be positive")
    if config.http_request_timeout <= 0:
        parser.error("--http-request-timeout must be positive")
    if not 0 <= config.http_port <= 65535:
        parser.error("--http-port must be between 0 and 65535")
    if not 0 <= config.metrics_port <= 65535:
        parser.error("--metrics-port must be between 0 and 65535")
    if config.log_level.lower() not in {"debug", "info", "warning", "error"}:
        parser.error("--log-level must be one of debug, info, warning, error")
