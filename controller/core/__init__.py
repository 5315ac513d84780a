"""Pure controller logic: registry, ring store, ingest rules. No asyncio, grpc, sockets, clocks."""
