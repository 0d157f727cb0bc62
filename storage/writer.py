"""Writes one batch of events in one transaction and classifies every event.

COPY into the connection's staging table (or, for a small batch, its rows sent in the
statement as one JSON document, with the claim of its named requests: insert_sent), then
one INSERT … SELECT … ON CONFLICT that inserts new keys and settles stored ones
(DUPLICATE when the content is the same, or when the event is a KeyedEvent), then a
comparison against the stored row for the few left: CONFLICTs (which fields differ) and
later copies of a key in the batch. Counters are updated in the same transaction, so they
are exact. On Citus (`distributed`) the coordinator's transaction id is read first and
stamped on the rows; the queries named `*_citus` say why.
"""

from __future__ import annotations

import logging
import struct
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple, cast

import orjson
import psycopg
from psycopg import adapt, postgres, pq
from psycopg import errors as pg_errors

from aggregator.storage import ledger, queries
from aggregator.storage import requests as requests_ledger
from aggregator.storage.errors import RowsRefused, StorageError, Unavailable
from aggregator.storage.models import (
    ACCEPTED,
    DUPLICATE,
    BatchResult,
    KeyedEvent,
    NewEvent,
    Outcome,
    Status,
)
from aggregator.storage.recent import RecentKeys
from aggregator.storage.requests import NamedRequest

log = logging.getLogger(__name__)

# Outcomes after which the stored row holds the event's content (as JSON: equal).
_STORED_AS_SENT = (ACCEPTED, DUPLICATE)

_STAGING_TYPES = ["int4", "bool", "text", "text", "timestamptz", "int2", "text", "text"]
# Errors that depend on the rows sent: isolate the culprits by splitting the batch.
_ROW_ERRORS = (pg_errors.DataError, pg_errors.IntegrityError)
# Errors a retry of the same transaction resolves.
_TRANSIENT = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_TRANSIENT_ATTEMPTS = 5
# A batch of at most this many rows to insert, with at most this much payload text, is
# sent as one JSON document in its INSERT (insert_sent), in one pipeline with the BEGIN:
# one round trip where the staging COPY and its INSERT take three more. Under load each
# round trip waits for the flushing thread and a backend to be scheduled, so for small
# batches the waits were most of a flush. Larger batches keep the COPY, whose rows go
# out in chunks where the document would be a second copy of the batch in memory.
SENT_ROWS = 256
SENT_CHARS = 1 << 20
# Such a batch is predicted to be all new (every event stored here), or all re-sends
# (every event stored before with the same content), while at least this share of the
# recent flushes on its connection were so; either way with every named request claimed
# here. It then sends its INSERT, counters and COMMIT in one round trip instead of two; a
# wrong prediction aborts the transaction (flush_as_predicted) and costs one more.
PREDICT_AT = 0.75
_PREDICT_MEMORY = 8  # flushes: each one moves a connection's shares by 1/8 of the way
_NEW, _STORED = 0, 1  # what a batch is predicted to be: index into a connection's shares
# connection → the shares of its recent predictable flushes that were all new, all stored
_shares: weakref.WeakKeyDictionary[psycopg.Connection[tuple[object, ...]], list[float]] = (
    weakref.WeakKeyDictionary()
)

Conn = psycopg.Connection[tuple[object, ...]]

# The advisory lock one flush at a time holds to prune topic_commits on Citus (any constant
# no other lock of this database uses; the ledger's keys are random 64-bit values).
_PRUNE_LOCK = 0x61676770

_US_TO_2000 = 946_684_800_000_000  # µs from the Unix epoch to PostgreSQL's, 2000-01-01
_pack_int8 = struct.Struct("!q").pack
_IDLE = pq.TransactionStatus.IDLE
_INTRANS = pq.TransactionStatus.INTRANS
_INERROR = pq.TransactionStatus.INERROR


class _NanosAsTimestamptz(adapt.Dumper):
    """COPY's `ts` column straight from an event's nanoseconds since the Unix epoch, in
    timestamptz's binary form (µs since 2000-01-01, rounded down like split_ns; the rest
    goes to ts_nanos): no datetime per event. Registered by oid only, on write connections,
    where only the staging COPY's set_types looks dumpers up that way."""

    format = pq.Format.BINARY
    oid = postgres.types["timestamptz"].oid

    def dump(self, obj: int) -> bytes:
        return _pack_int8(obj // 1000 - _US_TO_2000)


@contextmanager
def _rolled_back_on_error(conn: Conn) -> Iterator[None]:
    """Around a block that sends its own BEGIN … COMMIT, so that the COMMIT goes in one
    pipeline with the statements before it (psycopg's transaction blocks send it alone):
    if the block fails, the transaction is rolled back."""
    try:
        yield
    except BaseException:
        if conn.info.transaction_status in (_INTRANS, _INERROR):
            try:
                conn.rollback()
            except psycopg.Error:
                log.debug("ROLLBACK failed on a failing connection", exc_info=True)
        raise


def create_staging(conn: Conn) -> None:
    """Create this connection's staging table (a TEMP table, so one per connection), and
    tell the connection how the table's `ts` is sent."""
    conn.execute(queries.get("create_staging"))
    conn.adapters.register_dumper(None, _NanosAsTimestamptz)
    conn.adapters.register_dumper(_Json, _JsonDumper)


def write_batch(
    conn: Conn,
    events: Sequence[NewEvent],
    rejected: Mapping[str, int] | None = None,
    *,
    ticket: ledger.Ticket | None = None,
    only: list[int] | None = None,
    recent: RecentKeys | None = None,
    distributed: bool = False,
    requests: Sequence[NamedRequest] = (),
) -> BatchResult:
    """Store `events` and count them plus `rejected` (events refused earlier, per topic).

    Rows the database refuses (for example JSON holding \\u0000) are isolated by
    splitting the batch and come back REJECTED; everything else is stored. With a
    `ticket`, each transaction records what it decided in the batch ledger; `only`
    restricts the write to those event indexes (ascending). With `recent`, exact re-sends
    of events it remembers are answered DUPLICATE without the events table (storage.recent).
    `distributed`: the database is a Citus coordinator (storage/sql/citus.sql has run).
    `requests`: the batch's named requests (storage.requests): each is claimed by the
    transaction that writes all of its events, and one written before is answered from
    the request ledger instead (result.replayed), or refused (result.reused).
    """
    result = BatchResult(outcomes=[ACCEPTED] * len(events))
    idxs = list(range(len(events))) if only is None else only
    _write_isolating(
        conn, events, idxs, dict(rejected or {}), result, ticket, recent, distributed, requests
    )
    return result


def _write_isolating(
    conn: Conn,
    events: Sequence[NewEvent],
    idxs: list[int],
    rejected: dict[str, int],
    result: BatchResult,
    ticket: ledger.Ticket | None,
    recent: RecentKeys | None,
    distributed: bool,
    requests: Sequence[NamedRequest],
) -> None:
    try:
        _write_retrying(conn, events, idxs, rejected, result, ticket, recent, distributed, requests)
    except _ROW_ERRORS as exc:
        if ticket is not None and not ticket.isolate:
            raise RowsRefused(f"the database refused a row: {exc.diag.message_primary}") from exc
        if len(idxs) <= 1:
            if not idxs:
                raise  # only counters were written: not a row's fault
            bad = idxs[0]
            result.outcomes[bad] = Outcome(Status.REJECTED, _refusal_reason(exc))
            log.info("database refused event %d of a batch: %s", bad, exc.diag.message_primary)
            rejected = dict(rejected)
            rejected[events[bad].topic] = rejected.get(events[bad].topic, 0) + 1
            _write_retrying(
                conn, events, [], rejected, result, ticket, recent, distributed, (), refused=bad
            )
            return
        # Split up, a named request is written as an unnamed one (a resend of it would be
        # written again): only a request whose whole span one transaction writes is claimed.
        half = len(idxs) // 2
        _write_isolating(
            conn, events, idxs[:half], rejected, result, ticket, recent, distributed, ()
        )
        _write_isolating(conn, events, idxs[half:], {}, result, ticket, recent, distributed, ())


def _refusal_reason(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = " ".join(filter(None, (diag.message_primary, diag.message_detail)))
    # Every other field is checked before the database sees it: the payload is the culprit.
    return f"payload: refused by the database: {text}"


def _write_retrying(
    conn: Conn,
    events: Sequence[NewEvent],
    idxs: list[int],
    rejected: dict[str, int],
    result: BatchResult,
    ticket: ledger.Ticket | None,
    recent: RecentKeys | None,
    distributed: bool,
    requests: Sequence[NamedRequest],
    refused: int | None = None,
) -> None:
    for attempt in range(1, _TRANSIENT_ATTEMPTS + 1):
        try:
            _write_once(
                conn, events, idxs, rejected, result, ticket, recent, distributed, requests, refused
            )
            return
        except _TRANSIENT as exc:
            if attempt == _TRANSIENT_ATTEMPTS:
                raise
            log.warning("retrying batch after %s", type(exc).__name__)
        except pg_errors.InvalidSqlStatementName as exc:
            # psycopg prepares a statement the fifth time it runs; in a pipeline where an
            # earlier statement failed, the server skipped that preparation, but psycopg
            # counts the statement as prepared: every later run on this connection would
            # fail. The connection is dropped (the pool opens another) and the batch is
            # retried like after any lost connection.
            conn.close()
            raise Unavailable(f"a prepared statement was lost; reconnecting: {exc}") from exc


def _write_once(
    conn: Conn,
    events: Sequence[NewEvent],
    idxs: list[int],
    rejected: dict[str, int],
    result: BatchResult,
    ticket: ledger.Ticket | None,
    recent: RecentKeys | None,
    distributed: bool,
    requests: Sequence[NamedRequest],
    refused: int | None,
) -> None:
    """One transaction; `refused` is an event the database refused, counted here."""
    if not idxs and not rejected:
        return
    named = _whole(requests, idxs, rejected)
    # Every event in idxs gets its outcome below, replacing any from an attempt that rolled back.
    outcomes = result.outcomes
    stored_topics: set[str] = set()
    epoch: int | None = None
    remembered: set[int] = set()
    unlike: set[int] = set()  # DUPLICATEs by key alone: the stored row may hold other content
    # Built before the transaction opens: the database waits for nothing of this.
    first, copies, rows = _plan(events, idxs)
    requests_named = _first_copies(named)
    sent = not distributed and _small(rows)
    # Whether this flush tells how often batches were all new or all stored (only those
    # that could be predicted: small, single node, without the recent keys' epoch read).
    observed = sent and recent is None and refused is None and bool(rows)
    if observed:
        shares = _shares.setdefault(conn, [1.0, 0.0])
        likely = _NEW if shares[_NEW] >= PREDICT_AT else _STORED
        if shares[likely] >= PREDICT_AT:
            counted = _predicted(
                conn, events, idxs, rejected, result, ticket, requests_named, copies, rows, likely
            )
            if counted is not None:
                _add_counts(result, counted)
                return
    for i in idxs:
        outcomes[i] = ACCEPTED  # unless the database says otherwise below

    tx = 0  # on Citus: this transaction's id on the coordinator
    with conn.cursor() as cur, _rolled_back_on_error(conn):
        begin = not distributed  # BEGIN still to send, in one pipeline with what follows
        if distributed:
            with conn.pipeline():
                cur.execute("BEGIN")
                cur.execute(queries.get("flush_tx_citus"))
            row = cur.fetchone()
            assert row is not None
            tx = cast(int, row[0])
        claimed: list[NamedRequest] = []
        echoes: list[tuple[NamedRequest, NamedRequest]] = []
        # The INSERT of a small batch claims its named requests itself (insert_sent), unless
        # the claim must come first: to read the epoch between them (`recent`).
        claiming = sent and recent is None
        returning: list[tuple[object, ...]] = []
        if named and claiming:
            with conn.pipeline():  # BEGIN, the claim and the INSERT in one round trip
                cur.execute("BEGIN")
                begin = False
                cur.execute(queries.get("insert_sent"), _sent(rows, requests_named))
            returning = cur.fetchall()
            ids = {cast(str, i) for t, i, _ in returning if t is None}
            claimed, kept, rejected, echoes = _claim(
                cur, requests_named, idxs, rejected, result, ids
            )
            if len(kept) < len(idxs):
                idxs, sent_first = kept, {r[0] for r in rows if r[1]}
                first, copies, rows = _plan(events, idxs)
                # A key whose first copy left with its request now has its first copy in
                # one that stays: not written yet.
                rehomed = [r for r in rows if r[1] and r[0] not in sent_first]
                if rehomed:
                    returning += cur.execute(queries.get("insert_sent"), _sent(rehomed)).fetchall()
        elif named:
            with conn.pipeline():  # BEGIN and the claim in one round trip
                if begin:
                    cur.execute("BEGIN")
                    begin = False
                claimed, kept, rejected, echoes = _claim(
                    cur, requests_named, idxs, rejected, result
                )
            if len(kept) < len(idxs):
                idxs = kept
                first, copies, rows = _plan(events, idxs)
        if recent is not None and idxs:
            with conn.pipeline():
                if begin:
                    cur.execute("BEGIN")
                    begin = False
                cur.execute(queries.get("events_epoch"))
            row = cur.fetchone()
            if row is not None and row[1]:  # the trigger that moves the epoch is in place
                epoch = int(row[0])  # type: ignore[call-overload]
            remembered = recent.matching(epoch, events, idxs)
            if remembered:
                for i in remembered:
                    outcomes[i] = DUPLICATE
                # A later copy of a remembered key stays written as not first: the stored
                # row decides it (DUPLICATE or CONFLICT), like any key already stored.
                rows = [r for r in rows if r[0] not in remembered]
        if begin and not (sent and rows):
            cur.execute("BEGIN")
        if rows:
            # idx of a first copy → True: inserted; False: stored with other content.
            returned: dict[int, object]
            if sent:
                if not (named and claiming):
                    with conn.pipeline():  # with the BEGIN if not sent yet: one round trip
                        if begin:
                            cur.execute("BEGIN")
                        cur.execute(queries.get("insert_sent"), _sent(rows))
                    returning = cur.fetchall()
                returned = {first[t, e]: new for t, e, new in returning if t is not None}  # type: ignore[index]
            else:
                with cur.copy(queries.get("copy_staging")) as copy:
                    copy.set_types(_STAGING_TYPES)
                    for r in rows:
                        copy.write_row(r)
                if distributed:
                    cur.execute(queries.get("insert_from_staging_citus"), {"tx": tx})
                    returned = {first[t, e]: by == tx for t, e, by in cur.fetchall()}  # type: ignore[index]
                else:
                    cur.execute(queries.get("insert_from_staging"))
                    returned = {first[t, e]: new for t, e, new in cur.fetchall()}  # type: ignore[index]
            differing = []  # CONFLICTs, and later copies of a key that differ from the first
            for r in rows:  # (idx, is_first, topic, …)
                new = returned.get(r[0])
                if new:
                    stored_topics.add(r[2])
                elif new is None and r[1]:
                    outcomes[r[0]] = DUPLICATE  # stored with the same content
                elif isinstance(events[r[0]], KeyedEvent):
                    outcomes[r[0]] = DUPLICATE  # its key is stored: that is all it takes
                    unlike.add(r[0])
                else:
                    differing.append(r[0])
            if observed:
                claims = len(claimed) == len(requests_named.firsts) and not echoes
                said = {returned.get(r[0]) if r[1] else False for r in rows}
                _observe(conn, claims and said == {True}, claims and said == {None})
            _compare_with_stored(cur, differing, result, events if sent else None)
        for i, earlier in copies:
            settled = outcomes[earlier]
            outcomes[i] = DUPLICATE if settled in _STORED_AS_SENT else settled
            if earlier in unlike:
                unlike.add(i)
        for echo, copy_of in echoes:  # the same request twice: the same answer, counted once
            outcomes[echo.first : echo.first + echo.size] = outcomes[
                copy_of.first : copy_of.first + copy_of.size
            ]
            result.replayed.add(echo.request_id)

        counts = _count(events, idxs, outcomes, rejected)
        _fold_topics_without_events(cur, counts, distributed)
        # The rest needs no answer: one statement, sent with the COMMIT in one round trip.
        decided = idxs if refused is None else [refused]
        settle = _settle(counts, stored_topics, bool(rows), ticket, decided, result, claimed)
        if distributed:
            settle.update(tx=tx, prune_lock=_PRUNE_LOCK)
        if ticket is not None:
            ticket.committing = True  # from here on, a failure leaves the outcome unknown
        with conn.pipeline():
            cur.execute(
                queries.get("settle_batch_citus" if distributed else "settle_batch"), settle
            )
            cur.execute("COMMIT")
        if ticket is not None:
            ticket.committing = False
    # Committed: what this transaction counted is now part of the batch's result.
    if recent is not None:
        result.remembered += len(remembered)
        recent.remember(
            epoch,
            events,
            (i for i in idxs if outcomes[i] in _STORED_AS_SENT and i not in unlike),
        )
    _add_counts(result, counts)


def _predicted(
    conn: Conn,
    events: Sequence[NewEvent],
    idxs: list[int],
    rejected: dict[str, int],
    result: BatchResult,
    ticket: ledger.Ticket | None,
    named: _Named,
    copies: list[tuple[int, int]],
    rows: list[_Row],
    likely: int,
) -> dict[str, list[int]] | None:
    """Write a small batch predicted to be all new (`likely` _NEW) or all stored before
    (_STORED) in one round trip: one statement (insert_predicted: the claim, the INSERT,
    the counters, the ledger records, the notifications) without a BEGIN, so that it
    commits on its own, or, when it fails, not at all (and leaves the connection idle: no
    ROLLBACK to send). One statement, since in a pipeline of two a failure of the first
    makes the server skip the second, and psycopg loses track of a statement whose
    preparation was skipped so. Return the counts committed, or None when the batch
    cannot be predicted, or was not as predicted: then nothing was committed
    (flush_as_predicted failed the statement) and the batch is to be written again."""
    if named.echoes or not all(r[1] for r in rows):
        return None  # a later copy of a key, or of a request, is settled against the first
    outcomes = result.outcomes
    for i in idxs:
        outcomes[i] = ACCEPTED if likely == _NEW else DUPLICATE
    for i, _ in copies:
        outcomes[i] = DUPLICATE  # an exact copy of an event stored here
    counts = _count(events, idxs, outcomes, rejected)
    if _bare(counts):
        return None  # a topic with rejected events only (_fold_topics_without_events)
    # The requests' statuses are recorded by their claim, in insert_sent.
    stored = {r[2] for r in rows} if likely == _NEW else set()
    params = {
        **_settle(counts, stored, True, ticket, idxs, result, ()),
        **_sent(rows, named, requests_ledger.statuses(named.firsts, outcomes)),
        "predicted_rows": len(rows) if likely == _NEW else 0,
        "predicted_claims": len(named.firsts),
    }
    if ticket is not None:
        ticket.committing = True  # the commit comes with the rest
    try:
        conn.execute(queries.get("insert_predicted"), params)
    except psycopg.Error as exc:
        if ticket is not None and conn.info.transaction_status == _IDLE:
            ticket.committing = False  # the server answered with an error: nothing committed
        if not isinstance(exc, pg_errors.RaiseException):  # not flush_as_predicted's
            raise
        return None  # written again, and observed, the other way
    if ticket is not None:
        ticket.committing = False
    _observe(conn, likely == _NEW, likely == _STORED)
    return counts


def _observe(conn: Conn, all_new: bool, all_stored: bool) -> None:
    """Note whether a batch written on `conn` that could have been predicted was all new,
    or all stored before (each with every named request claimed here)."""
    shares = _shares.setdefault(conn, [1.0, 0.0])
    shares[_NEW] += (all_new - shares[_NEW]) / _PREDICT_MEMORY
    shares[_STORED] += (all_stored - shares[_STORED]) / _PREDICT_MEMORY


def _count(
    events: Sequence[NewEvent],
    idxs: list[int],
    outcomes: Sequence[Outcome],
    rejected: Mapping[str, int],
) -> dict[str, list[int]]:
    """Topic → events per Status (value - 1): those of `idxs`, and those `rejected` before."""
    counts: dict[str, list[int]] = {}
    for i in idxs:
        slot = counts.setdefault(events[i].topic, [0, 0, 0, 0])
        slot[outcomes[i].status - 1] += 1
    for topic, n in rejected.items():
        counts.setdefault(topic, [0, 0, 0, 0])[Status.REJECTED - 1] += n
    return counts


def _settle(
    counts: dict[str, list[int]],
    stored_topics: set[str],
    wrote: bool,
    ticket: ledger.Ticket | None,
    decided: Sequence[int],
    result: BatchResult,
    claimed: Sequence[NamedRequest],
) -> dict[str, object]:
    """settle_batch's parameters: the counters, the batch ledger's record of the events
    `decided`, the statuses of the named requests `claimed`, and the topics to notify.
    Subscribers (on every server) look again after the commit: those of the topics stored
    here, and those waiting for older transactions to finish ("" when nothing new was
    stored: only this transaction's end matters); none when no row was `wrote`."""
    topics = sorted(counts)
    return {
        "topic": topics,
        "accepted": [counts[t][0] for t in topics],
        "duplicates": [counts[t][1] for t in topics],
        "rejected": [counts[t][2] for t in topics],
        "conflicts": [counts[t][3] for t in topics],
        "notify": (sorted(stored_topics) or [""]) if wrote else [],
        **ledger.fields(ticket, decided, result, counts),
        **(
            requests_ledger.fields(claimed, result.outcomes)
            if claimed
            else requests_ledger.NO_REQUESTS
        ),
    }


def _add_counts(result: BatchResult, counts: Mapping[str, Sequence[int]]) -> None:
    """Add what a committed transaction counted to the batch's result."""
    for topic, per_status in counts.items():
        for status, n in zip(Status, per_status, strict=True):
            if n:
                result.counts[topic, status] = result.counts.get((topic, status), 0) + n


def _whole(
    requests: Sequence[NamedRequest], idxs: list[int], rejected: Mapping[str, int]
) -> list[NamedRequest]:
    """The named requests this transaction writes whole: all their events, and their
    rejected ones' counts (carried by the first transaction of a batch only)."""
    if not requests:
        return []
    writing = set(idxs)
    return [
        r
        for r in requests
        if all(i in writing for i in range(r.first, r.first + r.size))
        and (r.size or r.rejected)
        and (not r.rejected or rejected)
    ]


# A staged row: (idx, is_first, topic, event_id, ts, ts_nanos, source, payload).
_Row = tuple[int, bool, str, str, int, int, str, str]


class _Claimed(NamedTuple):
    """What a transaction writes after claiming its named requests."""

    requests: list[NamedRequest]  # claimed here: their statuses are recorded at COMMIT
    idxs: list[int]
    rejected: dict[str, int]
    echoes: list[tuple[NamedRequest, NamedRequest]]  # (a request, its earlier copy here)


def _plan(
    events: Sequence[NewEvent], idxs: list[int]
) -> tuple[dict[tuple[str, str], int], list[tuple[int, int]], list[_Row]]:
    """The rows to write for events `idxs`: each key's first event in the batch, and each
    later one that differs from it (compared with the stored row); a later exact copy is
    settled with its first (the first of each key, the copies: (event, its first))."""
    first: dict[tuple[str, str], int] = {}  # key → its first event in the batch
    copies: list[tuple[int, int]] = []
    rows: list[_Row] = []
    for i in idxs:
        event = events[i]
        topic, event_id, ts_ns, source, payload = event
        key = (topic, event_id)
        earlier = first.get(key)
        if earlier is None:
            first[key] = i
        elif events[earlier] == event:
            copies.append((i, earlier))
            continue
        rows.append((i, earlier is None, topic, event_id, ts_ns, ts_ns % 1000, source, payload))
    return first, copies, rows


def _claim(
    cur: psycopg.Cursor[tuple[object, ...]],
    named: _Named,
    idxs: list[int],
    rejected: dict[str, int],
    result: BatchResult,
    ids: set[str] | None = None,
) -> _Claimed:
    """Claim the named requests (or take the `ids` insert_sent claimed); those written
    before leave this transaction, answered from the request ledger (result.replayed) or
    refused (result.reused), and so does a second copy of a request in this batch
    (answered as its first copy is)."""
    claiming, echoes = named
    replays = (
        requests_ledger.claim(cur, claiming)
        if ids is None
        else requests_ledger.replays(cur, claiming, ids)
    )
    outcomes = result.outcomes
    leaving = [(r, replays[r.request_id]) for r in claiming if r.request_id in replays]
    refused: set[str] = set()
    for r, replay in leaving:
        if replay.outcomes is not None and len(replay.outcomes) == r.size:
            outcomes[r.first : r.first + r.size] = replay.outcomes
            result.replayed.add(r.request_id)
        else:
            result.reused.add((r.request_id, r.first))
            refused.add(r.request_id)
    for echo, earlier in echoes:  # refused with its first copy, or for other events
        if (
            echo.request_id in refused
            or echo.fingerprint != earlier.fingerprint
            or echo.size != earlier.size
        ):
            result.reused.add((echo.request_id, echo.first))
    gone = [r for r, _ in leaving] + [echo for echo, _ in echoes]
    claimed = [r for r in claiming if r.request_id not in replays]
    if not gone:
        return _Claimed(claimed, idxs, rejected, [])
    out = {i for r in gone for i in range(r.first, r.first + r.size)}
    rejected = dict(rejected)
    for r in gone:
        for topic, n in r.rejected.items():
            rejected[topic] -= n
            if not rejected[topic]:
                del rejected[topic]
    return _Claimed(
        claimed,
        [i for i in idxs if i not in out],
        rejected,
        [(e, r) for e, r in echoes if (e.request_id, e.first) not in result.reused],
    )


def _fold_topics_without_events(
    cur: psycopg.Cursor[tuple[object, ...]], counts: dict[str, list[int]], distributed: bool
) -> None:
    """Count rejections of topics that hold no stored event under '' (totals only).

    Otherwise anyone could create a per-topic row (and a metrics label) per made-up topic
    with events that are never stored.
    """
    bare = _bare(counts)
    if not bare:
        return
    if distributed:
        query = queries.get("topic_has_events_citus")
        cur.executemany(query, [{"topic": t} for t in bare], returning=True)
        stored = {row[0] for _ in cur.results() for row in cur.fetchall()}
    else:
        cur.execute(queries.get("topics_with_events"), {"topic": bare})
        stored = {row[0] for row in cur.fetchall()}
    for topic in bare:
        if topic not in stored:
            rejected = counts.pop(topic)[Status.REJECTED - 1]
            counts.setdefault("", [0, 0, 0, 0])[Status.REJECTED - 1] += rejected


def _bare(counts: Mapping[str, Sequence[int]]) -> list[str]:
    """The topics of `counts` with rejected events only."""
    return [t for t, c in counts.items() if t and c[0] == c[1] == c[3] == 0]


class _Named(NamedTuple):
    """A batch's named requests: the first under each id, and the later ones (each with
    the first under its id)."""

    firsts: list[NamedRequest]
    echoes: list[tuple[NamedRequest, NamedRequest]]


_UNNAMED = _Named([], [])


def _first_copies(named: Sequence[NamedRequest]) -> _Named:
    """The first request of each id in `named`, and the later ones (each with its first)."""
    first_of: dict[str, NamedRequest] = {}
    echoes: list[tuple[NamedRequest, NamedRequest]] = []
    for r in named:
        earlier = first_of.setdefault(r.request_id, r)
        if earlier is not r:
            echoes.append((r, earlier))
    return _Named(list(first_of.values()), echoes)


def _small(rows: list[_Row]) -> bool:
    """Whether `rows` are sent in their INSERT (insert_sent) rather than copied first."""
    if len(rows) > SENT_ROWS:
        return False
    return sum(len(r[7]) for r in rows) <= SENT_CHARS


class _Json(NamedTuple):
    """A JSON document already serialised, sent as a jsonb parameter as it is."""

    text: bytes


class _JsonDumper(adapt.Dumper):
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: _Json) -> bytes:
        return obj.text


def _sent(
    rows: Iterable[_Row], named: _Named = _UNNAMED, statuses: Sequence[bytes] = ()
) -> dict[str, object]:
    """insert_sent's parameters: the first copies among `rows` as one JSON array of arrays
    [idx, topic, event_id, seconds, microseconds, ts_nanos, source, payload, request id],
    the timestamp split so that the statement rebuilds it exactly (from integers, never a
    float), with the `named` requests to claim. A later request under the same id as an
    earlier one in the batch is never claimed: its rows go with the id "", never stored.
    A predicted flush (_predicted) sends the `statuses` of each named request, recorded
    with its claim."""
    claiming, echoes = named
    owner: dict[int, str] = {}
    for r in claiming:
        owner.update(dict.fromkeys(range(r.first, r.first + r.size), r.request_id))
    for echo, _ in echoes:
        owner.update(dict.fromkeys(range(echo.first, echo.first + echo.size), ""))
    sent = [
        (r[0], r[2], r[3], r[4] // 1_000_000_000, r[4] // 1000 % 1_000_000, *r[5:], owner.get(r[0]))
        for r in rows
        if r[1]
    ]
    return {
        "rows": _Json(orjson.dumps(sent)),
        "ids": [r.request_id for r in claiming],
        "fingerprints": [r.fingerprint for r in claiming],
        "claim_statuses": list(statuses),
    }


def _compare_with_stored(
    cur: psycopg.Cursor[tuple[object, ...]],
    idxs: list[int],
    result: BatchResult,
    sent: Sequence[NewEvent] | None = None,
) -> None:
    """DUPLICATE or CONFLICT (with the fields that differ) for each event in `idxs`, whose
    key's row this transaction inserted or locked; with `sent` (the batch's events), the
    events are sent with the query rather than read from the staging table."""
    if not idxs:
        return
    if sent is None:
        compared = cur.execute(queries.get("compare_with_stored"), {"idx": idxs}).fetchall()
    else:
        rows = [(i, True, *sent[i][:3], sent[i][2] % 1000, *sent[i][3:]) for i in idxs]
        compared = cur.execute(queries.get("compare_with_sent"), _sent(rows)).fetchall()
    for idx, same_ts, same_source, same_payload in compared:
        i = int(idx)  # type: ignore[call-overload]
        if same_ts and same_source and same_payload:
            result.outcomes[i] = DUPLICATE
        else:
            differs = [
                name
                for name, same in (
                    ("timestamp", same_ts),
                    ("source", same_source),
                    ("payload", same_payload),
                )
                if not same
            ]
            result.outcomes[i] = Outcome(
                Status.CONFLICT,
                "conflict: this topic and event_id are already stored with a different "
                + ", ".join(differs),
            )
    if len(compared) != len(idxs):
        # A row this transaction holds is missing (deleted under a remembered key): never
        # guess a status.
        missing = len(idxs) - len(compared)
        raise StorageError(f"{missing} events were neither inserted nor found stored")
