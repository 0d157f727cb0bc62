"""Fast unit tests: validation, page tokens, configuration, the batcher's queue."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import pytest

from aggregator import storage
from aggregator.server import config, metrics
from aggregator.server.core import batcher, cursors, errors, ingest, validation
from aggregator.server.grpc import convert, interceptors
from aggregator.storage import embedded
from tests.support import event, wait_until


def check_event(message, max_payload_bytes):
    """Validation as the gRPC servicer calls it: on the plain values of a protobuf Event."""
    checked = validation.check_event(convert.incoming(message), max_payload_bytes)
    return checked.reason if isinstance(checked, validation.Rejected) else checked


def stats_topic(message):
    """Under which topic validation counts an event it rejects."""
    invalid = convert.incoming(message)._replace(event_id="")
    checked = validation.check_event(invalid, 100)
    assert isinstance(checked, validation.Rejected)
    return checked.stats_topic


def test_valid_event_becomes_a_new_event_with_exact_nanoseconds():
    checked = check_event(event("id", seconds=-5, nanos=7), 100)
    assert checked == storage.NewEvent("orders", "id", -5 * 10**9 + 7, "test", '{"n": 1}')


def test_limits_are_inclusive():
    assert not isinstance(
        check_event(event("i" * 255, topic="t" * 255, source="s" * 255), 100), str
    )
    assert check_event(event(payload='"' + "x" * 98 + '"'), 100) != ""
    assert isinstance(check_event(event(payload='"' + "x" * 99 + '"'), 100), str)


def test_rejected_event_counts_under_its_topic_only_when_the_topic_is_valid():
    assert stats_topic(event(topic="ok")) == "ok"
    assert stats_topic(event(topic="")) == ""
    assert stats_topic(event(topic="x" * 256)) == ""


def test_cursor_round_trips_and_is_bound_to_its_topic():
    position = storage.Position(tx=12345678901, seq=42)
    cursor = cursors.encode("orders:eu", position)
    assert cursors.decode(cursor, "orders:eu") == position
    assert cursors.decode("", "orders") == storage.Position()
    with pytest.raises(errors.BadCursor, match="another topic"):
        cursors.decode(cursor, "orders")
    with pytest.raises(errors.BadCursor, match="not a cursor"):
        cursors.decode("bm90LWEtdG9rZW4", "orders")
    old_style = "MTo0MjpvcmRlcnM"  # "1:42:orders", a sequence-order token of older servers
    with pytest.raises(errors.BadCursor, match="older server"):
        cursors.decode(old_style, "orders")


def test_config_reads_flag_then_environment_then_default():
    env = {"AGGREGATOR_PORT": "6000", "AGGREGATOR_FLUSH_WORKERS": "3", "DATABASE_URL": "pg://x"}
    assert config.load([], {}).port == 50051
    loaded = config.load([], env)
    assert (loaded.port, loaded.flush_workers, loaded.database_url) == (6000, 3, "pg://x")
    assert config.load(["--port", "7000"], env).port == 7000


def test_config_refuses_nonsense(capsys):
    with pytest.raises(SystemExit):
        config.load(["--flush-workers", "0"], {})
    assert "--flush-workers must be at least 1" in capsys.readouterr().err


def test_wal_dir_is_refused_with_a_database_url(capsys):
    assert config.load(["--wal-dir", "/disk2/wal"], {}).wal_dir == Path("/disk2/wal")
    with pytest.raises(SystemExit):
        config.load(["--wal-dir", "/disk2/wal"], {"DATABASE_URL": "postgresql://db/x"})
    assert "--wal-dir is for the embedded cluster, and DATABASE_URL is set" in (
        capsys.readouterr().err
    )


def test_every_option_is_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        config.load(["--help"], {})
    text = capsys.readouterr().out
    for name in ("--host", "--port", "--database-url", "AGGREGATOR_PORT", "DATABASE_URL"):
        assert name in text


class GatedWriter:
    """A write function that holds each batch until released; records batch sizes."""

    def __init__(self):
        self.sizes = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, events, rejected, ticket, requests=()):
        self.entered.set()
        self.release.wait(30)
        self.sizes.append(len(events))
        return storage.BatchResult([storage.Outcome(storage.Status.ACCEPTED)] * len(events))


def submission(n):
    return batcher.Submission([storage.NewEvent("t", str(i), 0, "", "{}") for i in range(n)], {})


def test_of_two_requests_under_one_id_in_a_batch_only_the_refused_one_fails():
    """The writer refuses a request by its id and its place in the batch: the first request
    under the id, written, is answered; the second, with other events, is refused."""

    class SecondRefused(GatedWriter):
        def __call__(self, events, rejected, ticket, requests=()):
            result = super().__call__(events, rejected, ticket, requests)
            result.reused = {(r.request_id, r.first) for r in requests[1:]}
            return result

    writer = SecondRefused()
    queue = batcher.Batcher(
        writer, workers=1, light_worker=False, max_batch_events=100, max_pending_events=1000
    )
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)  # held, so that the next two go in one batch
    first, second = (
        batcher.Submission(submission(1).events, {}, request_id="dup", fingerprint=print_)
        for print_ in (b"one", b"two")
    )
    assert queue.offer(first) and queue.offer(second)
    writer.release.set()
    assert first.wait(10) and second.wait(10)
    queue.close()
    assert writer.sizes == [1, 2]
    assert first.error is None and first.outcomes == [storage.Outcome(storage.Status.ACCEPTED)]
    assert isinstance(second.error, errors.RequestInvalid)


def test_batcher_takes_everything_pending_when_a_worker_frees_up():
    writer = GatedWriter()
    queue = batcher.Batcher(
        writer, workers=1, light_worker=False, max_batch_events=100, max_pending_events=1000
    )
    first = submission(1)
    assert queue.offer(first)
    assert writer.entered.wait(10)  # the idle worker flushed at once, without a linger
    rest = [submission(10) for _ in range(12)]
    for item in rest:
        assert queue.offer(item)
    writer.release.set()
    for item in [first, *rest]:
        assert item.wait(10)
    queue.close()
    assert writer.sizes == [1, 100, 20]


def two_workers(writer: GatedWriter, group_wait: float) -> batcher.Batcher:
    """Two flush workers, batches of 500 events: a light lane's worth is 10."""
    return batcher.Batcher(
        writer,
        workers=2,
        light_worker=False,
        max_batch_events=500,
        max_pending_events=1000,
        group_wait=group_wait,
    )


def test_while_a_batch_is_written_a_few_events_wait_for_it_and_go_together():
    """Group commit: a second worker starts a flush beside the one being written only for a
    light lane's worth of events (max_batch_events / LIGHT_SHARE); fewer wait for the next."""
    writer = GatedWriter()
    queue = two_workers(writer, group_wait=600)
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)  # one worker writes it; the other is idle
    few = [submission(1) for _ in range(3)]
    for item in few:
        assert queue.offer(item)
    with queue._cond:  # what the idle worker would take now: nothing
        assert queue._fill(light=False) == []
    assert queue.pending_events == 3
    writer.release.set()
    for item in few:
        assert item.wait(10)
    queue.close()
    assert writer.sizes == [1, 3]


def test_a_batch_written_for_long_holds_a_few_events_no_longer_than_the_group_wait():
    """A batch stuck on a lock or a slow COMMIT: the few events behind it get a flush of
    their own once it has been written for group_wait."""
    writer = GatedWriter()
    queue = two_workers(writer, group_wait=0.05)
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)
    writer.entered.clear()
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)  # the idle worker took it while the first is held
    writer.release.set()
    queue.close()
    assert writer.sizes == [1, 1]


def test_once_nothing_is_being_written_a_new_event_is_flushed_at_once():
    """A worker still waiting out the group wait of a batch written since must not hold
    the next request: with nothing being written, the idle workers are woken for it."""
    writer = GatedWriter()
    queue = two_workers(writer, group_wait=600)
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)  # one worker writes it
    few = submission(3)
    assert queue.offer(few)  # the other waits (up to 600 s) for the batch being written
    writer.release.set()
    assert few.wait(10)  # the first worker took them after its batch
    wait_until(lambda: queue._idle == 2, what="both workers idle")
    late = submission(1)
    assert queue.offer(late)
    assert late.wait(10)
    queue.close()
    assert writer.sizes == [1, 3, 1]


def test_a_light_lanes_worth_of_events_starts_a_second_flush_beside_the_first():
    writer = GatedWriter()
    queue = two_workers(writer, group_wait=600)
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)
    writer.entered.clear()
    assert queue.offer(submission(500 // batcher.LIGHT_SHARE))
    assert writer.entered.wait(10)  # the idle worker took them without waiting
    writer.release.set()
    queue.close()
    assert sorted(writer.sizes) == [1, 10]


def test_full_queue_times_out_with_overloaded_and_a_big_request_still_fits_an_empty_queue():
    writer = GatedWriter()
    queue = batcher.Batcher(
        writer, workers=1, light_worker=False, max_batch_events=10, max_pending_events=10
    )
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)
    assert queue.offer(submission(25))  # larger than the queue, accepted because it is empty
    late = submission(1)
    with pytest.raises(errors.Overloaded):
        asyncio.run(queue.submit(late, timeout=0.05))
    writer.release.set()
    queue.close()
    assert writer.sizes == [1, 25]  # the one that timed out was never queued
    with pytest.raises(errors.ShuttingDown):
        asyncio.run(queue.submit(submission(1)))


def test_submitters_waiting_for_room_get_in_in_the_order_they_came():
    writer = GatedWriter()
    queue = batcher.Batcher(
        writer, workers=1, light_worker=False, max_batch_events=10, max_pending_events=10
    )
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)  # the worker holds that one; the queue is empty
    assert queue.offer(submission(10))  # full now
    waiting = [submission(n) for n in (4, 5, 6)]
    cancelled = submission(2)

    async def submit_all() -> None:
        tasks = [asyncio.create_task(queue.submit(item)) for item in waiting]
        gone = asyncio.create_task(queue.submit(cancelled))
        await asyncio.sleep(0)  # each is waiting for room now
        assert not queue.offer(submission(1))  # no overtaking those who wait
        gone.cancel()
        writer.release.set()  # the flushes make room, one batch at a time
        await asyncio.gather(*tasks)

    asyncio.run(submit_all())
    for item in waiting:
        assert item.wait(10)
    queue.close()
    # Room for 10: the first two that waited went in together, the third after them.
    assert writer.sizes == [1, 10, 4 + 5, 6]
    assert not cancelled.done  # never queued, never written


def test_offer_queues_only_when_there_is_room_and_never_waits():
    writer = GatedWriter()
    queue = batcher.Batcher(
        writer, workers=1, light_worker=False, max_batch_events=10, max_pending_events=10
    )
    assert queue.offer(submission(1))
    assert writer.entered.wait(10)  # taken: the queue is empty again
    assert queue.offer(submission(10))
    started = time.monotonic()
    assert not queue.offer(submission(1))  # full: refused at once, nothing queued
    assert time.monotonic() - started < 1
    assert queue.pending_events == 10
    writer.release.set()
    queue.close()
    with pytest.raises(errors.ShuttingDown):
        queue.offer(submission(1))


def test_settle_callbacks_run_once_whether_registered_before_or_after():
    item = submission(1)
    calls = []
    item.when_done(lambda: calls.append("before"))
    assert calls == []
    item.resolve([storage.Outcome(storage.Status.ACCEPTED)])
    item.abandon()  # already settled: changes nothing, calls nothing again
    item.fail(errors.ShuttingDown())
    item.when_done(lambda: calls.append("after"))  # called at once
    assert calls == ["before", "after"]


def test_wait_blocks_until_settled_from_another_thread():
    item = submission(1)
    assert not item.wait(0.01) and not item.done
    waiter_saw: list[bool] = []
    waiter = threading.Thread(target=lambda: waiter_saw.append(item.wait(30)))
    waiter.start()
    item.resolve([storage.Outcome(storage.Status.ACCEPTED)])
    waiter.join(30)
    assert waiter_saw == [True]
    assert item.done and item.wait(0)


def test_requests_settled_together_wake_their_event_loop_once():
    """A flush settles its requests one after another on its own thread; the loop that
    waits for them is woken once for all of them, not once per request."""
    items = [submission(1) for _ in range(20)]
    accepted = [storage.Outcome(storage.Status.ACCEPTED)]
    loop = asyncio.new_event_loop()
    wakes = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(*args):
        wakes.append(args[0])
        return call_soon_threadsafe(*args)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
    core = ingest.Ingest(config.Config(), None, None, None, loop)  # type: ignore[arg-type]

    async def publish_all() -> list[list[storage.Outcome]]:
        waiting = [
            asyncio.ensure_future(core.outcomes(ingest.Pending(1, None, item))) for item in items
        ]
        await asyncio.sleep(0)  # one turn of the loop: each now waits for its commit
        flush = threading.Thread(target=lambda: [item.resolve(accepted) for item in items])
        flush.start()
        flush.join()  # the loop is blocked meanwhile: all are settled before it looks
        return await asyncio.gather(*waiting)

    try:
        assert loop.run_until_complete(publish_all()) == [accepted] * 20
    finally:
        core.close()
        loop.close()
    assert len(wakes) == 1


def test_batcher_fails_the_batch_when_the_database_stays_unavailable():
    states: list[bool] = []

    def down(events, rejected, ticket, requests=()):
        raise storage.Unavailable("down")

    queue = batcher.Batcher(
        down, workers=1, light_worker=False, retry_timeout=0.2, on_database_state=states.append
    )
    item = submission(3)
    assert queue.offer(item)
    assert item.wait(10)
    assert isinstance(item.error, errors.DatabaseUnavailable)
    assert "was not written" in item.error.message  # no COMMIT was ever sent
    assert states and not any(states)
    queue.close()


def test_a_batch_cut_at_commit_that_cannot_be_resolved_is_an_unknown_outcome():
    def cut(events, rejected, ticket, requests=()):
        ticket.committing = True  # as the writer does before its COMMIT
        raise storage.Unavailable("connection lost")

    queue = batcher.Batcher(cut, workers=1, light_worker=False, retry_timeout=0.2)
    item = submission(2)
    assert queue.offer(item)
    assert item.wait(10)
    queue.close()
    assert isinstance(item.error, errors.OutcomeUnknown)
    assert "same request_id" in item.error.message


def test_requests_of_a_stream_behind_a_failed_one_are_never_written():
    written: list[int] = []
    gate = threading.Event()

    def first_fails(events, rejected, ticket, requests=()):
        if not written:
            gate.wait(30)
            written.append(0)
            raise storage.Unavailable("down")
        written.append(len(events))
        return storage.BatchResult([storage.Outcome(storage.Status.ACCEPTED)] * len(events))

    queue = batcher.Batcher(first_fails, workers=2, light_worker=False, retry_timeout=0.0)
    stream = object()
    items = [
        batcher.Submission(submission(1).events, {}, lane=stream, ordered=True) for _ in range(3)
    ]
    assert queue.offer(items[0])
    wait_until(lambda: queue.pending_events == 0, what="the first taken")
    assert queue.offer(items[1]) and queue.offer(items[2])  # behind it in its lane
    gate.set()
    for item in items:
        assert item.wait(10)
    queue.close()
    assert isinstance(items[0].error, errors.DatabaseUnavailable)
    assert [type(i.error) for i in items[1:]] == [errors.NotWritten] * 2
    assert written == [0]  # the other worker never took them


def test_batcher_hands_each_request_exactly_its_own_outcomes_in_order():
    def write(events, rejected, ticket, requests=()):
        return storage.BatchResult(
            [storage.Outcome(storage.Status.DUPLICATE, e.event_id) for e in events]
        )

    queue = batcher.Batcher(write, workers=1, light_worker=False)
    items = [submission(n) for n in (3, 0, 2)]
    for item in items:
        assert queue.offer(item)
    for item in items:
        assert item.wait(10)
    queue.close()
    assert [[o.reason for o in item.outcomes] for item in items] == [
        ["0", "1", "2"],
        [],
        ["0", "1"],
    ]


def test_the_metrics_interceptor_wraps_each_method_once_not_per_call():
    """The counting wrapper is built for a method's first call and reused; a different
    handler for the method (another interceptor's, say) gets a wrapper of its own."""

    async def answer(request, context):
        return request

    registered = grpc.unary_unary_rpc_method_handler(answer)
    other = grpc.unary_unary_rpc_method_handler(answer)
    interceptor = interceptors.Measured(metrics.Metrics())

    class Details:
        method = "/aggregator.v1.AggregatorService/PublishBatch"
        invocation_metadata = ()

    def intercept(handler):
        async def continuation(details):
            return handler

        return asyncio.run(interceptor.intercept_service(continuation, Details()))

    first = intercept(registered)
    assert first is not registered and first.unary_unary is not answer
    assert intercept(registered) is first
    assert intercept(other) is not first
    assert intercept(None) is None


def test_an_embedded_cluster_is_sized_from_memory_and_free_disk_within_bounds():
    gib = embedded.GIB
    assert embedded.sized_settings(24 * gib, 60 * gib) == {
        "shared_buffers": "6144MB",  # a quarter of memory
        "max_wal_size": "6144MB",  # a tenth of the free disk
        "checkpoint_timeout": "15min",
    }
    small = embedded.sized_settings(256 * embedded.MIB, 2 * gib)
    assert (small["shared_buffers"], small["max_wal_size"]) == ("128MB", "1024MB")  # floors
    big = embedded.sized_settings(256 * gib, 4096 * gib)
    assert (big["shared_buffers"], big["max_wal_size"]) == ("8192MB", "8192MB")  # ceilings
