"""The ``storegate`` command line: one entry point for every process and tool."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from runtime.config import ConfigError

log = logging.getLogger("storegate")

# storegate order: per-attempt timeout and the backoff between attempts (same key each time)
ORDER_TIMEOUT_S = 10.0
ORDER_RETRY_FIRST_S = 0.5
ORDER_RETRY_MAX_S = 10.0

# Simulators live in firmware_sim/; each exposes main(argv) -> int. Imported lazily so a
# missing optional device stack cannot break the other commands.
SIMULATORS: dict[str, tuple[str, str]] = {
    "scanner": ("firmware_sim.serial_scanner", "serial barcode scanner on a PTY"),
    "hid": ("firmware_sim.hid_scanner", "USB-HID keyboard-wedge scanner writing input_event records"),
    "ht": ("firmware_sim.handheld", "handheld ordering terminal (BHT block protocol) on a PTY"),
    "pos": ("firmware_sim.pos", "POS terminal posting sales to a gateway"),
    "ptl": ("firmware_sim.ptl", "pick-to-light controller (TCP server)"),
    "asrs": ("firmware_sim.asrs", "AS/RS warehouse control (TCP server)"),
    "store": ("firmware_sim.store", "a whole store: clerks scanning and POS sales at a rate"),
    "fleet": ("firmware_sim.fleet", "many gateways on MQTT from one process: status, Will, orders"),
}


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run(coro_fn: Callable[[], Coroutine[Any, Any, object]]) -> int:
    """Run a service until SIGINT/SIGTERM, then cancel it so its cleanup runs."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await coro_fn()

    asyncio.run(main())
    return 0


def cmd_central(args: argparse.Namespace) -> int:
    from central.app import for_worker, load_config, serve
    from runtime.sqlitedb import tune_interpreter

    cfg = load_config(args.config)
    if args.worker is not None:
        cfg = for_worker(cfg, args.worker)
    tune_interpreter()
    return _run(lambda: serve(cfg))


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.app import load_config, serve

    cfg = load_config(args.config)
    return _run(lambda: serve(cfg))


def _gateway_call(url: str, body: dict[str, Any] | None = None) -> int:
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as e:
        print(f"refused ({e.code}): {e.read().decode()}", file=sys.stderr)
        return 1


def _change_body(args: argparse.Namespace) -> dict[str, Any] | str:
    """The ``order_change`` body the options ask for, or why they do not make one."""
    asked = [a for a in ("set_qty", "add_line", "cancel_line", "cancel_order") if getattr(args, a)]
    if len(asked) != 1:
        return "--change needs exactly one of --set-qty, --add-line, --cancel-line, --cancel-order"
    body: dict[str, Any] = {"action": asked[0], "reason": args.note}
    if args.cancel_line:
        body["line_no"] = args.cancel_line
    elif args.set_qty or args.add_line:
        spec = args.set_qty or args.add_line
        code, _, qty = spec.partition("=")
        if not qty.isdigit() or not code:
            return f"{spec!r}: expected {'LINE' if args.set_qty else 'CODE'}=QTY"
        body["qty"] = int(qty)
        if args.set_qty:
            if not code.isdigit():
                return f"--set-qty {spec!r}: LINE is the order's line number"
            body["line_no"] = int(code)
        else:
            body["gtin" if code.isdigit() else "sku"] = code
    return body


def cmd_order(args: argparse.Namespace) -> int:
    base = args.gateway_url.rstrip("/")
    if args.status:
        return _gateway_call(f"{base}/api/orders/{urllib.parse.quote(args.status, safe='')}/status")
    if args.change:
        change = _change_body(args)
        if isinstance(change, str):
            print(change, file=sys.stderr)
            return 2
        url = f"{base}/api/orders/{urllib.parse.quote(args.change, safe='')}/changes"
        return _post_retrying(url, change, args, what="change")
    missing = [f"--{n}" for n in ("customer", "date", "line") if not getattr(args, n)]
    if missing:
        print(f"a new order needs {', '.join(missing)}", file=sys.stderr)
        return 2
    lines = []
    for spec in args.line:
        code, _, qty = spec.partition("=")
        if not qty.isdigit():
            print(f"--line {spec!r}: expected CODE=QTY", file=sys.stderr)
            return 2
        lines.append({"gtin" if code.isdigit() else "sku": code, "qty": int(qty)})
    body = {
        "customer": args.customer,
        "channel": "manual",
        "order_type": args.order_type,
        "requested_date": args.date,
        "lines": lines,
        "note": args.note,
    }
    if args.source_ref:
        body["source_ref"] = args.source_ref
    return _post_retrying(f"{base}/api/orders", body, args, what="order")


def _post_retrying(
    url: str, body: dict[str, Any], args: argparse.Namespace, *, what: str, keyed: bool = True
) -> int:
    """POST ``body`` with an ``Idempotency-Key`` (``args.idempotency_key`` or a new UUID, printed
    first) and retry connection failures and 5xx answers with the same key, backing off, for
    ``args.retry_for`` seconds: a repeat gets the gateway's first answer, never a second record.
    ``keyed=False`` for a request the gateway recognises by itself (a supplier's step: the order
    and the state it moves to name it), sent again as it is."""
    from gateway.idempotency import RETRY_WINDOW_S

    if not 0 <= args.retry_for <= RETRY_WINDOW_S:
        print(
            f"--retry-for: 0..{RETRY_WINDOW_S} s (the gateway keeps a key longer than that)", file=sys.stderr
        )
        return 2
    headers = {"Content-Type": "application/json"}
    key = ""
    if keyed:
        key = args.idempotency_key or str(uuid.uuid4())
        headers["Idempotency-Key"] = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'  # RFC 8941
        # printed first, so that a request whose answer is lost can be resumed with the same key
        print(
            f'Idempotency-Key: "{key}" (to send this {what} again: --idempotency-key {key})', file=sys.stderr
        )
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    deadline = time.monotonic() + args.retry_for
    delay = ORDER_RETRY_FIRST_S
    while True:
        try:
            with urllib.request.urlopen(req, timeout=ORDER_TIMEOUT_S) as resp:
                if resp.headers.get("Idempotent-Replayed") == "true":
                    print("already taken: the gateway answered with its first answer", file=sys.stderr)
                print(resp.read().decode())
                return 0
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            if e.code < 500:
                print(f"refused ({e.code}): {text}", file=sys.stderr)
                return 1
            problem = f"{e.code}: {text}"
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out: the same key again
            problem = str(getattr(e, "reason", e))
        if time.monotonic() + delay > deadline:
            print(
                f"gave up after {args.retry_for:g} s ({problem}){'; key ' + key if key else ''}",
                file=sys.stderr,
            )
            return 1
        again = "with the same key" if key else "(the same step)"
        print(f"no answer ({problem}); retrying in {delay:.1f} s {again}", file=sys.stderr)
        time.sleep(delay)
        delay = min(delay * 2, ORDER_RETRY_MAX_S)


def cmd_supplier(args: argparse.Namespace) -> int:
    base = f"{args.gateway_url.rstrip('/')}/api/supplier/orders"
    if args.action == "list":
        return _gateway_call(base + (f"?state={urllib.parse.quote(args.state)}" if args.state else ""))
    if not args.order_no:
        print(f"supplier {args.action}: ORDER_NO is needed", file=sys.stderr)
        return 2
    url = f"{base}/{urllib.parse.quote(args.order_no, safe='')}"
    if args.action == "show":
        return _gateway_call(url)
    step = {"ref": args.ref, "detail": args.detail}
    return _post_retrying(f"{url}/{args.action}", step, args, what=f"supplier {args.action}", keyed=False)


def cmd_availability(args: argparse.Namespace) -> int:
    """Central's availability monitor over its REST API (``central/VISIBILITY.md``)."""
    import os

    token = args.token or os.environ.get("STOREGATE_TOKEN", "")
    if not token:
        print("a central API token is needed: --token or STOREGATE_TOKEN", file=sys.stderr)
        return 2
    base = f"{args.url.rstrip('/')}/api/availability"
    body: dict[str, Any] | None = None
    if args.action in ("list", "alerts"):
        q = {"location": args.location, "sku": args.sku}
        if args.action == "list" and args.at_risk:
            q["at_risk"] = "1"
        if args.action == "alerts" and args.all:
            q["all"] = "1"
        query = urllib.parse.urlencode({k: v for k, v in q.items() if v})
        url = (base if args.action == "list" else f"{base}/alerts") + (f"?{query}" if query else "")
    elif args.action == "evaluate":
        url, body = f"{base}/evaluate", {}
    else:
        if args.proposal is None:
            print(f"availability {args.action}: the proposal id is needed", file=sys.stderr)
            return 2
        url = f"{base}/proposals/{args.proposal}/{args.action}"
        body = {"qty": args.qty} if args.action == "accept" and args.qty is not None else {}
        if args.action == "dismiss":
            body = {"reason": args.reason}
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=ORDER_TIMEOUT_S) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        print(f"refused ({e.code}): {e.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"central did not answer: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    if args.json or args.action not in ("list", "alerts"):
        print(json.dumps(doc, indent=2))
    elif args.action == "list":
        print(f"{'location':<10} {'sku':<14} {'avail':>7} {'in':>6} {'vel/d':>7} {'cover d':>8}  risk")
        for r in doc["rows"]:
            cover = "-" if r["cover_days"] is None else f"{r['cover_days']:.1f}"
            print(
                f"{r['location']:<10} {r['sku']:<14} {r['available']:>7} {r['incoming']:>6}"
                f" {r['velocity']:>7.2f} {cover:>8}  {'AT RISK' if r['at_risk'] else ''}"
            )
    else:
        print(f"{'id':>5} {'location':<10} {'sku':<14} {'status':<10} {'proposal':<16} {'qty':>6}  source")
        for p in doc["proposals"]:
            print(
                f"{p['proposal_id']:>5} {p['location']:<10} {p['sku']:<14} {p['status']:<10}"
                f" {p['kind']:<16} {p['qty']:>6}  {p['source']}"
            )
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    module, _ = SIMULATORS[args.kind]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        print(f"simulator {args.kind!r} is not available: {e}", file=sys.stderr)
        return 2
    rc: int = mod.main(args.sim_args)
    return rc


def cmd_demo(args: argparse.Namespace) -> int:
    from ops.demo import main as demo_main

    return demo_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from ops.bench import main as bench_main

    return bench_main(args)


def cmd_provision(args: argparse.Namespace) -> int:
    from ops.provision import main as provision_main

    rc: int = provision_main(args.provision_args)
    return rc


def cmd_broker_init(args: argparse.Namespace) -> int:
    from ops.broker_security import run

    return run(args)


def cmd_bridge_init(args: argparse.Namespace) -> int:
    from ops.bridge import main as bridge_main

    return bridge_main(args.bridge_args)


def cmd_users(args: argparse.Namespace) -> int:
    from central.web.auth import main as users_main

    rc: int = users_main(args.users_args)
    return rc


def cmd_masters(args: argparse.Namespace) -> int:
    from central.orders.masters import main as masters_main

    rc: int = masters_main(args.masters_args)
    return rc


def cmd_promise(args: argparse.Namespace) -> int:
    from central.promising.cli import promise_run

    return promise_run(args)


def cmd_slots(args: argparse.Namespace) -> int:
    from central.promising.cli import slots_run

    return slots_run(args)


def cmd_process(args: argparse.Namespace) -> int:
    from central.process.cli import process_main

    return process_main(args.process_args)


def cmd_partner(args: argparse.Namespace) -> int:
    from central.process.cli import partner_main

    return partner_main(args.partner_args)


def _when(raw: str) -> int:
    """Epoch ms from digits, or from an ISO time (UTC unless it names its zone)."""
    if raw.isdigit():
        return int(raw)
    try:
        t = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is neither epoch ms nor an ISO time") from None
    return int((t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp() * 1000)


def cmd_pick_schedule(args: argparse.Namespace) -> int:
    from central.allocate.waves import pick_schedule

    return pick_schedule(
        db=args.db,
        teams=args.teams,
        start_ms=args.start,
        load_s=args.load_s,
        wave_ids=args.wave,
        as_json=args.json,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="storegate", description="Storegate: store gateways, central order hub, devices."
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("central", help="run the central hub (MQTT consumer, order repository, REST)")
    c.add_argument("--config", type=Path, required=True, help="central TOML config file")
    c.add_argument(
        "--worker",
        type=int,
        default=None,
        metavar="I",
        help="run as worker I (0, 1, ...) of several on this config and database: MQTT client id"
        " <client_id>-I, HTTP on [http] port + I (central/workers.py)",
    )
    c.set_defaults(fn=cmd_central)

    g = sub.add_parser("gateway", help="run a store or DC gateway (devices, outbox, MQTT sync)")
    g.add_argument("--config", type=Path, required=True, help="gateway TOML config file")
    g.set_defaults(fn=cmd_gateway)

    o = sub.add_parser(
        "order", help="enter, change or look up an order at a running gateway (its local HTTP endpoint)"
    )
    o.add_argument("--gateway-url", default="http://127.0.0.1:8081", help="gateway HTTP base URL")
    o.add_argument("--customer", help="customer (store) code (a new order)")
    o.add_argument("--date", help="requested delivery date YYYY-MM-DD (a new order)")
    o.add_argument("--line", action="append", help="GTIN=QTY or SKU=QTY; repeat per line (a new order)")
    o.add_argument("--order-type", default="normal", help="normal, cash-sale, drop-ship, ...")
    o.add_argument("--note", default="", help="free text (with --change: the reason)")
    o.add_argument("--source-ref", default="", help="your own reference for the order (deduplicated)")
    o.add_argument(
        "--idempotency-key",
        default=None,
        help="this Idempotency-Key (default: a new UUID, printed): resumes an order or --change whose"
        " answer got lost",
    )
    o.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        help="retry connection failures and 5xx answers with the same key for this many seconds"
        " (an order or --change)",
    )
    o.add_argument("--change", metavar="ORDER_ID", help="change the order entered here as record ORDER_ID")
    o.add_argument("--set-qty", metavar="LINE=QTY", help="with --change: new quantity of line LINE")
    o.add_argument("--add-line", metavar="CODE=QTY", help="with --change: add a line (GTIN or SKU)")
    o.add_argument("--cancel-line", type=int, metavar="LINE", help="with --change: cancel line LINE")
    o.add_argument("--cancel-order", action="store_true", help="with --change: cancel the order")
    o.add_argument("--status", metavar="ORDER_ID", help="show the order's status as the gateway knows it")
    o.set_defaults(fn=cmd_order)

    sp = sub.add_parser(
        "supplier",
        help="a supplier's drop-ship orders at its gateway: list, show, confirm, ship, deliver, refuse",
    )
    sp.add_argument("action", choices=("list", "show", "confirm", "ship", "deliver", "refuse"))
    sp.add_argument(
        "order_no", nargs="?", help="the order number (SO...) for show/confirm/ship/deliver/refuse"
    )
    sp.add_argument(
        "--gateway-url", default="http://127.0.0.1:8081", help="the supplier gateway's HTTP base URL"
    )
    sp.add_argument(
        "--state", help="list: only orders in this state (received, confirmed, shipped, delivered, refused)"
    )
    sp.add_argument("--ref", default="", help="the supplier's reference (delivery note, ...)")
    sp.add_argument("--detail", default="", help="free text (why refused, carrier, ...)")
    sp.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        help="confirm/ship/deliver/refuse: retry connection failures and 5xx answers for this many"
        " seconds (the gateway takes a step once: a repeat gets its first answer)",
    )
    sp.set_defaults(fn=cmd_supplier)

    s = sub.add_parser("sim", help="run a device simulator against a running gateway")
    s.add_argument(
        "kind", choices=sorted(SIMULATORS), help="; ".join(f"{k}: {v[1]}" for k, v in SIMULATORS.items())
    )
    s.add_argument("sim_args", nargs=argparse.REMAINDER, help="arguments for the simulator (see its --help)")
    s.set_defaults(fn=cmd_sim)

    d = sub.add_parser("demo", help="start broker, central, three stores, a DC, devices and the dashboard")
    d.add_argument("--dir", type=Path, default=Path("var/demo"), help="working directory for the demo's data")
    d.add_argument("--http-port", type=int, default=8080, help="central dashboard/REST port")
    d.add_argument("--duration", type=float, default=0, help="stop after N seconds (0 = until Ctrl-C)")
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser("bench", help="measure the system against its own baseline; prints a table")
    b.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    b.add_argument("--only", action="append", default=[], help="run only this figure (repeatable)")
    b.add_argument("--json", type=Path, default=None, help="also write results as JSON here")
    b.set_defaults(fn=cmd_bench)

    us = sub.add_parser(
        "users",
        help="central REST API users, roles (viewer, order_desk, inventory_controller, supervisor)"
        " and scopes (locations, a supplier, all)",
    )
    us.add_argument(
        "users_args",
        nargs=argparse.REMAINDER,
        help="e.g. add NAME --role supervisor --db central.db; scope NAME --locations STORE1; list",
    )
    us.set_defaults(fn=cmd_users)

    av = sub.add_parser(
        "availability",
        help="central's availability monitor: velocity and cover, stock-out proposals, accept/dismiss",
    )
    av.add_argument("action", choices=("list", "alerts", "accept", "dismiss", "evaluate"))
    av.add_argument("proposal", nargs="?", type=int, help="accept/dismiss: the proposal id")
    av.add_argument("--url", default="http://127.0.0.1:8080", help="central's HTTP base URL")
    av.add_argument("--token", default="", help="central API token, as --token=T (default: $STOREGATE_TOKEN)")
    av.add_argument("--location", default="", help="list/alerts: only this location")
    av.add_argument("--sku", default="", help="list/alerts: only this item")
    av.add_argument("--at-risk", action="store_true", help="list: only rows below their threshold")
    av.add_argument("--all", action="store_true", help="alerts: ended episodes too")
    av.add_argument("--qty", type=int, default=None, help="accept: another quantity than proposed")
    av.add_argument("--reason", default="", help="dismiss: why")
    av.add_argument("--json", action="store_true", help="print the JSON answer")
    av.set_defaults(fn=cmd_availability)

    ms = sub.add_parser(
        "masters",
        help="import central master data (customers, items, prices, locations, sourcing, totes) from CSV",
    )
    ms.add_argument(
        "masters_args", nargs=argparse.REMAINDER, help="e.g. import items items.csv --db central.db"
    )
    ms.set_defaults(fn=cmd_masters)

    from central.promising import cli as promising_cli

    pr = sub.add_parser(
        "promise",
        help="earliest delivery date per line from central's database (read only; central/PROMISE.md)",
        description=promising_cli.PROMISE_DESCRIPTION,
    )
    promising_cli.promise_arguments(pr)
    pr.set_defaults(fn=cmd_promise)

    sl = sub.add_parser(
        "slots",
        help="delivery slots of a route: capacity, booked, free (read only)",
        description=promising_cli.SLOTS_DESCRIPTION,
    )
    promising_cli.slots_arguments(sl)
    sl.set_defaults(fn=cmd_slots)

    pr = sub.add_parser(
        "process", help="central's process definitions (work units per order line): import a master, show"
    )
    pr.add_argument(
        "process_args", nargs=argparse.REMAINDER, help="e.g. import process.toml --db central.db | show"
    )
    pr.set_defaults(fn=cmd_process)

    pa = sub.add_parser("partner", help="central's partners (3PLs, drop-ship suppliers): add, list, remove")
    pa.add_argument(
        "partner_args",
        nargs=argparse.REMAINDER,
        help="e.g. add TPL1 --kind 3pl --name 'Fast 3PL' --db central.db",
    )
    pa.set_defaults(fn=cmd_partner)

    ps = sub.add_parser(
        "pick-schedule",
        help="put central's open pick waves on picking teams against their departures",
        description="Put the open pick waves (or those named) on picking teams, earliest departure"
        " first, by their standard pick time; shows start, finish and slack (negative: late).",
    )
    ps.add_argument(
        "--db",
        default="var/central/central.db",
        help="central database file or postgresql:// URL (read only)",
    )
    ps.add_argument("--teams", type=int, default=1, help="picking teams working in parallel")
    ps.add_argument("--start", type=_when, default=None, help="picking starts: epoch ms or ISO time (UTC)")
    ps.add_argument("--load-s", type=float, default=0.0, help="staging/loading seconds after each wave")
    ps.add_argument("--wave", type=int, action="append", help="only this wave (repeatable)")
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.set_defaults(fn=cmd_pick_schedule)

    from ops.broker_security import DESCRIPTION as BROKER_INIT_DESCRIPTION
    from ops.broker_security import add_arguments as broker_init_arguments

    bi = sub.add_parser(
        "broker-init",
        help="write the broker's ACL, central/ops credentials and mosquitto.conf",
        description=BROKER_INIT_DESCRIPTION,
    )
    broker_init_arguments(bi)  # its own options, not a REMAINDER: one starting with -- must parse
    bi.set_defaults(fn=cmd_broker_init)

    br = sub.add_parser(
        "bridge-init",
        help="a regional broker's bridge user on the central broker, its ACL and bridge file",
    )
    br.add_argument("bridge_args", nargs=argparse.REMAINDER, help="see storegate bridge-init -- --help")
    br.set_defaults(fn=cmd_bridge_init)

    pv = sub.add_parser(
        "provision-gateway", help="create broker credentials, ACL entry and config for a gateway"
    )
    pv.add_argument(
        "provision_args", nargs=argparse.REMAINDER, help="see storegate provision-gateway -- --help"
    )
    pv.set_defaults(fn=cmd_provision)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        rc: int = args.fn(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
