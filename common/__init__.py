"""Process plumbing that the agent and the controller both use, and that decides nothing.

TLS contexts, log set-up, systemd notify, the layered settings loader, pipe handling, exit codes,
CLI argument helpers, reconnect backoff and the MQTT session loop. It imports neither
`xpuctl.agent` nor `xpuctl.controller` (import-linter checks that); what the two programs say to
each other lives in `xpuctl.protos`.
"""
