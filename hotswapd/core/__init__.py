"""The state machine: one supervisor, its events, the swap transaction, stop and reap."""
