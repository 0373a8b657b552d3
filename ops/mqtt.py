"""Small MQTT helpers shared by the gateway and central clients."""

from __future__ import annotations

import logging
import socket

import aiomqtt

log = logging.getLogger(__name__)


def no_delay(client: aiomqtt.Client) -> None:
    """Turn off Nagle's algorithm on the client's socket.

    paho-mqtt leaves it on, and a small PUBLISH written while the previous one is not yet
    ACKed by TCP waits for the peer's delayed ACK: about 40 ms per hop on Linux, so a record
    took ~90 ms gateway -> central -> ack back at idle (measured). aiomqtt does not expose the
    socket; paho's ``socket()`` does, through aiomqtt's underlying client.
    """
    paho_client = getattr(client, "_client", None)
    sock = paho_client.socket() if paho_client is not None else None
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        log.warning("could not set TCP_NODELAY on the MQTT socket (%r)", sock)
