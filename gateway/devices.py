"""Device adapters configured for a gateway: config sections, construction, status.

Each adapter keeps its own counters; :func:`device_status` turns them into the common
device status the fleet view shows (online, reads, errors, NAKs, battery, firmware).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.asrs import AsrsAdapter
from gateway.handheld import HandheldAdapter
from gateway.hid_scanner import HidScannerAdapter
from gateway.outbox import Outbox
from gateway.ptl import PtlCart
from gateway.scanner import ScanSessions
from gateway.serial_scanner import SerialScannerAdapter
from runtime.sqlitedb import DurableDB


@dataclass(frozen=True, slots=True)
class SerialScannerConfig:
    device_id: str
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    prefix: str = ""
    suffix: str = ""
    terminator: str = "CR"
    ack_mode: bool = False


@dataclass(frozen=True, slots=True)
class HidScannerConfig:
    device_id: str
    path: str
    layout: str = "us"
    terminator: str = "enter"
    gs_substitute: str | None = None
    grab: bool = True


@dataclass(frozen=True, slots=True)
class HandheldConfig:
    device_id: str
    port: str
    baudrate: int = 9600


Adapter = SerialScannerAdapter | HidScannerAdapter | HandheldAdapter


@dataclass(slots=True)
class Device:
    id: str
    kind: str
    adapter: Adapter
    status: Callable[[], dict[str, Any]]


def _status(did: str, kind: str, *, online: bool, reads: int, errors: int, naks: int = 0) -> dict[str, Any]:
    """The device status the fleet view reads (see gateway.telemetry.DeviceState.to_wire)."""
    return {
        "id": did,
        "kind": kind,
        "state": "online" if online else "offline",
        "reads": reads,
        "errors": errors,
        "naks": naks,
        "battery": None,
        "firmware": None,
        "last_seen_ms": None,
        "last_error": None,
    }


def build_devices(
    *,
    db: DurableDB,
    outbox: Outbox,
    customer: str,
    serial_scanners: tuple[SerialScannerConfig, ...] | list[SerialScannerConfig],
    hid_scanners: tuple[HidScannerConfig, ...] | list[HidScannerConfig],
    handhelds: tuple[HandheldConfig, ...] | list[HandheldConfig],
) -> tuple[ScanSessions | None, list[Device]]:
    devices: list[Device] = []
    sessions = None
    if serial_scanners or hid_scanners:
        sessions = ScanSessions(db=db, outbox=outbox, customer=customer)
    for sc in serial_scanners:
        assert sessions is not None
        ser = SerialScannerAdapter(
            device_id=sc.device_id,
            port=sc.port,
            sessions=sessions,
            baudrate=sc.baudrate,
            bytesize=sc.bytesize,
            parity=sc.parity,
            stopbits=sc.stopbits,
            prefix=sc.prefix.encode(),
            suffix=sc.suffix.encode(),
            terminator=sc.terminator,
            ack_mode=sc.ack_mode,
        )
        devices.append(
            Device(sc.device_id, "serial-scanner", ser, _scanner_status(ser, sc.device_id, "serial-scanner"))
        )
    for hc in hid_scanners:
        assert sessions is not None
        hid = HidScannerAdapter(
            device_id=hc.device_id,
            path=hc.path,
            sessions=sessions,
            layout=hc.layout,
            terminator=hc.terminator,
            gs_substitute=hc.gs_substitute,
            grab=hc.grab,
        )
        devices.append(
            Device(hc.device_id, "hid-scanner", hid, _scanner_status(hid, hc.device_id, "hid-scanner"))
        )
    for ht in handhelds:
        ad = HandheldAdapter(
            port=ht.port,
            db=db,
            outbox=outbox,
            default_customer=customer,
            device_id=ht.device_id,
            baudrate=ht.baudrate,
        )
        devices.append(Device(ht.device_id, "handheld", ad, _handheld_status(ad, ht.device_id)))
    return sessions, devices


def _scanner_status(
    ad: SerialScannerAdapter | HidScannerAdapter, did: str, kind: str
) -> Callable[[], dict[str, Any]]:
    def status() -> dict[str, Any]:
        c = ad.counters
        errors = sum(c.decode_errors.values()) + sum(c.refused.values())
        naks = getattr(ad, "naks_sent", 0)
        return _status(did, kind, online=ad.opened.is_set(), reads=c.reads, errors=errors, naks=naks)

    return status


def _handheld_status(ad: HandheldAdapter, did: str) -> Callable[[], dict[str, Any]]:
    def status() -> dict[str, Any]:
        c = ad.counters
        errors = c["lines_rejected"] + c["sessions_aborted"] + c["link_errors"]
        return _status(
            did,
            "handheld",
            online=ad.connected.is_set(),
            reads=c["lines_committed"],
            errors=errors,
            naks=c["naks"],
        )

    return status


def cart_status(cart_id: str, cart: PtlCart) -> Callable[[], dict[str, Any]]:
    def status() -> dict[str, Any]:
        st = cart.stats
        errors = st.framing_errors + st.bad_frames + st.malfunctions + st.illegal_commands + st.tag_timeouts
        return _status(cart_id, "ptl", online=cart.connected.is_set(), reads=st.results, errors=errors)

    return status


def asrs_status(asrs: AsrsAdapter) -> Callable[[], dict[str, Any]]:
    def status() -> dict[str, Any]:
        return _status(asrs.device_id, "asrs", online=asrs.connected, reads=0, errors=asrs.reconnects)

    return status
