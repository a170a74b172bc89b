"""The device's side of the cloud: the Decode session (delta sync, resync, circuit breaker), channels, a local service."""
