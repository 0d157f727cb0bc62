"""Following a topic: pages of settled events, woken by the database listener.

One Listener (one connection, its own thread) per server process reports which topics have
new commits; the hub wakes, on the event loop, the subscriptions of those topics plus every
subscription waiting for an older transaction to finish (any commit may be the one it waits
for). Each subscription still looks on its own after a bounded time, in case a notification
never came. A subscription holds no thread and no connection while it waits: only its
reads run on the read pool. Nothing here knows a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from types import TracebackType

from aggregator import storage
from aggregator.server.core import cursors, errors

# Fallback polls: a subscription that knows unsettled events exist looks again soon (the
# transaction holding them back may not notify, e.g. one outside this service).
POLL_IDLE = 1.0
POLL_WAITING = 0.1
PAGE_SIZE = 500  # events per page, at most
PAGE_BYTES = 1024 * 1024  # payload bytes per page, about (one event always fits)


class Subscriber:
    """One subscription's wake-up flag, as the hub sees it (used on the loop only)."""

    __slots__ = ("_woken", "delivered", "topic", "waiting")

    def __init__(self, topic: str | None) -> None:
        self.topic = topic  # None: every topic
        self.waiting = False  # unsettled events were seen on the last read
        self.delivered = 0  # events handed over (past the transport's flow control)
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    def before_read(self) -> None:
        """Forget older wake-ups: the coming read sees what they announced."""
        self._woken.clear()

    async def sleep(self, at_most: float | None = None) -> None:
        """Until woken, or the fallback poll is due (or `at_most` seconds passed)."""
        poll = POLL_WAITING if self.waiting else POLL_IDLE
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll if at_most is None else min(poll, at_most)):
                await self._woken.wait()


class Hub:
    """Registers subscribers (up to `max_subscribers`) and wakes them on news; lives on
    `loop`, and `news` may be called from any thread."""

    def __init__(self, max_subscribers: int, loop: asyncio.AbstractEventLoop) -> None:
        self._max = max_subscribers
        self._loop = loop
        self._by_topic: dict[str | None, set[Subscriber]] = {}
        self._count = 0
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def count(self) -> int:
        return self._count

    def join(self, topic: str | None) -> Subscriber:
        """Raises: errors.ShuttingDown, errors.TooManySubscribers."""
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
        peers = self._by_topic.get(subscriber.topic)
        if peers is not None and subscriber in peers:
            peers.discard(subscriber)
            self._count -= 1
            if not peers:
                del self._by_topic[subscriber.topic]

    def subscribers(self) -> list[Subscriber]:
        return [s for subscribers in self._by_topic.values() for s in subscribers]

    def news(self, topic: str | None) -> None:
        """From any thread: commits happened for `topic` (None: for any topic).

        With no subscriber, the loop is not woken: a subscriber joins before its first
        read, so a commit notified before it joined is one that read sees."""
        if not self._by_topic:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._wake, topic)

    def _wake(self, topic: str | None) -> None:
        for subscribers in self._by_topic.values():
            for subscriber in subscribers:
                if (
                    topic is None
                    or subscriber.waiting
                    or subscriber.topic == topic
                    or subscriber.topic is None
                ):
                    subscriber.wake()

    def close(self) -> None:
        """On the loop: refuse new subscribers and wake every current one so that it ends."""
        self._closing = True
        self._wake(None)


_SHUTTING_DOWN = "the server is shutting down; subscribe again with your last cursor"


class Subscription:
    """One follower of a topic from `position`: use it as a context, iterate pages()."""

    def __init__(
        self,
        hub: Hub,
        database: storage.Database,
        reads: Executor,
        topic: str | None,
        position: storage.Position,
    ) -> None:
        self.topic = topic
        self.position = position
        self._hub = hub
        self._database = database
        self._reads = reads
        self._cancelled = False
        self._subscriber = hub.join(topic)

    @property
    def cursor(self) -> str:
        """Where the subscription is: after the last event it delivered."""
        return cursors.encode(self.topic or cursors.EVERY_TOPIC, self.position)

    async def pages(self) -> AsyncIterator[storage.Page]:
        """Non-empty pages in delivery order, forever (until cancel() or shutdown).

        Raises:
            errors.ShuttingDown: the server is stopping.
        """
        subscriber = self._subscriber
        while not self._cancelled:
            page = await self._read(PAGE_SIZE)
            if page.events:
                yield page  # resumes once the transport has sent it: a slow reader waits here
                subscriber.delivered += len(page.events)
            if not page.more:
                await subscriber.sleep()

    async def wait_for_page(self, timeout: float, *, limit: int = PAGE_SIZE) -> storage.Page:
        """The next non-empty page, or an empty one after `timeout` seconds (long polling).

        Raises:
            errors.ShuttingDown: the server is stopping.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            page = await self._read(limit)
            remaining = deadline - loop.time()
            if page.events or remaining <= 0 or self._cancelled:
                return page
            await self._subscriber.sleep(remaining)

    async def _read(self, limit: int) -> storage.Page:
        if self._hub.closing:
            raise errors.ShuttingDown(_SHUTTING_DOWN)
        self._subscriber.before_read()
        page = await asyncio.get_running_loop().run_in_executor(
            self._reads,
            functools.partial(
                self._database.list_events,
                self.topic,
                after=self.position,
                limit=limit,
                max_bytes=PAGE_BYTES,
            ),
        )
        if self._hub.closing:
            raise errors.ShuttingDown(_SHUTTING_DOWN)
        self._subscriber.waiting = page.waiting
        self.position = page.position
        return page

    def cancel(self) -> None:
        """Stop: pages() ends at once."""
        self._cancelled = True
        self._subscriber.wake()

    def close(self) -> None:
        self._hub.leave(self._subscriber)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
