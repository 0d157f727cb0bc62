"""Recently stored keys: answer an exact re-send DUPLICATE without touching the events table.

Publishers retry, and a retry sends exactly the bytes it sent before. This map holds, for
the keys this process has recently seen stored, the event as it was received (its fields in
a plain tuple: the strings are the batch's own, not copied, and nothing is hashed), within
a memory budget in bytes (about 700 bytes an entry with a 200-byte payload). A flush
transaction answers an event DUPLICATE from the map only when its timestamp, source and
payload text are identical to the remembered ones; everything else (a key not held, the
same key with other bytes, even JSON equal up to key order) goes to the database, which
stays the authority. Remembered events are still counted and recorded in the batch ledger
by the same transaction as the rest of their batch.

Why an answer from the map is what the database would have said at that moment:

- An entry is added only after the transaction that inserted its row (ACCEPTED), or found
  it stored with equal content (DUPLICATE), has committed. Rows are never changed by the
  server, so an entry stays true for as long as nothing outside the write path changes
  the table.
- Anything else that removes or rewrites rows (DELETE, UPDATE, TRUNCATE) moves the epoch
  of `events_epoch` in its own transaction (statement trigger, migration 0004). Each flush
  transaction reads the epoch before it answers from the map; an epoch other than the
  one the entries were added under empties the map first. Entries are added under the
  epoch their own transaction read, and only while the map is still on it. So every
  answer rests on a read, inside the answering transaction, showing that nothing was
  removed since the row was seen stored: the answer is true at that read.
- Another replica only inserts, so what it stores cannot make an entry false; its keys are
  simply not in this map (the database answers them).
- A restart starts empty. A new write connection (after a failover, a restore, a lost
  connection) empties the map: the database behind it may have lost committed rows.
- If the trigger is missing or disabled (storage/sql/citus.sql drops it on Citus; a DBA may
  disable it), the map is emptied and not used. Not covered: a session that bypasses
  triggers on purpose (`session_replication_role = replica`) while deleting;
  docs/guarantees.md says so.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from aggregator.storage.models import NewEvent

Key = tuple[str, str]
# An entry's memory besides its payload: the entry and key tuples, the timestamp int, the
# dict's slot (tracemalloc: 108 bytes beyond the event's strings, rounded up) and the
# headers of topic, event_id and source (49 bytes each for ASCII text, whose characters
# are then counted one byte each; their strings are counted even where shared).
_ENTRY_OVERHEAD = 250 + 3 * 49


# What an entry holds: timestamp_ns, source, payload, and the bytes the entry keeps alive.
# A plain tuple, not the NewEvent: the garbage collector stops tracking tuples of strings
# and ints, so 100,000s of entries cost no collection pauses.
Entry = tuple[int, str, str, int]


class RecentKeys:
    """Keys with the event stored under them, in at most `budget` bytes; the first
    remembered are the first forgotten."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError("budget must be at least 1 byte")
        self.budget = budget
        self.bytes = 0
        # Oldest first; OrderedDict pops its oldest in O(1) (a dict's front fills with holes).
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._epoch: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self) -> None:
        """Forget everything (the database behind may no longer hold what was seen)."""
        with self._lock:
            self._entries = OrderedDict()
            self.bytes = 0
            self._epoch = None

    def matching(
        self, epoch: int | None, events: Sequence[NewEvent], idxs: Iterable[int]
    ) -> set[int]:
        """The events of `idxs` that are exact re-sends of remembered ones, given the epoch
        read in the current transaction (None: the epoch cannot be trusted)."""
        found: set[int] = set()
        with self._lock:
            if epoch is None or epoch != self._epoch:
                self._entries = OrderedDict()
                self.bytes = 0
                self._epoch = epoch
                return found
            entries = self._entries
            for i in idxs:
                topic, event_id, ts_ns, source, payload = events[i]
                held = entries.get((topic, event_id))
                if (
                    held is not None
                    and held[0] == ts_ns
                    and held[2] == payload
                    and held[1] == source
                ):
                    found.add(i)
        return found

    def remember(self, epoch: int | None, events: Sequence[NewEvent], idxs: Iterable[int]) -> None:
        """Add events seen stored with this content by a committed transaction that read
        `epoch`; ignored if the map has moved to another epoch since."""
        with self._lock:
            if epoch is None or epoch != self._epoch:
                return
            entries = self._entries
            get = entries.get
            getsizeof = sys.getsizeof
            added = 0
            # Per stored event on the flush's path, holding the interpreter: kept lean.
            for i in idxs:
                topic, event_id, ts_ns, source, payload = events[i]
                key = (topic, event_id)
                held = get(key)
                if held is not None:
                    added -= held[3]
                size = (
                    getsizeof(payload) + len(topic) + len(event_id) + len(source) + _ENTRY_OVERHEAD
                )
                entries[key] = (ts_ns, source, payload, size)
                added += size
            self.bytes += added
            while self.bytes > self.budget and entries:
                self.bytes -= entries.popitem(last=False)[1][3]
