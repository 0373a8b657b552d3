"""Promising and scheduling through central's real aiohttp app on a real database opened as
the service opens it (``central/PROMISE.md``): capacity and stock stay exact when requests
race - through two apps with their own connections on one database (two workers) -, a
promise is claimed or ended once, kept promises end as they should (claimed in real time or
in a wave, expired by the clock, cancelled with the order, reserved on a receipt's arrival),
the masters refuse bad rows, and the CLI reads what REST answers. The tests taking
``central_backend`` run on SQLite and on PostgreSQL (where the two apps' writers really run
at once)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from central import schedule, wiring
from central.allocate.waves import AllocationSettings
from central.intake.ingest import apply_envelope
from central.migrations import central_db
from ops import cli
from protocols.envelope import AckStatus, Envelope, Record
from runtime.clock import now_ms
from tests.central_fixtures import Central
from tests.promise_fixtures import day, keep_promise, load, order, promise_central, stock


def _one(c: Central, sql: str, *args: Any) -> Any:
    return c.db.read(lambda conn: conn.execute(sql, args).fetchone())


async def _two_apps(target: str) -> Any:
    """A second app with its own database object (its own writer connection) on the same
    database: a second worker."""
    db2 = central_db(target, wiring.hub(AllocationSettings()))
    await db2.open()
    return db2


async def test_concurrent_reservations_never_hold_more_than_the_stock(
    tmp_path: Path, central_backend: str
) -> None:
    async with promise_central(tmp_path, target=central_backend) as a:
        await load(a)
        await stock(a, "DC1", "MUG", 5)  # the only mugs
        db2 = await _two_apps(central_backend)
        try:
            async with promise_central(tmp_path, db=db2, users="b") as b:
                body = {"customer": "C1", "reserve": True, "lines": [{"sku": "MUG", "qty": 1}]}
                answers = await asyncio.gather(
                    *(
                        (a if i % 2 else b).req("POST", "/api/promise", role="order_desk", json=body)
                        for i in range(24)
                    )
                )
        finally:
            await db2.close()
        kept = [body for status, body in answers if status == 201]
        refused = [body for status, body in answers if status != 201]
        assert len(kept) == 5 and len({k["ref"] for k in kept}) == 5
        assert {s for s, _ in answers} == {201, 409}
        assert all("no source for zone N has 1 x MUG" in r["error"] for r in refused)
        assert await _one(
            a, "SELECT on_hand, allocated FROM inventory WHERE location = 'DC1' AND sku = 'MUG'"
        ) == (
            5,
            5,
        )
        assert await _one(
            a,
            "SELECT count(*), sum(qty) FROM allocations WHERE kind = 'reservation' AND status = 'allocated'",
        ) == (5, 5)
        # and ATP says so: nothing left to promise or allocate
        status, got = await a.req("GET", "/api/inventory/atp?sku=MUG&location=DC1")
        assert status == 200 and got["atp"][0]["atp"] == 0


async def test_concurrent_vas_promises_share_the_daily_minutes(tmp_path: Path, central_backend: str) -> None:
    async with promise_central(tmp_path, target=central_backend) as a:
        await load(a)
        await stock(a, "DC1", "MUG", 100)  # DC1 only: 60 engraving minutes a day
        db2 = await _two_apps(central_backend)
        try:
            async with promise_central(tmp_path, db=db2, users="b") as b:
                body = {
                    "customer": "C1",
                    "reserve": True,
                    "lines": [{"sku": "MUG", "qty": 3, "service": "ENGRAVE"}],
                }
                answers = await asyncio.gather(
                    *(
                        (a if i % 2 else b).req("POST", "/api/promise", role="order_desk", json=body)
                        for i in range(10)
                    )
                )
        finally:
            await db2.close()
        assert [s for s, _ in answers] == [201] * 10
        per_day: dict[str, int] = {}
        for _, got in answers:
            (line,) = got["lines"]
            per_day[line["vas_day"]] = per_day.get(line["vas_day"], 0) + line["vas_minutes"]
        # 30 minutes each, 60 a day: two a day on five days from tomorrow
        assert per_day == {day(n): 60 for n in range(1, 6)}
        load_rows = await a.db.read(
            lambda c: c.execute(
                "SELECT day, booked FROM vas_load WHERE location = 'DC1' ORDER BY day"
            ).fetchall()
        )
        assert dict(load_rows) == per_day


async def test_concurrent_orders_book_a_slot_exactly_to_its_capacity(
    tmp_path: Path, central_backend: str
) -> None:
    async with promise_central(tmp_path, target=central_backend) as a:
        await load(a)
        await stock(a, "DC1", "WASHER", 50)
        when = day(2)
        line = {
            "sku": "WASHER",
            "qty": 1,
            "service": {"code": "INSTALL", "date": when, "slot": "PM"},
        }  # capacity 2
        db2 = await _two_apps(central_backend)
        try:
            async with promise_central(tmp_path, db=db2, users="b") as b:
                answers = await asyncio.gather(
                    *(
                        order(a if i % 2 else b, {"customer": "C1", "requested_date": when, "lines": [line]})
                        for i in range(12)
                    )
                )
        finally:
            await db2.close()
        assert [s for s, _ in answers] == [201] * 12
        booked = [o for _, o in answers if o["services"][0]["status"] == "booked"]
        waiting = [o for _, o in answers if o["services"][0]["status"] == "waiting"]
        assert len(booked) == 2 and len(waiting) == 10
        assert {o["status"] for o in booked} == {"allocated"}
        assert {o["status"] for o in waiting} == {"held"}
        assert all(o["hold_reason"].startswith(f"slot full: line 1 INSTALL on {when} PM") for o in waiting)
        assert await _one(
            a, "SELECT booked FROM slot_load WHERE route = 'R-N' AND day = ? AND slot = 'PM'", when
        ) == (2,)
        # a held order's allocation went back: only the two booked orders hold washers
        assert await _one(a, "SELECT allocated FROM inventory WHERE location = 'DC1' AND sku = 'WASHER'") == (
            2,
        )

        # the slot is full: rescheduling into it is refused and changes nothing
        w0 = waiting[0]
        bid = w0["services"][0]["booking_id"]
        status, got = await a.req(
            "POST",
            f"/api/orders/{w0['order_no']}/services/{bid}/reschedule",
            role="order_desk",
            json={"date": when, "slot": "PM"},
        )
        assert status == 409 and got["error"].startswith(
            f"slot full: {when} PM on route R-N; free: {when} AM"
        )
        # cancelling a booked order frees its place; the waiting one takes it and is allocated
        status, _ = await a.req(
            "POST", f"/api/orders/{booked[0]['order_no']}/cancel", role="order_desk", json={}
        )
        assert status == 200
        assert await _one(
            a, "SELECT booked FROM slot_load WHERE route = 'R-N' AND day = ? AND slot = 'PM'", when
        ) == (1,)
        status, got = await a.req(
            "POST",
            f"/api/orders/{w0['order_no']}/services/{bid}/reschedule",
            role="order_desk",
            json={"date": when, "slot": "PM"},
        )
        assert status == 200 and got["status"] == "booked"
        status, o = await a.req("GET", f"/api/orders/{w0['order_no']}")
        assert o["status"] == "allocated" and o["hold_reason"] == ""
        events = [e["event"] for e in o["events"]]
        assert events[-4:] == ["held", "service rescheduled", "validated", "allocated"]
        assert await _one(
            a, "SELECT booked FROM slot_load WHERE route = 'R-N' AND day = ? AND slot = 'PM'", when
        ) == (2,)
        # cancelling a booking frees it too
        status, got = await a.req(
            "POST", f"/api/orders/{w0['order_no']}/services/{bid}/cancel", role="order_desk", json={}
        )
        assert status == 200 and got["status"] == "cancelled"
        assert await _one(
            a, "SELECT booked FROM slot_load WHERE route = 'R-N' AND day = ? AND slot = 'PM'", when
        ) == (1,)


async def test_a_promise_is_claimed_once_and_given_back_once(tmp_path: Path, central_backend: str) -> None:
    """Two workers race orders claiming one promise and releases of another: one claim wins
    (the losers store no order), one release gives the stock back - once."""
    async with promise_central(tmp_path, target=central_backend) as a:
        await load(a)
        await stock(a, "DC1", "MUG", 10)
        refs = []
        for _ in range(2):
            kept = await keep_promise(a, "MUG", 2)
            refs.append(kept["ref"])
        db2 = await _two_apps(central_backend)
        try:
            async with promise_central(tmp_path, db=db2, users="b") as b:
                body = {
                    "customer": "C1",
                    "requested_date": day(2),
                    "promise": refs[0],
                    "lines": [{"sku": "MUG", "qty": 2}],
                }
                claims = await asyncio.gather(*(order(a if i % 2 else b, body) for i in range(8)))
                releases = await asyncio.gather(
                    *(
                        (a if i % 2 else b).req("POST", f"/api/promise/{refs[1]}/release", role="order_desk")
                        for i in range(8)
                    )
                )
        finally:
            await db2.close()
        assert sorted(s for s, _ in claims) == [201] + [409] * 7, claims
        assert await a.count("orders") == 1
        assert sorted(s for s, _ in releases) == [200] + [409] * 7, releases
        # the claimed promise's units went to its order's allocation, the released one's back
        assert await _one(a, "SELECT on_hand, allocated FROM inventory WHERE sku = 'MUG'") == (10, 2)
        status, got = await a.req("GET", f"/api/promise/{refs[0]}")
        assert status == 200 and got["status"] == "fulfilled" and got["reserved"] == 0


async def test_a_kept_promise_expires_on_the_clock_once(tmp_path: Path, central_backend: str) -> None:
    async with promise_central(tmp_path, target=central_backend) as c:
        await load(c)
        await stock(c, "DC1", "MUG", 10)
        until = now_ms() + 60_000
        status, kept = await c.req(
            "POST",
            "/api/promise",
            role="order_desk",
            json={
                "customer": "C1",
                "hold_until": until,
                "lines": [{"sku": "MUG", "qty": 4, "service": "ENGRAVE"}],
            },
        )
        assert status == 201 and kept["status"] == "held" and kept["hold_until"] == until
        assert await _one(c, "SELECT allocated FROM inventory WHERE sku = 'MUG'") == (4,)
        assert await _one(c, "SELECT sum(booked) FROM vas_load") == (40,)
        today = dt.datetime.now(dt.UTC).date()
        # the clock's job before the deadline: nothing due
        ran = await c.db.write(partial(schedule.run_due, today=today, now=until - 1, limit=50))
        assert ran == []
        ran = await c.db.write(partial(schedule.run_due, today=today, now=until, limit=50))
        assert [(r.job, r.item) for r in ran] == [("promise-expiry", f"{kept['ref']}@{until}")]
        assert ran[0].result == "expired, 4 units and 40 VAS minutes back"
        assert await _one(c, "SELECT allocated FROM inventory WHERE sku = 'MUG'") == (0,)
        assert await _one(c, "SELECT sum(booked) FROM vas_load") == (0,)
        status, got = await c.req("GET", f"/api/promise/{kept['ref']}")
        assert got["status"] == "expired" and got["reserved"] == 0
        assert await c.db.write(partial(schedule.run_due, today=today, now=until + 1, limit=50)) == []
        # too late to claim or release it
        status, got = await order(
            c,
            {
                "customer": "C1",
                "requested_date": day(2),
                "promise": kept["ref"],
                "lines": [{"sku": "MUG", "qty": 4}],
            },
        )
        assert status == 409 and got["error"] == f"promise: {kept['ref']} is expired, not held"
        status, _ = await c.req("POST", f"/api/promise/{kept['ref']}/release", role="order_desk", json={})
        assert status == 409
        assert await c.count("orders") == 0


async def test_claims_are_checked_and_a_refused_one_stores_nothing(tmp_path: Path) -> None:
    async with promise_central(tmp_path) as c:
        await load(c)
        await stock(c, "DC1", "MUG", 10)
        kept = await keep_promise(c, "MUG", 2)
        body = {"requested_date": day(2), "promise": kept["ref"], "lines": [{"sku": "MUG", "qty": 2}]}
        status, got = await order(c, {"customer": "C2", **body})
        assert status == 422 and got["error"] == f"promise: {kept['ref']} was made for customer C1, not C2"
        status, got = await order(c, {"customer": "C1", **body, "promise": "PR99999999"})
        assert status == 422 and got["error"] == "promise: no promise 'PR99999999'"
        assert await c.count("orders") == 0
        status, got = await c.req("GET", f"/api/promise/{kept['ref']}")
        assert got["status"] == "held" and got["reserved"] == 2
        status, got = await c.req("POST", f"/api/promise/{kept['ref']}/release", role="order_desk", json={})
        assert status == 200 and got == {
            "ref": kept["ref"],
            "status": "released",
            "units": 2,
            "vas_minutes": 0,
        }
        assert await _one(c, "SELECT allocated FROM inventory WHERE sku = 'MUG'") == (0,)
        # a quote needs no customer: a zone will do; bad input is a 400 naming it
        status, got = await c.req(
            "POST", "/api/promise", role="order_desk", json={"zone": "N", "lines": [{"sku": "MUG", "qty": 1}]}
        )
        assert status == 200 and got["lines"][0]["location"] == "DC1"
        for bad, reason in (
            ({"zone": "N", "lines": []}, "lines: expected a non-empty array"),
            (
                {"zone": "N", "lines": [{"sku": "MUG", "qty": 0}]},
                "lines[0].qty: expected an integer in 1..100000, got 0",
            ),
            (
                {"zone": "N", "reserve": True, "lines": [{"sku": "MUG", "qty": 1}]},
                "customer: a kept promise is made for a customer",
            ),
            (
                {"customer": "C1", "hold_until": 5, "lines": [{"sku": "MUG", "qty": 1}]},
                "hold_until: must be in the future",
            ),
            (
                {"customer": "C1", "lines": [{"sku": "MUG", "qty": 1, "service": "INSTALL"}]},
                "service 'INSTALL' is a field service, not a value-added one (vas)",
            ),
        ):
            status, got = await c.req("POST", "/api/promise", role="order_desk", json=bad)
            assert (status, got["error"]) == (400, reason), bad
        status, _ = await c.req(
            "POST", "/api/promise", role="viewer", json={"zone": "N", "lines": [{"sku": "MUG", "qty": 1}]}
        )
        assert status == 403


async def test_wave_allocation_takes_the_claimed_stock_and_a_cancel_gives_it_back(
    tmp_path: Path, central_backend: str
) -> None:
    async with promise_central(tmp_path, realtime=False, target=central_backend) as c:
        await load(c)
        await stock(c, "DC1", "MUG", 4)
        promises = []
        for _ in range(2):
            kept = await keep_promise(c, "MUG", 2)
            promises.append(kept["ref"])
        claims = []
        for ref in promises:
            status, o = await order(
                c,
                {
                    "customer": "C1",
                    "requested_date": day(2),
                    "promise": ref,
                    "lines": [{"sku": "MUG", "qty": 2}],
                },
            )
            assert status == 201 and o["status"] == "validated"  # waits for a wave
            assert [e["event"] for e in o["events"]][-1] == "promise claimed"
            claims.append(o["order_no"])
        # while claimed, the stock stays reserved: nobody else gets it
        status, other = await order(
            c, {"customer": "C2", "requested_date": day(2), "lines": [{"sku": "MUG", "qty": 1}]}
        )
        assert status == 201
        status, got = await c.req("GET", f"/api/promise/{promises[0]}")
        assert got["status"] == "claimed" and got["reserved"] == 2 and got["order_id"] == 1
        # the first claiming order is cancelled: its promise gives its stock back
        status, _ = await c.req("POST", f"/api/orders/{claims[0]}/cancel", role="order_desk", json={})
        assert status == 200
        status, got = await c.req("GET", f"/api/promise/{promises[0]}")
        assert got["status"] == "cancelled" and got["reserved"] == 0
        status, got = await c.req("POST", "/api/waves", role="order_desk", json={})
        assert status == 201
        status, o = await c.req("GET", f"/api/orders/{claims[1]}")
        assert o["status"] == "allocated"
        assert "promise fulfilled" in [e["event"] for e in o["events"]]
        status, got = await c.req("GET", f"/api/promise/{promises[1]}")
        assert got["status"] == "fulfilled" and got["reserved"] == 0
        status, o = await c.req("GET", f"/api/orders/{other['order_no']}")
        assert o["status"] == "allocated"  # the cancelled promise's units
        assert await _one(c, "SELECT on_hand, allocated FROM inventory WHERE sku = 'MUG'") == (4, 3)


async def test_a_promise_on_a_receipt_is_reserved_when_it_arrives(
    tmp_path: Path, central_backend: str
) -> None:
    async with promise_central(tmp_path, target=central_backend) as c:
        await load(c)
        status, r = await c.req(
            "POST",
            "/api/inventory/receipts",
            role="order_desk",
            json={"location": "DC1", "sku": "OVEN", "qty": 2, "expected": day(3)},
        )
        kept = await keep_promise(c, "OVEN", 2)
        (line,) = kept["lines"]
        assert (line["limited_by"], line["receipt_id"], line["receipt_qty"], line["date"]) == (
            "receipt",
            r["receipt_id"],
            2,
            day(5),
        )
        status, quote = await c.req(
            "POST",
            "/api/promise",
            role="order_desk",
            json={"customer": "C2", "lines": [{"sku": "OVEN", "qty": 1}]},
        )
        assert quote["lines"][0]["date"] is None  # both ovens are promised
        status, _ = await c.req(
            "POST", f"/api/inventory/receipts/{r['receipt_id']}/receive", role="supervisor", json={}
        )
        assert status == 200
        status, got = await c.req("GET", f"/api/promise/{kept['ref']}")
        assert (
            got["reserved"] == 2 and got["lines"][0]["stock_qty"] == 2 and got["lines"][0]["receipt_qty"] == 0
        )
        status, other = await order(
            c, {"customer": "C2", "requested_date": day(2), "lines": [{"sku": "OVEN", "qty": 1}]}
        )
        assert status == 201
        alloc = await c.req("GET", f"/api/allocation/orders/{other['order_id']}")
        assert sum(a["qty"] for a in alloc[1]["allocations"]) == 0  # short: the ovens are kept
        status, mine = await order(
            c,
            {
                "customer": "C1",
                "requested_date": day(2),
                "promise": kept["ref"],
                "lines": [{"sku": "OVEN", "qty": 2}],
            },
        )
        alloc = await c.req("GET", f"/api/allocation/orders/{mine['order_id']}")
        assert sum(a["qty"] for a in alloc[1]["allocations"]) == 2


async def test_service_orders_are_idempotent_and_checked(tmp_path: Path) -> None:
    async with promise_central(tmp_path) as c:
        await load(c)
        await stock(c, "DC1", "WASHER", 5)
        when = day(2)
        body = {
            "customer": "C1",
            "requested_date": when,
            "lines": [
                {"sku": "WASHER", "qty": 1, "service": {"code": "INSTALL", "date": when, "slot": "AM"}}
            ],
        }
        key = {"Idempotency-Key": '"svc-1"'}
        first = await c.req(
            "POST", "/api/orders", role="order_desk", json={"order_type": "normal", **body}, headers=key
        )
        again = await c.req(
            "POST", "/api/orders", role="order_desk", json={"order_type": "normal", **body}, headers=key
        )
        assert first[0] == again[0] == 201 and first[1]["order_no"] == again[1]["order_no"]
        assert await c.count("service_bookings") == 1
        other = {
            **body,
            "lines": [{**body["lines"][0], "service": {"code": "INSTALL", "date": when, "slot": "PM"}}],
        }
        status, got = await c.req(
            "POST", "/api/orders", role="order_desk", json={"order_type": "normal", **other}, headers=key
        )
        assert status == 422 and "already used for another order" in got["error"]
        for service, reason in (
            (
                {"code": "ENGRAVE", "date": when, "slot": "AM"},
                "service 'ENGRAVE' is a vas service; only field services take a slot",
            ),
            (
                {"code": "INSTALL", "date": day(-1), "slot": "AM"},
                f"line 1: service date {day(-1)} is in the past",
            ),
            ({"code": "INSTALL", "date": when}, "lines[0].service.slot: expected text of 1..64 characters"),
            (
                {"code": "INSTALL", "date": "soon", "slot": "AM"},
                "lines[0].service.date: 'soon' is not a YYYY-MM-DD date",
            ),
        ):
            bad = {**body, "lines": [{**body["lines"][0], "service": service}]}
            status, got = await order(c, bad)
            assert (status, got.get("error")) == (400, reason), service
        assert await c.count("orders") == 1 and await c.count("service_bookings") == 1
        # completion is refused until it is booked and the order is under way
        status, o = await c.req("GET", f"/api/orders/{first[1]['order_no']}/services")
        bid = o["services"][0]["booking_id"]
        status, got = await c.req(
            "POST", f"/api/orders/{first[1]['order_no']}/services/{bid}/complete", role="viewer", json={}
        )
        assert status == 403
        status, got = await c.req(
            "POST", f"/api/orders/{first[1]['order_no']}/services/99/complete", role="order_desk", json={}
        )
        assert status == 404
        status, got = await c.req(
            "POST", f"/api/orders/{first[1]['order_no']}/services/{bid}/complete", role="order_desk", json={}
        )
        assert status == 200 and got["status"] == "completed"
        status, got = await c.req(
            "POST", f"/api/orders/{first[1]['order_no']}/services/{bid}/complete", role="order_desk", json={}
        )
        assert status == 409


async def test_masters_refuse_bad_rows_all_or_none(tmp_path: Path) -> None:
    async with promise_central(tmp_path) as c:
        await load(c)
        for kind, csv, reason in (
            (
                "services",
                "code,kind,minutes_per_unit\nGIFT,vas,2\nWRAP,vas,\n",
                "services 'WRAP': minutes_per_unit: line 3: a value-added service needs minutes per unit > 0",
            ),
            (
                "services",
                "code,kind\nX,repair\n",
                "services 'X': kind: line 2: 'repair' is not one of vas, field",
            ),
            (
                "lead_times",
                "location,zone,lead_days\nDC9,N,1\n",
                "lead_times 'DC9': location: line 2: 'DC9' is not an active location in the masters",
            ),
            (
                "lead_times",
                "location,zone,lead_days\nDC1,N,400\n",
                "lead_times 'DC1': lead_days: line 2: 400 not in 0..365",
            ),
            (
                "slots",
                "route,weekday,slot,capacity\nR-S,monday,AM,1\n",
                "slots 'R-S': weekday: line 2: 'monday' is not one of mon, tue, wed, thu, fri, sat, sun",
            ),
            (
                "vas_capacity",
                "location,minutes_per_day\nDC1,-5\n",
                "vas_capacity 'DC1': minutes_per_day: line 2: -5 not in 0..1000000",
            ),
        ):
            status, got = await c.req("POST", f"/api/masters/{kind}/import", data=csv)
            assert (status, got["error"]) == (400, reason), kind
        assert await _one(c, "SELECT count(*) FROM services WHERE code = 'GIFT'") == (0,)  # none of that file
        status, got = await c.req("GET", "/api/masters/lead_times/DC1")
        assert got == {"location": "DC1", "rules": [{"zone": "N", "lead_days": 1, "transit_days": 1}]}
        status, got = await c.req(
            "PUT", "/api/masters/services/GIFT", json={"kind": "vas", "minutes_per_unit": 2}
        )
        assert status == 200 and got["minutes_per_unit"] == 2 and got["active"] == 1
        status, _ = await c.req("DELETE", "/api/masters/services/GIFT")
        status, got = await c.req(
            "POST",
            "/api/promise",
            role="order_desk",
            json={"zone": "N", "lines": [{"sku": "MUG", "qty": 1, "service": "GIFT"}]},
        )
        assert (status, got["error"]) == (400, "service 'GIFT' is not an active service in the masters")
        status, got = await c.req("DELETE", "/api/masters/slots/R-N")
        status, got = await c.req("GET", "/api/slots?route=R-N&days=3")
        assert got == {"route": "R-N", "slots": []}


def test_cli_answers_what_rest_answers(
    tmp_path: Path, central_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> dict[str, Any]:
        async with promise_central(tmp_path, target=central_backend) as c:
            await load(c)
            await stock(c, "DC1", "MUG", 10)
            body = {
                "customer": "C1",
                "today": day(0),
                "lines": [{"sku": "MUG", "qty": 4, "service": "ENGRAVE"}, {"sku": "OVEN", "qty": 1}],
            }
            status, got = await c.req("POST", "/api/promise", role="order_desk", json=body)
            assert status == 200
            status, o = await order(
                c, {"customer": "C1", "requested_date": day(2), "lines": [{"sku": "MUG", "qty": 2}]}
            )
            assert status == 201 and o["order_no"] == "SO00000001"
            return got  # type: ignore[no-any-return]

    rest = asyncio.run(setup())
    capsys.readouterr()

    def run(*argv: str) -> tuple[int, str, str]:
        """``storegate ARGV --db`` central's database (the CLI's own entry point, in process)."""
        rc = cli.main([*argv, "--db", central_backend])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, err = run("promise", "--customer", "C1", "--today", day(0), "MUG=4:ENGRAVE", "OVEN=1", "--json")
    assert rc == 0, err
    assert json.loads(out)["lines"] == rest["lines"]
    rc, out, _ = run("promise", "--zone", "N", "MUG=4")
    assert rc == 0 and "lead_transit" in out and "DC1" in out
    rc, out, err = run("slots", "--customer", "C1", "--from", day(1), "--days", "2", "--json")
    assert rc == 0, err
    assert json.loads(out) == {
        "route": "R-N",
        "slots": [
            {"date": d, "slot": s, "capacity": cap, "booked": 0, "free": cap}
            for d in (day(1), day(2))
            for s, cap in (("AM", 1), ("PM", 2))
        ],
    }
    rc, out, err = run("promise", "--order", "SO00000001", "--json")
    assert rc == 0, err
    assert [(ln["sku"], ln["qty"], ln["location"]) for ln in json.loads(out)["lines"]] == [("MUG", 2, "DC1")]
    rc, _, err = run("promise", "--order", "SO00000001", "MUG=1")
    assert rc == 2 and "--order alone" in err
    rc, _, err = run("promise", "--customer", "NOPE", "MUG=1")
    assert rc == 1 and "customer 'NOPE' is not an active customer" in err


async def test_gateway_orders_with_services_are_booked_or_held_never_refused(
    tmp_path: Path, central_backend: str
) -> None:
    """Order records from a gateway (as the MQTT consumer hands them over, several in one
    envelope): a line's service is booked with its order; one central cannot book is not a
    refusal - the order is held with the reason - and the plain orders around them go through
    the batch path as before."""
    async with promise_central(tmp_path, target=central_backend) as c:
        await load(c)
        await stock(c, "DC1", "WASHER", 10)
        when = day(2)

        def rec(n: int, **service: Any) -> Record:
            line: dict[str, Any] = {"sku": "WASHER", "qty": 1}
            if service:
                line["service"] = service
            body = {
                "customer": "C1",
                "channel": "manual",
                "order_type": "normal",
                "requested_date": when,
                "lines": [line],
            }
            return Record(id=f"gw-{n}", seq=n, type="order", ts=0, body=body)

        env = Envelope(
            gw="store-1",
            sent=0,
            records=(
                rec(1),
                rec(2, code="INSTALL", date=when, slot="AM"),
                rec(3, code="REPAIR", date=when, slot="AM"),
                rec(4, code="INSTALL", date=when, slot="NIGHT"),
                rec(5, code="INSTALL", date=when, slot="AM"),
                rec(6),
            ),
        )
        acks = await c.db.write(
            lambda conn: apply_envelope(conn, topic_gw="store-1", topic="sg/v1/gw/store-1/up", env=env)
        )
        assert [a.status for a in acks] == [AckStatus.ACCEPTED] * 6
        got = {}
        for n in range(1, 7):
            status, o = await c.req("GET", f"/api/orders/gw-{n}")
            got[n] = (
                o["status"],
                o["hold_reason"],
                [(b["slot"], b["status"]) for b in o.get("services", [])],
            )
        assert got[1] == ("allocated", "", [])
        assert got[2] == ("allocated", "", [("AM", "booked")])
        assert got[3] == (
            "held",
            "service: line 1: service 'REPAIR' is not an active service in the masters",
            [],
        )
        assert got[4] == (
            "held",
            f"service: line 1: route R-N has no slot 'NIGHT' on {when}",
            [("NIGHT", "waiting")],
        )
        assert got[5][0] == "held" and got[5][1].startswith(
            f"slot full: line 1 INSTALL on {when} AM (route R-N)"
        )
        assert got[6] == ("allocated", "", [])
        # the desk puts the NIGHT one into a real slot: booked, checked again, allocated
        status, o = await c.req("GET", "/api/orders/gw-4/services")
        bid = o["services"][0]["booking_id"]
        status, b = await c.req(
            "POST",
            f"/api/orders/gw-4/services/{bid}/reschedule",
            role="order_desk",
            json={"date": when, "slot": "PM"},
        )
        assert status == 200 and b["status"] == "booked"
        status, o = await c.req("GET", "/api/orders/gw-4")
        assert (o["status"], o["hold_reason"]) == ("allocated", "")


async def test_a_slot_full_hold_survives_a_change_and_a_supervisor_can_let_it_go(tmp_path: Path) -> None:
    async with promise_central(tmp_path) as c:
        await load(c)
        await stock(c, "DC1", "WASHER", 10)
        when = day(2)
        line = {"sku": "WASHER", "qty": 1, "service": {"code": "INSTALL", "date": when, "slot": "AM"}}
        status, first = await order(c, {"customer": "C1", "requested_date": when, "lines": [line]})
        status, held = await order(c, {"customer": "C2", "requested_date": when, "lines": [line]})
        assert (first["status"], held["status"]) == ("allocated", "held")
        no = held["order_no"]
        # a change runs the checks again: they pass, but the service still waits - still held
        status, o = await c.req(
            "POST",
            f"/api/orders/{no}/changes",
            role="order_desk",
            json={"action": "set_qty", "line_no": 1, "qty": 2},
        )
        assert status == 200 and o["status"] == "held", o
        assert o["hold_reason"].startswith(
            f"slot full: line 1 INSTALL on {when} AM (route R-N); free: {when} PM"
        )
        assert await _one(c, "SELECT allocated FROM inventory WHERE sku = 'WASHER'") == (1,)
        # a supervisor approves the hold: the order goes on without the slot, its booking waits
        status, o = await c.req("POST", f"/api/orders/{no}/approve", json={"reason": "customer calls back"})
        assert status == 200 and o["status"] == "allocated", o
        status, got = await c.req("GET", f"/api/orders/{no}/services")
        assert [b["status"] for b in got["services"]] == ["waiting"]


async def test_a_cancelled_line_frees_its_booking(tmp_path: Path) -> None:
    async with promise_central(tmp_path) as c:
        await load(c)
        await stock(c, "DC1", "WASHER", 10)
        await stock(c, "DC1", "MUG", 10)
        when = day(2)
        status, o = await order(
            c,
            {
                "customer": "C1",
                "requested_date": when,
                "lines": [
                    {"sku": "WASHER", "qty": 1, "service": {"code": "INSTALL", "date": when, "slot": "AM"}},
                    {"sku": "MUG", "qty": 2},
                ],
            },
        )
        assert o["status"] == "allocated" and o["services"][0]["status"] == "booked"
        slot = "SELECT booked FROM slot_load WHERE route = 'R-N' AND day = ? AND slot = 'AM'"
        assert await _one(c, slot, when) == (1,)
        status, got = await c.req(
            "POST",
            f"/api/orders/{o['order_no']}/changes",
            role="order_desk",
            json={"action": "cancel_line", "line_no": 1},
        )
        assert status == 200 and got["status"] == "allocated"
        assert await _one(c, slot, when) == (0,)
        status, got = await c.req("GET", f"/api/orders/{o['order_no']}")
        assert [b["status"] for b in got["services"]] == ["cancelled"]
        assert "service cancelled" in [e["event"] for e in got["events"]]


async def test_cancelling_an_order_gives_back_its_promises_vas_minutes(tmp_path: Path) -> None:
    async with promise_central(tmp_path) as c:
        await load(c)
        await stock(c, "DC1", "MUG", 10)
        status, kept = await c.req(
            "POST",
            "/api/promise",
            role="order_desk",
            json={
                "customer": "C1",
                "reserve": True,
                "lines": [{"sku": "MUG", "qty": 4, "service": "ENGRAVE"}],
            },
        )
        status, o = await order(
            c,
            {
                "customer": "C1",
                "requested_date": day(2),
                "promise": kept["ref"],
                "lines": [{"sku": "MUG", "qty": 4}],
            },
        )
        assert o["status"] == "allocated"
        assert await _one(c, "SELECT sum(booked) FROM vas_load") == (40,)  # the order's engraving
        status, _ = await c.req("POST", f"/api/orders/{o['order_no']}/cancel", role="order_desk", json={})
        assert status == 200
        assert await _one(c, "SELECT sum(booked) FROM vas_load") == (0,)
        assert await _one(c, "SELECT allocated FROM inventory WHERE sku = 'MUG'") == (0,)
        status, got = await c.req("GET", f"/api/promise/{kept['ref']}")
        assert got["status"] == "cancelled"


def test_the_standard_wiring_keeps_the_set_based_order_path() -> None:
    """``orders.create_batch`` processes gateway orders set-based only with the standard
    ``on_validated`` wiring (one hook, ``waves.on_validated``): the slot check lives inside it
    (``services.keeps_held``) rather than in a hook of its own, which made every gateway order
    go one by one (figure 4: ~290 instead of ~700 orders/s on the shared box)."""
    from central.allocate import waves

    assert wiring.hub(AllocationSettings()).on_validated == [waves.on_validated]


async def test_an_orders_dates_count_its_own_allocation_and_its_back_order_waits_for_a_receipt(
    tmp_path: Path,
) -> None:
    async with promise_central(tmp_path) as c:
        await load(c)
        await stock(c, "DC1", "MUG", 3)
        status, _ = await c.req(
            "POST",
            "/api/inventory/receipts",
            role="order_desk",
            json={"location": "DC1", "sku": "MUG", "qty": 10, "expected": day(4)},
        )
        assert status == 201
        status, o = await order(
            c, {"customer": "C1", "requested_date": day(2), "lines": [{"sku": "MUG", "qty": 5}]}
        )
        assert o["status"] == "allocated"  # 3 now, 2 on back order
        status, got = await c.req("POST", "/api/promise", role="order_desk", json={"order": o["order_no"]})
        assert status == 200, got
        (line,) = got["lines"]
        # its own 3 are there for it, the 2 owed (an open back order) come with the receipt
        assert (line["location"], line["stock_qty"], line["receipt_qty"], line["limited_by"]) == (
            "DC1",
            3,
            2,
            "receipt",
        )
        assert line["date"] == day(6) and got["order_no"] == o["order_no"] and got["customer"] == "C1"
        status, got = await c.req(
            "POST", "/api/promise", role="order_desk", json={"order": o["order_no"], "reserve": True}
        )
        assert status == 400 and got["error"].startswith(
            "reserve: an order is promised with its own customer"
        )
        status, got = await c.req("POST", "/api/promise", role="order_desk", json={"order": "SO99999999"})
        assert status == 404
