"""Storage layer: PostgreSQL schema, batch writer, reads, and the embedded cluster.

Never imports protobuf; takes and returns the plain values in `storage.models`.
"""

from aggregator.storage.database import MAX_PAGE_SIZE, Database
from aggregator.storage.embedded import EmbeddedPostgres
from aggregator.storage.errors import (
    Busy,
    DiskFull,
    EmbeddedError,
    InvalidArgument,
    Misconfigured,
    RowsRefused,
    StorageError,
    Unavailable,
    Unsupported,
)
from aggregator.storage.ledger import Ticket
from aggregator.storage.listener import Listener
from aggregator.storage.models import (
    BatchResult,
    Counters,
    KeyedEvent,
    NewEvent,
    Outcome,
    Page,
    Position,
    Stats,
    Status,
    StoredEvent,
)
from aggregator.storage.requests import NamedRequest
from aggregator.storage.requests import fingerprint as request_fingerprint

__all__ = [
    "MAX_PAGE_SIZE",
    "BatchResult",
    "Busy",
    "Counters",
    "Database",
    "DiskFull",
    "EmbeddedError",
    "EmbeddedPostgres",
    "InvalidArgument",
    "KeyedEvent",
    "Listener",
    "Misconfigured",
    "NamedRequest",
    "NewEvent",
    "Outcome",
    "Page",
    "Position",
    "RowsRefused",
    "Stats",
    "Status",
    "StorageError",
    "StoredEvent",
    "Ticket",
    "Unavailable",
    "Unsupported",
    "request_fingerprint",
]
