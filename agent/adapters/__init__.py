"""Agent adapters: protobuf codec, gRPC link. They move data and decide nothing."""
