"""The gRPC face: AggregatorService on grpc.aio, converting protobuf to the core's values."""
