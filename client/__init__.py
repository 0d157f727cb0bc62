"""Python client for the aggregator.

    with AggregatorClient("localhost:50051") as agg, agg.publisher() as pub:
        result = pub.publish(make_event("orders", {"id": 1})).result()

`AggregatorClient` wraps the unary calls and `subscribe` (follow a topic, resumable);
`Publisher` streams with batching, a bounded window, reconnect and resend; `make_event`
builds events from plain values.
"""

from aggregator.v1.aggregator_pb2 import (
    Event,
    EventStatus,
    PublishResponse,
    StoredEvent,
    SubscribeResponse,
)

from client.client import AggregatorClient
from client.errors import ClientError, PublisherClosed, PublishError, SubscribeError
from client.events import make_event, new_event_id
from client.publisher import ACCEPTED, CONFLICT, DUPLICATE, REJECTED, EventResult, Publisher

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
    "make_event",
    "new_event_id",
]
