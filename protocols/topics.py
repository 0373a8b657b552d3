"""The MQTT topic tree.

Every gateway owns exactly one subtree, named by its gateway id, which is also its broker
username, so one ACL pattern per direction confines it::

    sg/v1/gw/<gw>/up       gateway -> central   records and acks      (gateway: write)
    sg/v1/gw/<gw>/down     central -> gateway   acks and records      (gateway: read)
    sg/v1/gw/<gw>/status   gateway -> anyone    retained online/offline + telemetry (gateway: write)
    sg/v1/bridge/<region>/state  a regional broker's bridge -> central: "1" up, "0" down
                           (retained; the "0" is the bridge's Will, ops/BROKER.md "Regional brokers")

Central subscribes to ``$share/<group>/sg/v1/gw/+/up`` (a shared subscription, so several
central workers can split the load) and ``sg/v1/gw/+/status``. The group is ``central`` on an
open development broker; ``storegate broker-init`` gives a secured installation a secret group
name known only to central's config, because any client that joins central's group takes every
n-th uplink away from central (see ops/BROKER.md).
"""

from __future__ import annotations

import re

from protocols import ProtocolError

ROOT = "sg/v1/gw"
CENTRAL_SHARE_GROUP = "central"
# A share group name is one topic level; keep it to characters no broker treats specially.
SHARE_GROUP_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

BRIDGE_ROOT = "sg/v1/bridge"
REGION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# A gateway id is also an MQTT username and a topic level: keep it boring.
GATEWAY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class TopicError(ProtocolError):
    """A topic that is not in the tree, or a gateway id that cannot be one."""


def check_region(region: str) -> str:
    """A region (a regional broker bridged to central): one topic level, part of a username."""
    if not REGION_RE.match(region):
        raise TopicError(
            f"invalid region {region!r}: use 1-32 of a-z 0-9 _ - (starting with a letter or digit)"
        )
    return region


def bridge_state(region: str) -> str:
    return f"{BRIDGE_ROOT}/{check_region(region)}/state"


def parse_bridge_state(topic: str) -> str:
    """The region of ``sg/v1/bridge/<region>/state``; TopicError otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != BRIDGE_ROOT or parts[4] != "state":
        raise TopicError(f"topic {topic!r} is not {BRIDGE_ROOT}/<region>/state")
    return check_region(parts[3])


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


def check_share_group(group: str) -> str:
    if not SHARE_GROUP_RE.match(group):
        raise TopicError(f"invalid share group {group!r}: use 1-128 of A-Z a-z 0-9 _ -")
    return group


def central_uplink_subscription(*, shared: bool = True, group: str = CENTRAL_SHARE_GROUP) -> str:
    topic = f"{ROOT}/+/up"
    return f"$share/{check_share_group(group)}/{topic}" if shared else topic


STATUS_SUBSCRIPTION = f"{ROOT}/+/status"
BRIDGE_STATE_SUBSCRIPTION = f"{BRIDGE_ROOT}/+/state"


def parse(topic: str) -> tuple[str, str]:
    """Split ``sg/v1/gw/<gw>/<leaf>`` into ``(gw, leaf)``; raise TopicError otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != ROOT or parts[4] not in ("up", "down", "status"):
        raise TopicError(f"topic {topic!r} is not in the {ROOT}/<gw>/(up|down|status) tree")
    return check_gateway_id(parts[3]), parts[4]
