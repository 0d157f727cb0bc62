"""storage.recent.RecentKeys on its own: bounded, tied to one epoch."""

from __future__ import annotations

from aggregator.storage import NewEvent
from aggregator.storage.recent import RecentKeys


def events(n):
    return [NewEvent("t", f"e{i}", i, "src", "{}") for i in range(n)]


def test_remembers_only_under_the_epoch_it_was_read_at():
    batch = events(3)
    recent = RecentKeys(10**6)
    assert recent.matching(1, batch, range(3)) == set()  # first read sets the epoch
    recent.remember(1, batch, [0, 1])
    assert recent.matching(1, batch, range(3)) == {0, 1}
    recent.remember(2, batch, [2])  # read another epoch: not added
    assert recent.matching(1, batch, range(3)) == {0, 1}
    assert recent.matching(2, batch, range(3)) == set()  # a new epoch forgets everything
    assert len(recent) == 0


def test_an_untrusted_epoch_forgets_and_answers_nothing():
    batch = events(1)
    recent = RecentKeys(10**6)
    recent.matching(1, batch, [0])
    recent.remember(1, batch, [0])
    assert recent.matching(None, batch, [0]) == set()
    recent.remember(None, batch, [0])
    assert len(recent) == 0


def test_the_first_remembered_are_the_first_forgotten_within_the_byte_budget():
    batch = events(5)
    one = recent_size(batch[:1])
    recent = RecentKeys(3 * one)
    recent.matching(0, batch, [])
    recent.remember(0, batch, [0, 1, 2])
    assert recent.bytes == 3 * one
    recent.remember(0, batch, [3, 4])
    assert recent.matching(0, batch, range(5)) == {2, 3, 4}
    assert len(recent) == 3 and recent.bytes == 3 * one


def test_a_large_payload_takes_its_size_out_of_the_budget():
    small = events(3)
    large = NewEvent("t", "big", 9, "src", '"' + "x" * 100_000 + '"')
    recent = RecentKeys(recent_size(small) + 1000)
    recent.matching(0, [], [])
    recent.remember(0, small, range(3))
    recent.remember(0, [large], [0])
    # Over the budget: the oldest go first until it fits again (here: everything else).
    assert len(recent) == 0 and recent.bytes == 0


def recent_size(batch):
    probe = RecentKeys(10**9)
    probe.matching(0, [], [])
    probe.remember(0, batch, range(len(batch)))
    return probe.bytes


def test_other_content_under_a_remembered_key_is_not_a_match():
    recent = RecentKeys(10**6)
    recent.matching(0, [], [])
    recent.remember(0, [NewEvent("t", "e", 1, "src", '{"v": 1}')], [0])
    others = [
        NewEvent("t", "e", 2, "src", '{"v": 1}'),
        NewEvent("t", "e", 1, "other", '{"v": 1}'),
        NewEvent("t", "e", 1, "src", '{"v": 2}'),
        NewEvent("u", "e", 1, "src", '{"v": 1}'),
    ]
    assert recent.matching(0, others, range(4)) == set()
