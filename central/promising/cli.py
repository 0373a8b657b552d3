"""``storegate promise`` and ``storegate slots``: promise dates and delivery slots read from
central's database (its SQLite file opened read only, or a ``postgresql://`` URL; nothing is
kept or booked - the REST API does that)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys

import psycopg

from central.promising import ScheduleError, promise, services
from runtime import dbapi


def _connect(db: str) -> sqlite3.Connection:
    """Central's SQLite file read only, or its PostgreSQL database (a ``postgresql://`` URL;
    these commands only read)."""
    if dbapi.is_postgres_url(db):
        return dbapi.connect(db)  # type: ignore[no-any-return]
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


DB_ERRORS = (ScheduleError, sqlite3.Error, psycopg.Error)
DB_HELP = "central database file (read only) or postgresql:// URL"


def _line(i: int, raw: str) -> promise.LineAsk:
    """``SKU=QTY`` or ``SKU=QTY:SERVICE``."""
    sku, sep, rest = raw.partition("=")
    qty, _, service = rest.partition(":")
    if not sep or not sku or not qty.isdigit() or int(qty) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not SKU=QTY or SKU=QTY:SERVICE")
    return promise.LineAsk(i + 1, sku, int(qty), service)


PROMISE_DESCRIPTION = "The earliest delivery date of each line (central/PROMISE.md), read only."
SLOTS_DESCRIPTION = "Delivery slots of a route: capacity, booked, free (read only)."


def promise_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lines", nargs="*", help="SKU=QTY or SKU=QTY:VAS_SERVICE (none with --order)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer", help="the customer (its zone is its region)")
    who.add_argument("--zone", help="a delivery zone, for a quote without a customer")
    who.add_argument("--order", help="an order's open lines (its number or record id)")
    p.add_argument(
        "--today", type=dt.date.fromisoformat, default=None, help="YYYY-MM-DD (default: today, UTC)"
    )
    p.add_argument("--db", default="var/central/central.db", help=DB_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def promise_run(args: argparse.Namespace) -> int:
    if bool(args.order) == bool(args.lines):
        print("error: give lines (SKU=QTY) with --customer or --zone, or --order alone", file=sys.stderr)
        return 2
    try:
        asks = [_line(i, raw) for i, raw in enumerate(args.lines)]
    except argparse.ArgumentTypeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    today = args.today or dt.datetime.now(dt.UTC).date()
    try:
        conn = _connect(args.db)
        try:
            customer, own = args.customer, None
            if args.order:
                _, customer, asks, own = promise.order_request(conn, args.order)
            zone = promise.zone_of(conn, customer) if customer else args.zone
            answers = promise.plan(conn, zone=zone, lines=asks, today=today, own=own)
        finally:
            conn.close()
    except DB_ERRORS as e:
        print(f"error: {args.db}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"zone": zone, "today": today.isoformat(), "lines": [a.to_json() for a in answers]}))
        return 0
    print(f"{'line':>4}  {'sku':12} {'qty':>6}  {'date':10}  {'from':8}  {'limited by':12}  detail")
    for a in answers:
        when, src = a.date.isoformat() if a.date else "-", a.location or "-"
        print(f"{a.line_no:>4}  {a.sku:12} {a.qty:>6}  {when:10}  {src:8}  {a.limited_by:12}  {a.detail}")
    return 0


def slots_arguments(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--route", help="the route")
    who.add_argument("--customer", help="the customer whose route (else zone) to show")
    p.add_argument(
        "--from", dest="start", type=dt.date.fromisoformat, default=None, help="YYYY-MM-DD (today)"
    )
    p.add_argument("--days", type=int, default=7, help=f"days to show (1..{services.MAX_DAYS})")
    p.add_argument("--db", default="var/central/central.db", help=DB_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def slots_run(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= services.MAX_DAYS:
        print(f"error: --days: {args.days} not in 1..{services.MAX_DAYS}", file=sys.stderr)
        return 2
    start = args.start or dt.datetime.now(dt.UTC).date()
    try:
        conn = _connect(args.db)
        try:
            route = args.route or services.route_of(conn, args.customer)
            rows = services.slots(conn, route, start, args.days)
        finally:
            conn.close()
    except DB_ERRORS as e:
        print(f"error: {args.db}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"route": route, "slots": rows}))
        return 0
    print(f"route {route}")
    print(f"{'date':10}  {'slot':8} {'capacity':>8} {'booked':>6} {'free':>5}")
    for r in rows:
        print(f"{r['date']:10}  {r['slot']:8} {r['capacity']:>8} {r['booked']:>6} {r['free']:>5}")
    return 0
