"""`xpuctl`, the operator's command line, and `xpuctl top`, its live dashboard.

Clients of the Cluster gRPC API only: they import the wire (`xpuctl.protos`), the TUI's pure
view-models and renderers, and nothing of the controller's state.
"""
