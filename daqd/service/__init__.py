"""The running daemon: per-stream wiring, threads, signals, systemd, ZeroMQ, metrics.

The service builds each layer from that layer's configuration section and
wires them together; it never reads another layer's keys.
"""
