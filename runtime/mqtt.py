"""Small MQTT helpers shared by the gateway and central clients."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from runtime.retry import backoff_delay, only, stopping

log = logging.getLogger(__name__)
T = TypeVar("T")
C = TypeVar("C", bound=aiomqtt.Client)


async def keep_cancel(call: Awaitable[T]) -> T:
    """Await an aiomqtt call (``publish``, ``subscribe``) without losing a cancel.

    aiomqtt waits for the broker's answer with ``asyncio.wait_for``, which in Python 3.11
    returns the result instead of raising when the task is cancelled in the same loop step as
    the answer arrives (CPython gh-86296, fixed in 3.12). The caller's loop then goes on with
    its cancel spent and waits forever at its next await: seen as a gateway whose sync never
    stopped after the test's ``cancel()`` (the task "cancelling", parked on its next
    ``Queue.get``). The task still counts the cancel (``Task.cancelling()``), so it is raised
    here."""
    result = await call
    if stopping():
        raise asyncio.CancelledError
    return result


def raise_unless_link_lost(e: BaseException) -> None:
    """For a reconnect loop's ``except (aiomqtt.MqttError, BaseExceptionGroup) as e``:
    returns (reconnect) only if ``e`` is MQTT errors alone and the task is not being
    cancelled. Anything else is raised again; an MQTT error on the way out of a cancel - a
    cancelled TaskGroup hands back a failing child's error, not the cancellation - raises the
    cancel (retrying would swallow the stop: the task would reconnect and run on forever)."""
    if not only(e, aiomqtt.MqttError):
        raise e
    if stopping():
        raise asyncio.CancelledError from e


class Client(aiomqtt.Client):
    """``aiomqtt.Client`` whose ``publish``, ``subscribe`` and ``unsubscribe`` go through
    :func:`keep_cancel`: the gateway's and central's clients are made from this class, so no
    call of theirs can lose a cancel, whoever writes the next one.

    Two more things aiomqtt 2.5 does not give: :attr:`link_up`, and a connect that ends when
    paho gives up on it. paho drops a connection whose CONNACK does not come within the
    keepalive (a broker that accepted the TCP connection but does not answer: stopped, or
    behind a partition) and reports it as a disconnect, which aiomqtt ignores before CONNACK:
    the connect then waited for its full ``timeout`` (30 s) whatever the keepalive, and a
    gateway came back that much later after a partition ended."""

    @property
    def link_up(self) -> bool:
        """True from CONNACK until the connection is lost or closed (aiomqtt's own state)."""
        connected, disconnected = self._connected, self._disconnected
        return (
            connected.done()
            and not connected.cancelled()
            and connected.exception() is None
            and not disconnected.done()
        )

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None
    ) -> None:
        if self._lock.locked() and not self._connected.done():  # a connect waits for its CONNACK
            lost = aiomqtt.MqttError(f"connection lost before CONNACK: {reason_code}")
            self._connected.set_exception(lost)
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        await keep_cancel(super().publish(*args, **kwargs))

    async def subscribe(self, *args: Any, **kwargs: Any) -> tuple[int, ...] | list[ReasonCode]:
        return await keep_cancel(super().subscribe(*args, **kwargs))

    async def unsubscribe(self, *args: Any, **kwargs: Any) -> None:
        await keep_cancel(super().unsubscribe(*args, **kwargs))

    def manual_puback(self) -> None:
        """From now on an incoming QoS 1 message is PUBACKed only by :meth:`puback` (paho's
        manual ack, which aiomqtt does not expose): with an MQTT 5 Receive Maximum, the
        broker then sends no more than that many messages ahead of the application."""
        self._client.manual_ack_set(True)

    def puback(self, message: aiomqtt.Message) -> None:
        """Acknowledge ``message`` to the broker (after :meth:`manual_puback`)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)


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


async def stay_linked(
    connect: Callable[[], C],
    session: Callable[[C], Awaitable[None]],
    *,
    on_down: Callable[[], None],
    on_retry: Callable[[], None],
    backoff: Callable[[], tuple[float, float]],
    who: str,
) -> NoReturn:
    """The reconnect loop of a long-lived MQTT link (a gateway's sync, central's consumer):
    connect, run ``session`` until the link is lost, ``on_down`` whatever ends it, then
    ``on_retry`` and a jittered backoff within ``backoff()`` (read at each retry, so tests can
    shrink the module constants it returns) and connect again. A stop raises through
    (:func:`raise_unless_link_lost`), as does any error that is not a lost link."""
    attempt = 0
    while True:
        try:
            async with connect() as client:
                attempt = 0
                try:
                    await session(client)
                finally:
                    on_down()
        except (aiomqtt.MqttError, BaseExceptionGroup) as e:
            raise_unless_link_lost(e)
            lo, hi = backoff()
            delay = backoff_delay(attempt, lo=lo, hi=hi)
            attempt += 1
            on_retry()
            log.warning("%s mqtt link down (%s); retry in %.2fs", who, e, delay)
            await asyncio.sleep(delay)
