"""Protobuf's wire format read without a parser, where a check or a copy needs only a few
fields of a message's bytes (the gRPC face's precheck, the OTLP face's decoding)."""

from __future__ import annotations


def varint(raw: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it. IndexError when the bytes end first
    or it runs past 64 bits (not a varint): callers report either as a malformed message."""
    result = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise IndexError("not a varint")
