"""Why the shipped broker config raises max_queued_messages: measured, not assumed.

With Mosquitto's default (1000), QoS 1 messages queued for an offline persistent-session
client beyond the limit are dropped after the publisher already got its PUBACK. The shipped
config keeps them all. This is the reason no design here may treat a PUBACK as delivery.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ops.broker import BrokerConfig, Mosquitto, free_port

N = 1500
TOPIC = "sg/v1/gw/store-1/down"


def client(port: int, cid: str, *, clean: bool) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=clean, properties=props)
    return c


def delivered_after_offline(port: int) -> int:
    """Queue N QoS1 messages for an offline subscriber; count what it gets on return."""
    sub = client(port, "offline-sub", clean=True)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.loop_start()
    sub.subscribe(TOPIC, qos=1)
    assert subscribed.wait(10)
    sub.disconnect()
    sub.loop_stop()

    pub = client(port, "publisher", clean=True)
    pub.loop_start()
    for i in range(N):
        pub.publish(TOPIC, str(i).encode(), qos=1).wait_for_publish(10)  # every one PUBACKed

    got: list[bytes] = []
    barrier = threading.Event()

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        if msg.payload == b"barrier":
            barrier.set()
        else:
            got.append(msg.payload)

    sub = client(port, "offline-sub", clean=False)
    sub.on_message = on_message
    connected = threading.Event()
    sub.on_connect = lambda *a: connected.set()
    sub.loop_start()
    assert connected.wait(10)
    # The queued messages are delivered in order before anything published from now on.
    pub.publish(TOPIC, b"barrier", qos=1).wait_for_publish(10)
    assert barrier.wait(30)
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()
    return len(got)


@pytest.mark.parametrize(
    ("limit", "expect_all"), [(1000, False), (0, True)], ids=["mosquitto-default", "shipped"]
)
def test_queue_limit_drops_acked_messages_unless_raised(tmp_path: Path, limit: int, expect_all: bool) -> None:
    broker = Mosquitto(BrokerConfig(port=free_port(), data_dir=tmp_path / "b", max_queued_messages=limit))
    broker.start()
    try:
        n = delivered_after_offline(broker.port)
    finally:
        broker.kill()
    if expect_all:
        assert n == N
    else:
        assert n < N, "mosquitto's default limit is expected to drop PUBACKed messages"
        print(f"mosquitto default max_queued_messages=1000: {n} of {N} PUBACKed messages delivered")
