"""Storegate wire formats, sans-IO.

Nothing in this package does I/O: no asyncio, sockets, serial ports, SQLite or MQTT.
Each module is pure functions and small state machines (``feed(bytes) -> events``,
``encode(command) -> bytes``) shared by the gateway adapters and the device simulators.
"""


class ProtocolError(Exception):
    """Base class of every error raised by a decoder in this package."""
