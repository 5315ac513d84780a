"""Controller adapters: protobuf codec and the gRPC server. They move data and decide nothing."""
