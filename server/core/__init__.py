"""The transport-neutral core: validation, batching, ingestion, reads, subscriptions, errors.

Nothing here knows a wire format: the faces (server.grpc, server.http) convert theirs into
plain values, call `ingest.Ingest`, and translate `errors` with its one table.
"""
