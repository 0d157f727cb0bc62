"""An OTLP logs export through the ingestion core, whatever carried it: the records become
events (records.py), are published with their key as their identity (a `log.record.uid`
or a fingerprint seen again is a DUPLICATE, never a CONFLICT), and the answer comes after
commit. Duplicates are success; only rejected records count in `partial_success`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as pb

from aggregator import storage
from aggregator.server.config import Config
from aggregator.server.core import ingest
from aggregator.server.core.validation import Incoming, Rejected
from aggregator.server.otlp import decode, records

MAX_REASONS = 10  # rejected records named in a partial success's error_message
# Records mapped between two turns of the event loop: a large export (or a JSON one, whose
# records cost several times as much to read) never holds the loop for long.
RECORDS_PER_TURN = 256


class LogsIngest:
    """Decode and export OTLP logs requests over the core; used on the core's event loop."""

    def __init__(self, core: ingest.Ingest, config: Config) -> None:
        self._core = core
        self._max_records = config.max_events_per_request
        self._max_part_bytes = config.max_payload_bytes

    def from_protobuf(self, raw: bytes) -> list[records.Scoped]:
        """A binary ExportLogsServiceRequest (see decode.from_protobuf for the errors)."""
        return decode.from_protobuf(
            raw, max_records=self._max_records, max_part_bytes=self._max_part_bytes
        )

    def from_json(self, raw: bytes) -> list[records.Scoped]:
        """An OTLP/JSON ExportLogsServiceRequest (see decode.from_json for the errors)."""
        return decode.from_json(
            raw, max_records=self._max_records, max_part_bytes=self._max_part_bytes
        )

    async def export(
        self, groups: Sequence[records.Scoped], *, publisher: Hashable | None = None
    ) -> pb.ExportLogsServiceResponse:
        """Store the records (each once, whatever was stored before), then the answer.

        Raises:
            the core's errors, as Ingest.publish.
        """
        events: list[Incoming | Rejected] = []
        for event in records.each_event(groups, received_ns=time.time_ns()):
            events.append(event)
            if len(events) % RECORDS_PER_TURN == 0:
                await asyncio.sleep(0)
        outcomes = await self._core.publish(
            events, name="the export", publisher=publisher, keyed=True
        )
        return response(outcomes)


def response(outcomes: Sequence[storage.Outcome]) -> pb.ExportLogsServiceResponse:
    """Full success (partial_success unset) unless records were rejected: then their count,
    and the first MAX_REASONS reasons with each record's index in the request."""
    rejected = [
        (i, o.reason) for i, o in enumerate(outcomes) if o.status == storage.Status.REJECTED
    ]
    if not rejected:
        return pb.ExportLogsServiceResponse()
    named = "; ".join(f"log record {i}: {reason}" for i, reason in rejected[:MAX_REASONS])
    more = len(rejected) - MAX_REASONS
    if more > 0:
        named += f"; and {more} more"
    return pb.ExportLogsServiceResponse(
        partial_success=pb.ExportLogsPartialSuccess(
            rejected_log_records=len(rejected),
            error_message=f"{len(rejected)} of {len(outcomes)} log records rejected "
            f"(the rest are stored): {named}",
        )
    )
