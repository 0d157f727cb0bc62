"""Following a topic: pages of settled events, woken by the database listener.

One Listener (one connection) per server process reports which topics have new commits;
the hub wakes the subscriptions of those topics, plus every subscription waiting for an
older transaction to finish (any commit may be the one it waits for). Each subscription
still looks on its own after a bounded time, in case a notification never came. Nothing
here knows a transport: the gRPC servicer (and any other face) turns pages into messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import TracebackType

from aggregator import storage
from aggregator.server import errors

# Fallback polls: a subscription that knows unsettled events exist looks again soon (the
# transaction holding them back may not notify, e.g. one outside this service).
POLL_IDLE = 1.0
POLL_WAITING = 0.1
PAGE_SIZE = 500  # events per page, at most
PAGE_BYTES = 1024 * 1024  # payload bytes per page, about


class Subscriber:
    """One subscription's wake-up flag, as the hub sees it."""

    __slots__ = ("_woken", "delivered", "topic", "waiting")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.waiting = False  # unsettled events were seen on the last read
        self.delivered = 0  # events handed over (past the transport's flow control)
        self._woken = threading.Event()

    def wake(self) -> None:
        self._woken.set()

    def before_read(self) -> None:
        """Forget older wake-ups: the coming read sees what they announced."""
        self._woken.clear()

    def sleep(self, at_most: float | None = None) -> None:
        """Until woken, or the fallback poll is due (or `at_most` seconds passed)."""
        poll = POLL_WAITING if self.waiting else POLL_IDLE
        self._woken.wait(poll if at_most is None else min(poll, at_most))


class Hub:
    """Registers subscribers (up to `max_subscribers`) and wakes them on news."""

    def __init__(self, max_subscribers: int) -> None:
        self._max = max_subscribers
        self._lock = threading.Lock()
        self._by_topic: dict[str, set[Subscriber]] = {}
        self._count = 0
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def join(self, topic: str) -> Subscriber:
        """Raises: errors.ShuttingDown, errors.TooManySubscribers."""
        with self._lock:
            if self._closing:
                raise errors.ShuttingDown(_SHUTTING_DOWN)
            if self._count >= self._max:
                raise errors.TooManySubscribers(
                    f"the server already has {self._count} subscribers (its limit); "
                    "retry later or subscribe on another server"
                )
            subscriber = Subscriber(topic)
            self._by_topic.setdefault(topic, set()).add(subscriber)
            self._count += 1
            return subscriber

    def leave(self, subscriber: Subscriber) -> None:
        with self._lock:
            peers = self._by_topic.get(subscriber.topic)
            if peers is not None and subscriber in peers:
                peers.discard(subscriber)
                self._count -= 1
                if not peers:
                    del self._by_topic[subscriber.topic]

    def subscribers(self) -> list[Subscriber]:
        with self._lock:
            return [s for subscribers in self._by_topic.values() for s in subscribers]

    def news(self, topic: str | None) -> None:
        """Commits happened for `topic` (None: for any topic)."""
        with self._lock:
            for subscribers in self._by_topic.values():
                for subscriber in subscribers:
                    if topic is None or subscriber.waiting or subscriber.topic == topic:
                        subscriber.wake()

    def close(self) -> None:
        """Refuse new subscribers and wake every current one so that it ends."""
        with self._lock:
            self._closing = True
        self.news(None)


_SHUTTING_DOWN = "the server is shutting down; subscribe again with your last cursor"


class Subscription:
    """One follower of a topic from `position`: use it as a context, iterate pages()."""

    def __init__(
        self, hub: Hub, database: storage.Database, topic: str, position: storage.Position
    ) -> None:
        self.topic = topic
        self.position = position
        self._hub = hub
        self._database = database
        self._cancelled = False
        self._subscriber = hub.join(topic)

    def pages(self) -> Iterator[storage.Page]:
        """Non-empty pages in delivery order, forever (until cancel() or shutdown).

        Raises:
            errors.ShuttingDown: the server is stopping.
        """
        subscriber = self._subscriber
        while not self._cancelled:
            page = self._read(PAGE_SIZE)
            if page.events:
                yield page  # returns once the transport has sent it: a slow reader waits here
                subscriber.delivered += len(page.events)
            if not page.more:
                subscriber.sleep()

    def wait_for_page(self, timeout: float, *, limit: int = PAGE_SIZE) -> storage.Page:
        """The next non-empty page, or an empty one after `timeout` seconds (long polling).

        Raises:
            errors.ShuttingDown: the server is stopping.
        """
        deadline = time.monotonic() + timeout
        while True:
            page = self._read(limit)
            remaining = deadline - time.monotonic()
            if page.events or remaining <= 0 or self._cancelled:
                return page
            self._subscriber.sleep(remaining)

    def _read(self, limit: int) -> storage.Page:
        if self._hub.closing:
            raise errors.ShuttingDown(_SHUTTING_DOWN)
        self._subscriber.before_read()
        page = self._database.list_events(
            self.topic, after=self.position, limit=limit, max_bytes=PAGE_BYTES
        )
        self._subscriber.waiting = page.waiting
        self.position = page.position
        return page

    def cancel(self) -> None:
        """Stop (from any thread): pages() ends at once."""
        self._cancelled = True
        self._subscriber.wake()

    def close(self) -> None:
        self._hub.leave(self._subscriber)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
