"""A network namespace for a gateway, joined to the host by two veth pairs, so a test can cut
its MQTT link while its HTTP port stays reachable.

::

    host                                   namespace sgf<id>
    10.<a>.<b>.1  <-- veth "mqtt" -->  10.<a>.<b>.2    gateway -> broker at 10.<a>.<b>.1
    10.<a>.<b>.5  <-- veth "http" -->  10.<a>.<b>.6    gateway HTTP on 10.<a>.<b>.6

A partition is ``ip link set <mqtt host end> down``: the gateway's packets die in the veth
(no carrier) and the broker's have no route, so each side sees silence, not a reset - a
partition, as a cut cable or a dead switch gives. All addresses are in a /30 of 10.0.0.0/8
that no interface on the machine uses; nothing is routed outside the pair.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


class NetnsUnavailable(Exception):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def available() -> str | None:
    """None when ``ip netns`` works here; else why not (``SG_FAULTS_NETNS=0`` says no)."""
    if os.environ.get("SG_FAULTS_NETNS", "1") == "0":
        return "SG_FAULTS_NETNS=0"
    if shutil.which("ip") is None:
        return "no ip(8) command"
    if os.geteuid() != 0:
        return "not root: cannot create network namespaces"
    name = f"sgfprobe{os.getpid()}"
    try:
        r = _ip("netns", "add", name, check=False)
        if r.returncode != 0:
            return f"ip netns add failed: {r.stderr.strip()}"
        return None
    finally:
        _ip("netns", "del", name, check=False)


def _free_subnet() -> tuple[int, int]:
    used = _ip("-o", "-4", "addr", "show").stdout
    rng = random.Random()
    for _ in range(200):
        a, b = rng.randrange(200, 250), rng.randrange(0, 256)
        if f" 10.{a}.{b}." not in used:
            return a, b
    raise NetnsUnavailable("no free 10.x.y.0/29 found for the test namespace")


@dataclass(frozen=True, slots=True)
class Netns:
    name: str
    mqtt_host_if: str
    http_host_if: str
    broker_ip: str  # host end of the mqtt veth: the broker listens here
    gateway_ip: str  # namespace end of the mqtt veth
    http_host_ip: str
    http_ip: str  # namespace end of the http veth: the gateway's HTTP port

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def partition(self) -> None:
        _ip("link", "set", self.mqtt_host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.mqtt_host_if, "up")


@contextlib.contextmanager
def namespace() -> Iterator[Netns]:
    """Create the namespace and both veth pairs; remove them on exit, whatever happened."""
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    a, b = _free_subnet()
    ns = Netns(
        name=f"sgf{tag}",
        mqtt_host_if=f"sgf{tag}m",
        http_host_if=f"sgf{tag}h",
        broker_ip=f"10.{a}.{b}.1",
        gateway_ip=f"10.{a}.{b}.2",
        http_host_ip=f"10.{a}.{b}.5",
        http_ip=f"10.{a}.{b}.6",
    )
    try:
        try:
            _setup(ns)
        except subprocess.CalledProcessError as e:
            raise NetnsUnavailable(f"{' '.join(e.cmd)}: {e.stderr.strip()}") from e
        yield ns
    finally:
        for host_if in (ns.mqtt_host_if, ns.http_host_if):
            _ip("link", "del", host_if, check=False)
        _ip("netns", "del", ns.name, check=False)


def _setup(ns: Netns) -> None:
    _ip("netns", "add", ns.name)
    _ip("netns", "exec", ns.name, "ip", "link", "set", "lo", "up")
    for host_if, host_ip, ns_ip in (
        (ns.mqtt_host_if, ns.broker_ip, ns.gateway_ip),
        (ns.http_host_if, ns.http_host_ip, ns.http_ip),
    ):
        peer = f"{host_if}n"
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns.name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns.name, "ip", "addr", "add", f"{ns_ip}/30", "dev", peer)
        _ip("netns", "exec", ns.name, "ip", "link", "set", peer, "up")
