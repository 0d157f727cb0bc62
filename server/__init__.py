"""The aggregator gRPC server. `python -m server --help` lists its options."""

from server.app import Server
from server.config import Config

__all__ = ["Config", "Server"]
