"""Version 1 of the wire: gRPC (`telemetry.proto`, `cluster.proto`) and MQTT (`bus.py`)."""
