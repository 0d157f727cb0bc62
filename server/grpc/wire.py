"""Cheap looks at a serialized protobuf message before it is parsed.

Parsing materialises every element of a repeated field: a 60 MiB request of empty events
becomes 31 million objects and gigabytes of memory before any limit could be checked. Counting
the top-level occurrences of a field in the raw bytes costs one small step per field and stops
as soon as the limit is passed, so an over-limit request is refused before it is built.
"""

from __future__ import annotations

from aggregator.server.protowire import varint

MIN_FIELD_BYTES = 2  # the smallest encoding of a length-delimited field: tag + zero length
# Smaller messages are parsed without looking: at worst 128 Ki tiny elements, a bounded cost,
# and the common case (requests of a few hundred events) pays nothing for the check.
ALWAYS_PARSE_BYTES = 256 * 1024


def occurs_more_than(raw: bytes, number: int, limit: int) -> bool:
    """Whether top-level field `number` occurs more than `limit` times in `raw`.

    False without looking when `raw` is under ALWAYS_PARSE_BYTES: the caller counts after
    parsing then.

    Malformed input stops the count early; the parser reports it afterwards.
    """
    if len(raw) < max(MIN_FIELD_BYTES * (limit + 1), ALWAYS_PARSE_BYTES):
        return False  # too short to hold that many, or cheap enough to parse and count
    count = 0
    pos = 0
    end = len(raw)
    fast_tag = (number << 3) | 2  # the field as a length-delimited one, when one byte
    try:
        while pos < end:
            if raw[pos] == fast_tag and number < 16:
                length = raw[pos + 1]
                if length < 0x80:  # one-byte length (< 128 bytes)
                    pos += 2 + length
                elif raw[pos + 2] < 0x80:  # two-byte length (< 16 KiB)
                    pos += 3 + ((length & 0x7F) | (raw[pos + 2] << 7))
                else:
                    length, pos = varint(raw, pos + 1)
                    pos += length
                count += 1
                if count > limit:
                    return True
                continue
            key, pos = varint(raw, pos)
            wire = key & 7
            if wire == 0:
                _, pos = varint(raw, pos)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = varint(raw, pos)
                pos += length
            elif wire == 5:
                pos += 4
            else:
                return False  # groups or garbage: leave it to the parser
            if key >> 3 == number:
                count += 1
                if count > limit:
                    return True
    except IndexError:
        pass  # truncated: the parser says so
    return False
