"""The ConnectionManager: listeners, the handshake's policy, connection states and events."""
