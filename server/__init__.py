"""The aggregator server: gRPC and HTTP faces over one ingestion core. `python -m server --help`
lists its options."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.server.app import Server
    from aggregator.server.config import Config

__all__ = ["Config", "Server"]


def __getattr__(name: str) -> object:
    """Config and Server, imported on first use: `python -m server` imports this package
    before its __main__ can take Ctrl-C, and the server's modules take a second to load."""
    if name == "Server":
        from aggregator.server.app import Server

        return Server
    if name == "Config":
        from aggregator.server.config import Config

        return Config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
