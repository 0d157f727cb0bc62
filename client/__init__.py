"""Python client for the aggregator.

    with AggregatorClient("localhost:50051") as agg, agg.publisher() as pub:
        result = pub.publish(make_event("orders", {"id": 1})).result()

`AggregatorClient` wraps the unary calls and `subscribe` (follow a topic, resumable);
`Publisher` streams with batching, a bounded window, reconnect and resend; `make_event`
builds events from plain values.
"""

from aggregator.client.client import AggregatorClient
from aggregator.client.errors import (
    ClientError,
    PublisherClosed,
    PublishError,
    SubscribeError,
    Unreachable,
)
from aggregator.client.events import make_event, new_event_id
from aggregator.client.publisher import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
    REJECTED,
    EventResult,
    Publisher,
)
from aggregator.v1.aggregator_pb2 import (
    Event,
    EventStatus,
    PublishResponse,
    StoredEvent,
    SubscribeResponse,
)

__all__ = [
    "ACCEPTED",
    "CONFLICT",
    "DUPLICATE",
    "REJECTED",
    "AggregatorClient",
    "ClientError",
    "Event",
    "EventResult",
    "EventStatus",
    "PublishError",
    "PublishResponse",
    "Publisher",
    "PublisherClosed",
    "StoredEvent",
    "SubscribeError",
    "SubscribeResponse",
    "Unreachable",
    "make_event",
    "new_event_id",
]
