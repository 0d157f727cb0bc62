"""The batch ledger: every flush transaction records its identity and what it decided.

When the connection drops at COMMIT, the outcome is unknown: the transaction may have
committed. Writing the batch again would then answer DUPLICATE for events its own first
attempt stored and count them twice. Instead `resume` first waits for any transaction of
the batch still committing, reads what the committed ones recorded, answers with exactly
those statuses and counts, and writes only the events no committed transaction decided.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from aggregator.storage import queries
from aggregator.storage.errors import Unavailable
from aggregator.storage.models import BatchResult, Outcome, Status

log = logging.getLogger(__name__)

# A retry waits this long at most for a transaction of its batch that is still committing.
AWAIT_TIMEOUT = "10s"
# Rows this old belong to no batch a running server still retries (see sweep()).
STALE_AFTER_SECONDS = 3600.0

Conn = psycopg.Connection[tuple[object, ...]]
Cursor = psycopg.Cursor[tuple[object, ...]]
# (event indexes to write, rejected counts to add) -> the result of writing them
Write = Callable[[list[int], Mapping[str, int]], BatchResult]
# Statuses that come with a reason: REJECTED and CONFLICT.
_WITH_REASON = re.compile(bytes([ord("["), Status.REJECTED, Status.CONFLICT, ord("]")]))


@dataclass(slots=True)
class Ticket:
    """One flush's identity in the ledger.

    `finished`: batches this worker has answered; the next transaction deletes their rows,
    which no retry can need any more. `retry`: an earlier attempt failed, so its outcome
    may be unknown and the ledger must be read before writing again. `deadline`: when the
    batcher stops retrying; an attempt still running then is cut.
    """

    batch_id: uuid.UUID = field(default_factory=uuid.uuid4)
    finished: list[uuid.UUID] = field(default_factory=list)
    retry: bool = False
    deadline: float | None = None  # time.monotonic() by which an attempt must have finished
    isolate: bool = True  # split the batch to isolate refused rows; else raise RowsRefused
    seconds: float = 0.0  # spent recording, for the benchmark's cost figure
    # A COMMIT was sent and its reply never came, and no later attempt has read the ledger
    # since: whether the batch (or part of it) was written is unknown.
    committing: bool = False
    unknown: bool = False

    @property
    def lock(self) -> int:
        """The advisory lock key of this batch (its first 64 bits)."""
        return int.from_bytes(self.batch_id.bytes[:8], "big", signed=True)


# The ledger part of the `settle_batch` statement when a write has no ticket: nothing.
_UNRECORDED: dict[str, object] = {
    "batch_id": None,
    "first_idx": None,
    "idxs": None,
    "statuses": None,
    "reasons": None,
    "counts": None,
    "finished": [],
    "lock": None,
}


def fields(
    ticket: Ticket | None,
    idxs: Sequence[int],
    result: BatchResult,
    counts: Mapping[str, Sequence[int]],
) -> dict[str, object]:
    """The `settle_batch` parameters that record, inside the flush transaction, what it
    decided for events `idxs` (ascending): written by the statement that also counts them."""
    if ticket is None:
        return _UNRECORDED
    started = time.perf_counter()
    outcomes = result.outcomes
    if not idxs:
        first, listed, decided = -1, None, b""
    elif idxs[-1] - idxs[0] == len(idxs) - 1:  # contiguous: the common case, stored cheaply
        first, listed = idxs[0], None
        decided = bytes([o.status for o in outcomes[idxs[0] : idxs[-1] + 1]])
    else:
        first, listed, decided = idxs[0], list(idxs), bytes([outcomes[i].status for i in idxs])
    reasons = {}
    for found in _WITH_REASON.finditer(decided):  # a C-speed scan for the few that have one
        i = idxs[found.start()]
        reasons[str(i)] = outcomes[i].reason
    recorded: dict[str, object] = {
        "batch_id": ticket.batch_id,
        "first_idx": first,
        "idxs": listed,
        "statuses": decided,
        "reasons": Jsonb(reasons),
        "counts": Jsonb(counts),
        "finished": ticket.finished,
        "lock": ticket.lock,
    }
    ticket.seconds += time.perf_counter() - started
    return recorded


def resume(
    conn: Conn, ticket: Ticket, size: int, rejected: Mapping[str, int], write: Write
) -> BatchResult:
    """Finish a batch of `size` events whose earlier attempt may have committed.

    Raises:
        Unavailable: a transaction of the batch is still committing after AWAIT_TIMEOUT.
    """
    entries = _settled(conn, ticket)
    ticket.unknown = False  # what committed is known now: the ledger says
    decided: dict[int, Status] = {}
    reasons: dict[int, str] = {}  # index → reason
    counts: dict[tuple[str, Status], int] = {}
    pre_counted = False  # the events rejected before the batch were counted already
    for row in entries:
        first = cast(int, row[0])
        listed = cast("list[int] | None", row[1])
        values = [Status(b) for b in cast(bytes, row[2])]
        idxs = listed if listed is not None else range(first, first + len(values))
        decided.update(zip(idxs, values, strict=True))
        reasons.update((int(i), r) for i, r in cast("dict[str, str]", row[3]).items())
        counted_rejected = 0
        for topic, per_status in cast("dict[str, list[int]]", row[4]).items():
            for status, n in zip(Status, per_status, strict=True):
                if n:
                    counts[topic, status] = counts.get((topic, status), 0) + n
            counted_rejected += per_status[Status.REJECTED - 1]
        pre_counted |= counted_rejected > values.count(Status.REJECTED)
    if entries:
        log.warning(
            "batch %s: an earlier attempt committed %d of its %d events (its reply was lost); "
            "answering those from the ledger",
            ticket.batch_id,
            len(decided),
            size,
        )
    remaining = [i for i in range(size) if i not in decided]
    result = write(remaining, {} if pre_counted else rejected)
    for i, status in decided.items():
        result.outcomes[i] = Outcome(status, reasons.get(i, ""))
    for key, n in counts.items():
        result.counts[key] = result.counts.get(key, 0) + n
    return result


def _settled(conn: Conn, ticket: Ticket) -> list[tuple[object, ...]]:
    """The batch's ledger rows, once no transaction of the batch is still committing."""
    params = {"lock": ticket.lock, "batch_id": ticket.batch_id, "timeout": AWAIT_TIMEOUT}
    try:
        with conn.transaction():
            conn.execute(queries.get("set_lock_timeout"), params)
            conn.execute(queries.get("await_batch"), params)
            return conn.execute(queries.get("read_batch"), params).fetchall()
    except pg_errors.LockNotAvailable as exc:
        raise Unavailable(
            f"batch {ticket.batch_id}: an earlier attempt is still committing; retry later"
        ) from exc


def sweep(conn: Conn, older_than: float = STALE_AFTER_SECONDS) -> int:
    """Delete rows left by servers that died before forgetting them; return how many."""
    return conn.execute(queries.get("sweep_ledger"), {"older_than": older_than}).rowcount
