"""A loopback TCP proxy in front of PostgreSQL that cuts connections on demand.

Used by the fault tests and `make chaos` to lose the database connection at a chosen moment:
`cut_all()` drops every connection now; `cut_at_commit()` lets the next commit through to the
server and drops that connection before the reply can come back, so the client cannot know
whether its transaction committed (it did). A commit is a COMMIT, or a statement that writes
outside an explicit transaction (an implicit transaction, committed at its Sync), that the
server answers without an error, its transaction ended (ReadyForQuery idle). `freeze()` turns
it into a black hole: every connection, open or new, stays established and nothing is
forwarded either way until `thaw()` (a dead peer behind a NAT or a stuck load balancer).
Messages are parsed only as far as needed to recognise a commit: from the client, the
statements' texts (simple Query, Parse), which statement each Bind runs, Execute and Sync;
from the server, errors, command tags and ReadyForQuery, held back from the client from a
commit on until its transaction's end is known.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import threading
from types import TracebackType

log = logging.getLogger(__name__)

_UNTYPED_REQUESTS = {80877103, 80877104}  # SSLRequest, GSSENCRequest: answered by one byte


_BEGIN, _COMMIT, _ROLLBACK, _WRITE, _OTHER = range(5)
_WORDS = {
    b"BEGIN": _BEGIN,
    b"START": _BEGIN,
    b"COMMIT": _COMMIT,
    b"END": _COMMIT,
    b"ROLLBACK": _ROLLBACK,
    b"ABORT": _ROLLBACK,
}
_WRITES = re.compile(rb"\b(?:INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


_DDL = {b"CREATE", b"ALTER", b"DROP", b"COMMENT", b"GRANT", b"REVOKE"}


def _kind(text: bytes) -> int:
    """What a statement does, as far as telling commits goes."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(b"--")]
    code = b" ".join(lines)
    words = code.split(None, 1)
    first = words[0].rstrip(b";").upper() if words else b""
    kind = _WORDS.get(first, _OTHER)
    if kind == _OTHER and first not in _DDL and _WRITES.search(code):
        return _WRITE
    return kind


class _Link:
    """One client connection and its upstream connection, with what the client's
    session is doing: its named statements' kinds, the statement bound last, whether an
    explicit transaction is open, how many Syncs (or simple Queries) it sent, and which of
    those exchanges may commit; and, on the server's side, how many exchanges ended."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.cut = threading.Event()
        self.statements: dict[bytes, int] = {}
        self.bound = _OTHER
        self.in_transaction = False
        self.exchanges = 0  # Syncs and simple Queries sent
        self.committing: set[int] = set()  # exchanges (by number) that may commit
        self.ended = -2  # the last exchange the server ended (-1: start-up, by ReadyForQuery)
        self.untyped = 0  # one-byte answers due to SSLRequest and GSSENCRequest

    def client_sent(self, kind: bytes, body: bytes) -> None:
        """Take in a message from the client, before it is forwarded."""
        if kind == b"Q":
            self._executed(_kind(body.rstrip(b"\0")))
            self.exchanges += 1
        elif kind == b"P":
            name, text = body.split(b"\0", 2)[:2]
            self.statements[name] = _kind(text)
        elif kind == b"B":
            name = body.split(b"\0", 2)[1]
            self.bound = self.statements.get(name, _OTHER)
        elif kind == b"E":
            self._executed(self.bound)
        elif kind == b"S":
            self.exchanges += 1

    def _executed(self, kind: int) -> None:
        if kind == _BEGIN:
            self.in_transaction = True
        elif kind in (_COMMIT, _ROLLBACK):
            if kind == _COMMIT and self.in_transaction:
                self.committing.add(self.exchanges)
            self.in_transaction = False
        elif kind == _WRITE and not self.in_transaction:
            self.committing.add(self.exchanges)

    def close(self) -> None:
        self.cut.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class PgProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `upstream_port` on 127.0.0.1."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._commit_cuts_armed = 0
        self.commit_cuts = 0  # commits forwarded whose reply was never delivered
        self.cuts = 0  # connections dropped by cut_all()
        self.commit_cut = threading.Event()  # set by each cut at a commit
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="pgproxy", daemon=True)
        self._acceptor.start()

    def retarget(self, upstream_port: int) -> None:
        """Send new connections to another port (existing ones are left alone)."""
        self.upstream = (self.upstream[0], upstream_port)

    def url(self, database: str, user: str = "postgres", password: str = "") -> str:
        """A URL through the proxy; `password` URL-quoted (EmbeddedPostgres.password is)."""
        login = f"{user}:{password}" if password else user
        return (
            f"postgresql://{login}@127.0.0.1:{self.port}/{database}"
            "?sslmode=disable&gssencmode=disable"
        )

    def cut_at_commit(self, times: int = 1) -> None:
        """Drop the connection of each of the next `times` commits after forwarding it."""
        with self._lock:
            self.commit_cut.clear()
            self._commit_cuts_armed += times

    def disarm(self) -> None:
        """Forget COMMIT cuts asked for and not done yet."""
        with self._lock:
            self._commit_cuts_armed = 0

    def freeze(self) -> None:
        """Stop forwarding in both directions, closing nothing."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def _forwarding(self, link: _Link) -> bool:
        """Wait while frozen; False once the link is cut or the proxy closed."""
        while not self._flowing.wait(0.2):
            if link.cut.is_set() or self._closed:
                return False
        return not link.cut.is_set()

    def cut_all(self) -> int:
        """Drop every open connection now; return how many."""
        with self._lock:
            links = list(self._links)
            self._links.clear()
            self.cuts += len(links)
        for link in links:
            link.close()
        return len(links)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut_all()
        self._acceptor.join(10)

    def __enter__(self) -> PgProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the database is down: the client sees a refused connection
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=self._frontend, args=(link,), daemon=True).start()
            threading.Thread(target=self._backend, args=(link,), daemon=True).start()

    def _drop(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
        link.close()

    def _backend(self, link: _Link) -> None:
        """Server → client, message by message, until the link is cut. The replies of an
        exchange that may commit are held back until its ReadyForQuery: committed (no
        error, no ROLLBACK, the transaction ended) while a cut at commit is armed, they
        are never delivered and the link is dropped; otherwise they go through."""
        buffer = b""
        held: list[bytes] = []
        failed = False
        try:
            while data := link.upstream.recv(65536):
                if not self._forwarding(link):
                    break
                buffer += data
                while link.untyped and buffer:  # "S" or "N" to an SSL or GSS request
                    link.client.sendall(buffer[:1])
                    buffer, link.untyped = buffer[1:], link.untyped - 1
                while len(buffer) >= 5:
                    (length,) = struct.unpack("!i", buffer[1:5])
                    if len(buffer) < 1 + length:
                        break
                    message, buffer = buffer[: 1 + length], buffer[1 + length :]
                    kind = message[:1]
                    failed |= kind == b"E" or (kind == b"C" and message[5:].startswith(b"ROLLBACK"))
                    if link.ended + 1 not in link.committing:
                        link.client.sendall(message)
                        if kind == b"Z":
                            link.ended += 1
                            failed = False
                        continue
                    held.append(message)
                    if kind != b"Z":
                        continue
                    link.ended += 1
                    link.committing.discard(link.ended)
                    if not failed and message[5:6] == b"I" and self._take_commit_cut():
                        link.cut.set()  # the reply must never reach the client
                        with self._lock:
                            self.commit_cuts += 1
                        self.commit_cut.set()
                        break
                    link.client.sendall(b"".join(held))
                    held, failed = [], False
                if link.cut.is_set():
                    break
        except OSError:
            pass
        self._drop(link)

    def _frontend(self, link: _Link) -> None:
        """Client → server, message by message, noting what may commit."""
        buffer = b""
        started = False  # past the untyped start-up messages
        try:
            while data := link.client.recv(65536):
                if not self._forwarding(link):
                    break
                buffer += data
                while True:
                    if not started:
                        if len(buffer) < 8:
                            break
                        length, code = struct.unpack("!ii", buffer[:8])
                        if len(buffer) < length:
                            break
                        started = code not in _UNTYPED_REQUESTS
                        link.untyped += not started
                        message, buffer = buffer[:length], buffer[length:]
                        link.upstream.sendall(message)
                        continue
                    if len(buffer) < 5:
                        break
                    kind = buffer[:1]
                    (length,) = struct.unpack("!i", buffer[1:5])
                    if len(buffer) < 1 + length:
                        break
                    message, buffer = buffer[: 1 + length], buffer[1 + length :]
                    link.client_sent(kind, message[5:])
                    link.upstream.sendall(message)
        except OSError:
            pass
        self._drop(link)

    def _take_commit_cut(self) -> bool:
        with self._lock:
            if self._commit_cuts_armed <= 0:
                return False
            self._commit_cuts_armed -= 1
            return True
