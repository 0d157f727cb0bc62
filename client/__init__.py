"""Python client for the aggregator: `AggregatorClient` and `make_event`."""

from aggregator.v1.aggregator_pb2 import Event, EventStatus, PublishResponse

from client.client import AggregatorClient
from client.events import make_event

__all__ = ["AggregatorClient", "Event", "EventStatus", "PublishResponse", "make_event"]
