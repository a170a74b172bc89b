"""The device's side of the cloud.

The Decode session (delta sync, resync, circuit breaker), channels, a local service, budgets and the
upload audit.
"""
