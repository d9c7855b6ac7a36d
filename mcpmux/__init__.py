"""Shared definitions of mcpmux: configuration, stack identity, the wire format, JSON-RPC helpers."""

__version__ = "0.1.0"
