"""The request ledger: named requests (a client's request id, HTTP's Idempotency-Key) and
the statuses the transaction that wrote them decided.

A publisher that lost an answer (a cut connection, UNAVAILABLE, a server killed between
COMMIT and reply) resends the request under the same id. The flush transaction claims each
named request's id before it writes the request's events (a small batch's INSERT claims
them itself, insert_sent, and stores only the rows of those it claimed): a claim committed
elsewhere means the request was written already, so its events are not written or counted
again and it is answered with the statuses recorded then (ACCEPTED stays ACCEPTED); a claim
still being committed is waited for (PostgreSQL's unique check); the same id with other
events is refused. The statuses are recorded by the statement that counts the batch, with
its COMMIT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, cast

import psycopg
from psycopg.types.json import Jsonb

from aggregator.storage import queries
from aggregator.storage.models import Outcome, Status

Cursor = psycopg.Cursor[tuple[object, ...]]
MAX_ID_CHARS = 64
RETENTION_SECONDS = 3600.0  # a resend later than this is a new request


class NamedRequest(NamedTuple):
    """A request in a batch under its client's id: events first .. first + size - 1 of the
    batch, and the events of it rejected before the batch, per topic."""

    request_id: str
    fingerprint: bytes
    first: int
    size: int
    rejected: Mapping[str, int]


class Replay(NamedTuple):
    """What a claim found for a request written before: its statuses (None: the request
    id names other events)."""

    outcomes: list[Outcome] | None


def fingerprint(events: Iterable[tuple[object, ...]]) -> bytes:
    """What identifies a request's content: its events' fields, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for event in events:
        digest.update("\x1f".join(map(str, event)).encode("utf-8", "surrogatepass") + b"\x1e")
    return digest.digest()


def claim(cur: Cursor, requests: Sequence[NamedRequest]) -> dict[str, Replay]:
    """Claim `requests` for this transaction (waiting for a claim still being committed);
    the ones written before, with what they were answered then."""
    ids = [r.request_id for r in requests]
    cur.execute(
        queries.get("claim_requests"),
        {"ids": ids, "fingerprints": [r.fingerprint for r in requests]},
    )
    return replays(cur, requests, {cast(str, row[0]) for row in cur.fetchall()})


def replays(cur: Cursor, requests: Sequence[NamedRequest], claimed: set[str]) -> dict[str, Replay]:
    """The `requests` written before (their ids not among those `claimed` just now), with
    what they were answered then."""
    earlier = [r for r in requests if r.request_id not in claimed]
    if not earlier:
        return {}
    cur.execute(queries.get("read_requests"), {"ids": [r.request_id for r in earlier]})
    stored = {cast(str, row[0]): row[1:] for row in cur.fetchall()}
    replays = {}
    for request in earlier:
        print_, statuses, reasons = stored[request.request_id]
        if bytes(cast(bytes, print_)) != request.fingerprint or statuses is None:
            replays[request.request_id] = Replay(None)
            continue
        said = cast("dict[str, str]", reasons or {})
        decided = bytes(cast(bytes, statuses))
        replays[request.request_id] = Replay(
            [Outcome(Status(s), said.get(str(i), "")) for i, s in enumerate(decided)]
        )
    return replays


def statuses(requests: Sequence[NamedRequest], outcomes: Sequence[Outcome]) -> list[bytes]:
    """Each request's statuses as recorded: one storage.Status value per event."""
    return [bytes([o.status for o in outcomes[r.first : r.first + r.size]]) for r in requests]


def fields(requests: Sequence[NamedRequest], outcomes: Sequence[Outcome]) -> dict[str, object]:
    """The settle statement's parameters that record what this transaction decided for the
    requests it claimed."""
    reasons: list[Jsonb | None] = []
    for r in requests:
        said = {
            str(i): o.reason for i, o in enumerate(outcomes[r.first : r.first + r.size]) if o.reason
        }
        reasons.append(Jsonb(said) if said else None)  # most have none: NULL, not {}
    return {
        "request_ids": [r.request_id for r in requests],
        "request_fingerprints": [r.fingerprint for r in requests],
        "request_statuses": statuses(requests, outcomes),
        "request_reasons": reasons,
    }


NO_REQUESTS: dict[str, object] = {
    "request_ids": [],
    "request_fingerprints": [],
    "request_statuses": [],
    "request_reasons": [],
}


def sweep(conn: psycopg.Connection[tuple[object, ...]], older_than: float) -> int:
    """Forget named requests older than `older_than` seconds; return how many."""
    return conn.execute(queries.get("sweep_requests"), {"older_than": older_than}).rowcount
