"""The durable intake of the real-time service.

What arrives over HTTP (events, catalogue and user updates) is validated here (`records`) and
appended to an event log (`log`) before the service answers: the log, not any worker's memory,
is the source of truth, so every serving worker tails it and a restarted worker recovers its
state by replaying it. This layer knows the canonical schema (`marketrec.data`) but no model,
pipeline or HTTP framework, so the same intake serves the HTTP API, replays and tests.
"""
