"""xpuctl.protos: the wire contract only (DESIGN 4 and 5).

The `.proto` files and their generated code, the MQTT payload types and topic names, and the
names the contract shares (`names.py`). Nothing here opens a socket or reads a clock.
"""
