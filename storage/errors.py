"""Errors raised by the storage layer; psycopg errors are translated here, once.

StorageError
├── Unavailable      the database cannot be reached or refuses work now; retry later
│   └── DiskFull     the database has no disk space left for our writes
├── Busy             every connection for this kind of work is in use; retry later
├── RowsRefused      a batch written without isolation held a row the database refuses
├── InvalidArgument  a caller-supplied value the database cannot use
├── EmbeddedError    the embedded PostgreSQL cluster could not be set up or started
├── Misconfigured    the database URL cannot work (bad URL, credentials, host or name)
└── Unsupported      the database lacks what the schema relies on (encoding, version)
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage layer raises."""


class Unavailable(StorageError):
    """The database is unreachable or shutting down; the same call may succeed later."""


class DiskFull(Unavailable):
    """The database ran out of disk space (SQLSTATE 53100); writes succeed once it is freed."""


class Busy(StorageError):
    """The database is up but every connection for this kind of work stayed in use."""


class RowsRefused(StorageError):
    """The database refused a row of a batch written without isolation; nothing was stored."""


class InvalidArgument(StorageError):
    """A value passed by the caller cannot be used (for example a bad page position)."""


class EmbeddedError(StorageError):
    """The embedded PostgreSQL cluster could not be prepared, started or stopped."""


class Misconfigured(StorageError):
    """Connecting failed in a way retrying cannot fix (authentication, an unknown host,
    database or role, a URL that does not parse); fix the URL or the database, then restart."""


class Unsupported(StorageError):
    """The database cannot hold our data as it is configured; fix the database, then restart."""
