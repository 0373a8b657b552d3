"""A full disk (issue 14, item 3): refused with a clear error, never a crash, nothing acked
lost, recovery by itself when space returns, and a fleet alert while it lasts.

The disk is a real small file system (tmpfs, mounted for the test; it needs root) filled
with a ballast file until ``ENOSPC``, holding the data directory of a real gateway or central
process (or of a device adapter's database); the broker and the other side are real too.
Where mounting is not permitted those tests are skipped, saying so (``-ra`` lists them); the
group-commit writer's test then still runs, on SQLite's ``PRAGMA max_page_count`` (a full
database without a small file system), and so does the late-refusal test (no disk needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.handheld import Faults, Pty, Terminal
from gateway import handheld, items
from gateway import outbox as outbox_mod
from gateway.app import migrations as gateway_migrations
from gateway.handheld import HandheldAdapter
from gateway.inbox import Inbox
from gateway.items import Item
from gateway.outbox import Outbox
from ops.broker import Mosquitto, free_port
from protocols.envelope import Ack, AckStatus, Record
from protocols.records import Channel
from runtime.sqlitedb import STORAGE_PROBE_S, DurableDB, Migration, StorageFull
from tests.conftest import wait_for
from tests.procs import Proc, basic_auth, central_db, central_proc, gateway_proc
from tests.scanner_fixtures import GTIN_A, seeded_gw
from tests.test_handheld import DEADLINE, ENQ_INTERVAL, G1, G2, RX_TIMEOUT
from tests.test_handheld import batch as ht_batch
from tests.test_pos import gateway as pos_gateway
from tests.test_pos import tx

SMALL_DISK = "24m"
# Space back -> the gateway takes orders and has synced what it held, without a hand on it.
RECOVERY_S = 15.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """``small_disk(name, size)``: a real small file system (tmpfs) mounted at ``tmp_path/name``
    for the test; the test is skipped, saying so, where mounting is not permitted."""
    mounted: list[Path] = []

    def mount(name: str, size: str = SMALL_DISK) -> Path:
        path = tmp_path / name
        path.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                capture_output=True,
                check=False,
            )
        except OSError as e:  # no mount(8) at all
            pytest.skip(f"cannot mount a tmpfs here: {e}")
        if r.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.decode().strip()}")
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until the file system has no byte left."""
    ballast = disk / "ballast"
    chunk = b"\0" * (64 * 1024)
    with ballast.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
        while True:  # the last partial block
            try:
                f.write(b"\0" * 512)
            except OSError:
                break
    return ballast


def order(ref: str) -> dict[str, object]:
    return {
        "customer": "S001",
        "requested_date": "2026-12-01",
        "lines": [{"sku": "SKU-1", "qty": 1}],
        "source_ref": ref,
    }


def post(url: str, body: dict[str, object]) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def get(url: str, *, auth: bool = False) -> Any:
    headers = basic_auth() if auth else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        return json.loads(r.read())


def refs_at_central(tmp: Path) -> list[str]:
    conn = central_db(tmp)
    try:
        return [r for (r,) in conn.execute("SELECT source_ref FROM orders")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def storage_alerts(central: Proc, gw: str) -> list[dict[str, Any]]:
    rows = get(f"{central.url}/api/alerts", auth=True)["alerts"]
    return [a for a in rows if a["kind"] == "storage_full" and a["gateway"] == gw]


def gateway_on(disk: Path, tmp: Path, broker_port: int, gw: str) -> Proc:
    """A gateway whose data directory is on ``disk`` (its config and log stay off it)."""
    port = free_port()
    cfg = tmp / f"{gw}.toml"
    cfg.write_text(
        f'gateway_id = "{gw}"\ncustomer = "S001"\ndata_dir = "{disk / gw}"\n'
        f"[mqtt]\nport = {broker_port}\n[http]\nport = {port}\n[sync]\nack_timeout_s = 2.0\n"
    )
    return Proc("gateway", cfg, port, tmp / f"{gw}.log")


def metric(p: Proc, name: str) -> float:
    with urllib.request.urlopen(f"{p.url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in {p.url}/metrics")


def alive(p: Proc) -> bool:
    return p.proc is not None and p.proc.poll() is None


# -- the group-commit writer ------------------------------------------------------------------

TABLE = [Migration("t_0001", "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)")]


async def test_a_full_database_fails_exactly_its_group_and_the_writer_lives(tmp_path: Path) -> None:
    async with DurableDB(tmp_path / "t.db", migrations=TABLE) as db:
        turns: list[bool] = []
        db.on_storage_change.append(turns.append)
        pages = await db.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await db.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 4}"))

        def small(c: sqlite3.Connection) -> int:
            return int(c.execute("INSERT INTO t (pad) VALUES (x'00')").lastrowid or 0)

        def big(c: sqlite3.Connection) -> int:
            return int(c.execute("INSERT INTO t (pad) VALUES (zeroblob(1000000))").lastrowid or 0)

        # Queued together: one group commit. SQLite rolls the whole transaction back on a full
        # database (savepoints or not), so every job of the group fails, each with StorageFull,
        # and none of them is half kept.
        results = await asyncio.gather(
            db.write(small), db.write(big), db.write(small), return_exceptions=True
        )
        assert all(isinstance(r, StorageFull) for r in results), results
        assert "full" in results[1].reason  # type: ignore[union-attr]
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
        assert db.storage_state()["state"] == "full" and turns == [False]
        assert await db.write(small) > 0  # the writer lives on and takes what fits
        with pytest.raises(StorageFull):
            await db.write(big)
        assert await db.probe() is False  # the probe's pages do not fit either
        assert db.storage_state()["state"] == "full"
        await db.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        assert await db.probe() is True
        assert db.storage_state()["state"] == "ok" and turns == [False, True]
        assert await db.write(big) > 0
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 2


async def test_commit_on_a_full_file_system_fails_its_whole_group_and_recovers(
    small_disk: Callable[[str, str], Path],
) -> None:
    disk = small_disk("disk", "2m")
    async with DurableDB(disk / "t.db", migrations=TABLE) as db:
        ballast = fill(disk)

        def row(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO t (pad) VALUES (randomblob(3000))")

        for _ in range(200):  # the WAL's room is used up, then every commit fails
            results = await asyncio.gather(*(db.write(row) for _ in range(8)), return_exceptions=True)
            if any(isinstance(r, BaseException) for r in results):
                break
        else:
            raise AssertionError("the full file system never refused a commit")
        # the COMMIT failed: SQLite rolled the transaction back, so every job of it failed
        assert all(isinstance(r, StorageFull) for r in results), results
        assert db.storage_state()["state"] == "full"
        before = await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
        with pytest.raises(StorageFull):
            await db.write(row)
        ballast.unlink()
        assert await db.probe() is True
        await asyncio.gather(*(db.write(row) for _ in range(8)))
        after = await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
        assert after == before + 8


# -- an ack the full disk kept from being applied ---------------------------------------------


async def test_a_late_refusal_waits_for_its_records_ack_rather_than_being_lost(tmp_path: Path) -> None:
    """Central acks a record on receipt and may refuse it later in processing (a downlink
    ``record_result``). If the ack was not applied here (the disk was full; it comes again as
    ``duplicate`` with the resend) the refusal must not be applied first and then lost: it
    stays unacked until the record's ack is in, and then sticks."""
    async with DurableDB(tmp_path / "g.db", migrations=gateway_migrations()) as db:
        box = Outbox(db)
        inbox = Inbox(db)
        inbox.register(outbox_mod.RECORD_RESULT, outbox_mod.apply_record_result)
        rec = await box.submit("order", order("late-1"))
        refusal = Record(
            id="rr-1",
            seq=1,
            type=outbox_mod.RECORD_RESULT,
            ts=0,
            body={"id": rec.id, "status": "rejected", "reason": "customer S001 unknown"},
        )
        assert await inbox.handle((refusal,)) == []  # not yet: central sends it again
        await box.apply_acks([Ack(rec.id, AckStatus.DUPLICATE)])
        [ack] = await inbox.handle((refusal,))
        assert ack.status is AckStatus.ACCEPTED
        result = await box.result(rec.id)
        assert result is not None and (result["status"], result["reason"]) == (
            "rejected",
            "customer S001 unknown",
        )


# -- devices: each gets its own protocol's refusal -----------------------------------------------


def fill_after_checkpoint(db: DurableDB, disk: Path) -> Path:
    """Empty the WAL into the database file, then fill the disk: the next commit needs WAL space
    that is not there (a WAL that kept its size would take a few more commits first)."""
    conn = sqlite3.connect(db.path)
    try:
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        conn.close()
    return fill(disk)


async def test_devices_get_their_refusal_not_a_crash_on_a_full_disk(
    small_disk: Callable[[str, str], Path],
) -> None:
    """A scanner's scan is refused (ACK/NAK host mode answers NAK, see gateway.serial_scanner),
    order entry and a POS till get 507 JSON; when there is room again all three go through."""
    disk = small_disk("devdisk", "4m")
    scan_gw = await seeded_gw(disk / "scan.db")
    try:
        ballast = fill_after_checkpoint(scan_gw.db, disk)
        outcome = await scan_gw.sessions.scan("sc-1", Channel.SCANNER, GTIN_A)
        assert (outcome.accepted, outcome.code) == (False, "storage_full")
        assert "storage full" in outcome.reason
        ballast.unlink()
        assert (await scan_gw.sessions.scan("sc-1", Channel.SCANNER, GTIN_A)).accepted
    finally:
        await scan_gw.db.close()
    async with pos_gateway(disk / "pos.db", store_id="store-001") as g:
        await g.count("SKU-PEN", 30)
        ballast = fill_after_checkpoint(g.db, disk)
        for path, body in (
            ("/api/pos/transactions", tx(1, ("Sale", "SKU-PEN", 2))),
            ("/api/orders", {**order("o1"), "lines": [{"sku": "SKU-PEN", "qty": 1}]}),  # a cached item
        ):
            r = await g.client.post(path, json=body)
            answer = await r.json()
            assert r.status == 507 and answer["code"] == "storage_full", (path, r.status, answer)
            assert int(r.headers["Retry-After"]) > 0
        ballast.unlink()
        assert (await g.sell(("SKU-PEN", 2)))["on_hand"] == {"SKU-PEN": 28}


async def test_handheld_batch_is_refused_on_a_full_disk_and_goes_through_after(
    small_disk: Callable[[str, str], Path],
) -> None:
    """The terminal gets EOT (refused, nothing kept) rather than an ACK or a hang; the clerk's
    resend after space returns commits the batch once."""
    disk = small_disk("htdisk", "4m")
    db = DurableDB(
        disk / "gw.db", migrations=[*outbox_mod.MIGRATIONS, *items.MIGRATIONS, *handheld.MIGRATIONS]
    )
    await db.open()
    await db.write(lambda c: items.upsert_items(c, [Item(G1, "SKU-1"), Item(G2, "SKU-2")]))
    pty = Pty()
    adapter = HandheldAdapter(
        port=pty.name,
        db=db,
        outbox=Outbox(db),
        default_customer="STORE-001",
        device_id="cradle-1",
        receiver_timeout=RX_TIMEOUT,
        linger=0.5,
        reopen_delay=0.05,
    )
    task = asyncio.create_task(adapter.run(), name="ht-adapter")
    try:
        async with asyncio.timeout(DEADLINE):
            await adapter.connected.wait()
        term = Terminal(pty.master, enq_interval=ENQ_INTERVAL)
        ballast = fill_after_checkpoint(db, disk)
        async with asyncio.timeout(DEADLINE):
            res = await term.upload(ht_batch(), Faults())
        assert not res.ok and "receiver sent EOT" in res.reason, res
        assert adapter.counters["commit_errors"] == 1 and adapter.counters["batches_committed"] == 0
        ballast.unlink()
        async with asyncio.timeout(DEADLINE):
            while adapter.counters["batches_committed"] < 1:
                if not (await term.upload(ht_batch(), Faults())).ok:
                    await asyncio.sleep(0.1)  # refused while lingering: retry like a clerk
        assert not task.done()
        n = await db.read(lambda c: c.execute("SELECT count(*) FROM ht_batches").fetchone()[0])
        assert n == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()
        pty.close()


# -- a gateway on a full disk -----------------------------------------------------------------


@pytest.mark.slow
async def test_gateway_on_a_full_disk_refuses_with_507_stays_up_and_recovers_by_itself(
    broker: Mosquitto, tmp_path: Path, small_disk: Callable[[str, str], Path]
) -> None:
    """Orders acked before the disk filled reach central while central's acks for them cannot be
    applied; new orders get 507 JSON; a restart on the full disk comes up; the fleet alert opens
    and closes; after space returns the refused orders, sent again, arrive: 0 lost, 0 twice."""
    disk = small_disk("disk", SMALL_DISK)
    central = central_proc(tmp_path, broker.port)
    gw = gateway_on(disk, tmp_path, broker.port, "store-df")
    acked: list[str] = []
    refused: list[str] = []
    try:
        await asyncio.to_thread(gw.start)
        # central is away: these wait in the outbox
        for i in range(30):
            status, _h, body = await asyncio.to_thread(post, f"{gw.url}/api/orders", order(f"before-{i}"))
            assert status == 201, body
            acked.append(f"before-{i}")
        ballast = fill(disk)
        for i in range(40):
            ref = f"full-{i}"
            status, headers, body = await asyncio.to_thread(post, f"{gw.url}/api/orders", order(ref))
            assert status in (201, 507), (status, body)
            (acked if status == 201 else refused).append(ref)
            if status == 507:
                assert body["code"] == "storage_full" and "send again" in body["error"], body
                assert body["retry_after_s"] > 0 and int(headers["Retry-After"]) > 0
        assert refused, "the full disk never refused an order"
        health = await asyncio.to_thread(get, f"{gw.url}/api/health")
        assert health["storage"]["state"] == "full", health
        assert metric(gw, "storegate_gateway_storage_full") == 1

        # central comes: it stores what the gateway acked to its devices; its acks cannot
        # be applied at the gateway (the outbox keeps the records), and the gateway lives on
        await asyncio.to_thread(central.start)
        await wait_for(
            lambda: set(acked) <= set(refs_at_central(tmp_path)),
            timeout=30,
            what="acked orders at central",
        )
        await wait_for(lambda: storage_alerts(central, "store-df"), timeout=20, what="storage_full alert")
        await wait_for(
            lambda: metric(gw, "storegate_gateway_acks_unapplied_total") >= len(acked),
            timeout=20,
            what="central's acks reached the gateway (and could not be applied)",
        )
        assert alive(gw), "the gateway exited on the full disk"
        health = await asyncio.to_thread(get, f"{gw.url}/api/health")
        assert health["storage"]["state"] == "full" and health["backlog"] > 0, health

        snap = await asyncio.to_thread(get, f"{central.url}/api/fleet", auth=True)
        [card] = [g for gws in snap["sites"].values() for g in gws if g["gateway"] == "store-df"]
        assert card["storage_state"] == "full" and card["storage_reason"], card  # the dashboard's data

        # restarts on the full disk (after a crash, after a clean stop) come up, no crash loop,
        # and know the disk is full
        for restart in (gw.kill, gw.stop):
            restart()
            await asyncio.to_thread(gw.start)
            health = await asyncio.to_thread(get, f"{gw.url}/api/health")
            assert health["storage"]["state"] == "full", (restart, health)
        status, _h, body = await asyncio.to_thread(post, f"{gw.url}/api/orders", order("after-restart"))
        assert status == 507, body
        refused.append("after-restart")

        # space returns: the gateway finds it by itself, syncs what it holds, takes orders
        ballast.unlink()
        freed = time.monotonic()
        await wait_for(
            lambda: get(f"{gw.url}/api/health")["storage"]["state"] == "ok", timeout=20, what="storage ok"
        )
        await wait_for(lambda: get(f"{gw.url}/api/health")["backlog"] == 0, timeout=30, what="outbox drained")
        recovered_s = time.monotonic() - freed
        print(f"gateway recovered {recovered_s:.1f}s after space returned (probe every {STORAGE_PROBE_S}s)")
        assert recovered_s < RECOVERY_S
        for ref in refused:  # the devices send again what was refused
            status, _h, body = await asyncio.to_thread(post, f"{gw.url}/api/orders", order(ref))
            assert status == 201, body
            acked.append(ref)
        await wait_for(
            lambda: set(acked) <= set(refs_at_central(tmp_path)),
            timeout=30,
            what="every order at central",
        )
        await wait_for(lambda: not storage_alerts(central, "store-df"), timeout=20, what="alert closed")
        at_central = refs_at_central(tmp_path)
        lost = set(acked) - set(at_central)
        twice = {r for r in at_central if at_central.count(r) > 1}
        assert (lost, twice) == (set(), set())
        assert len(at_central) == len(acked)
        assert alive(gw)
    finally:
        gw.kill()
        central.kill()


# -- central on a full disk -------------------------------------------------------------------


@pytest.mark.slow
async def test_central_on_a_full_disk_stops_acking_stays_up_and_recovers(
    broker: Mosquitto, tmp_path: Path, small_disk: Callable[[str, str], Path]
) -> None:
    disk = small_disk("cdisk", SMALL_DISK)
    central = central_proc(disk, broker.port)
    central.log = tmp_path / "central.log"
    gw = gateway_proc(tmp_path, broker.port, "store-cf")
    acked: list[str] = []
    try:
        await asyncio.to_thread(central.start)
        await asyncio.to_thread(gw.start)
        for i in range(10):
            status, _h, body = await asyncio.to_thread(post, f"{gw.url}/api/orders", order(f"a-{i}"))
            assert status == 201, body
            acked.append(f"a-{i}")
        await wait_for(lambda: get(f"{gw.url}/api/health")["backlog"] == 0, timeout=20, what="synced")
        ballast = fill(disk)
        for i in range(30):
            status, _h, body = await asyncio.to_thread(post, f"{gw.url}/api/orders", order(f"b-{i}"))
            assert status == 201, body
            acked.append(f"b-{i}")
        await wait_for(
            lambda: get(f"{central.url}/api/health")["storage"]["state"] == "full",
            timeout=20,
            what="central sees its disk full",
        )
        # the gateway sends again after each ack timeout; central takes nothing, acks nothing
        await wait_for(
            lambda: get(f"{central.url}/api/health")["mqtt"]["storage_refused"] >= 2,
            timeout=20,
            what="central refused messages on its full disk",
        )
        assert alive(central), "central exited on the full disk"
        assert get(f"{gw.url}/api/health")["backlog"] > 0  # not acked: not committed
        central.kill()  # a restart on its full disk comes up and knows it
        await asyncio.to_thread(central.start)
        assert get(f"{central.url}/api/health")["storage"]["state"] == "full"
        ballast.unlink()
        await wait_for(lambda: get(f"{gw.url}/api/health")["backlog"] == 0, timeout=40, what="outbox drained")
        await wait_for(
            lambda: set(acked) <= set(refs_at_central(disk)), timeout=20, what="every order at central"
        )
        at_central = refs_at_central(disk)
        assert sorted(at_central) == sorted(acked)  # 0 lost, 0 twice
        await wait_for(
            lambda: get(f"{central.url}/api/health")["storage"]["state"] == "ok",
            timeout=20,
            what="storage ok",
        )
        assert alive(central)
    finally:
        gw.kill()
        central.kill()
