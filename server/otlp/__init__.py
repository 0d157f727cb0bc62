"""The OTLP logs face: OpenTelemetry's LogsService/Export on the gRPC port and
POST /v1/logs (protobuf or JSON) on the HTTP port, one event per log record, on the same
ingestion core as the other faces.

records.py maps records to the core's events and decode.py reads requests (both
transport-neutral); service.py exports a request through the core; grpc_service.py and
http_route.py put it on the two servers.
"""
