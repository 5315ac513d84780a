"""The controller's gRPC adapter, one module per service.

`telemetry` (the agents' Stream over raw bytes), `cluster` (the Cluster API), `access` (the
interceptor that applies the access rules) and `server` (one grpc.aio server with all of them,
health and reflection). The services do not import each other; only `server` joins them. Every
decision is in `controller/core` and the hub; these modules move bytes and map errors to status
codes.
"""
