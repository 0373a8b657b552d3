"""The MQTT topic tree.

Every gateway owns exactly one subtree, named by its gateway id, which is also its broker
username, so one ACL pattern per direction confines it::

    sg/v1/gw/<gw>/up       gateway -> central   records and acks      (gateway: write)
    sg/v1/gw/<gw>/down     central -> gateway   acks and records      (gateway: read)
    sg/v1/gw/<gw>/status   gateway -> anyone    retained online/offline + telemetry (gateway: write)

Central subscribes to ``$share/central/sg/v1/gw/+/up`` (a shared subscription, so several
central workers can split the load) and ``sg/v1/gw/+/status``.
"""

from __future__ import annotations

import re

from protocols import ProtocolError

ROOT = "sg/v1/gw"
CENTRAL_SHARE_GROUP = "central"

# A gateway id is also an MQTT username and a topic level: keep it boring.
GATEWAY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class TopicError(ProtocolError):
    """A topic that is not in the tree, or a gateway id that cannot be one."""


def check_gateway_id(gw: str) -> str:
    if not GATEWAY_ID_RE.match(gw):
        raise TopicError(
            f"invalid gateway id {gw!r}: use 1-64 of a-z 0-9 _ - (starting with a letter or digit)"
        )
    return gw


def uplink(gw: str) -> str:
    return f"{ROOT}/{check_gateway_id(gw)}/up"


def downlink(gw: str) -> str:
    return f"{ROOT}/{check_gateway_id(gw)}/down"


def status(gw: str) -> str:
    return f"{ROOT}/{check_gateway_id(gw)}/status"


def central_uplink_subscription(*, shared: bool = True) -> str:
    topic = f"{ROOT}/+/up"
    return f"$share/{CENTRAL_SHARE_GROUP}/{topic}" if shared else topic


STATUS_SUBSCRIPTION = f"{ROOT}/+/status"


def parse(topic: str) -> tuple[str, str]:
    """Split ``sg/v1/gw/<gw>/<leaf>`` into ``(gw, leaf)``; raise TopicError otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != ROOT or parts[4] not in ("up", "down", "status"):
        raise TopicError(f"topic {topic!r} is not in the {ROOT}/<gw>/(up|down|status) tree")
    return check_gateway_id(parts[3]), parts[4]
