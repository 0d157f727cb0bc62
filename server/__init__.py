"""The aggregator server: gRPC and HTTP faces over one ingestion core. `python -m server --help`
lists its options."""

from aggregator.server.app import Server
from aggregator.server.config import Config

__all__ = ["Config", "Server"]
