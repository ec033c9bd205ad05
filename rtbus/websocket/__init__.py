"""WebSocket protocol core, sans-I/O: frames, handshake, connection state machine, rate limit."""
