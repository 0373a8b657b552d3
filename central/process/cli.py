"""``storegate process import FILE | show`` and ``storegate partner add | list | remove``, on
central's database (``--db``: its SQLite file or a ``postgresql://`` URL, like ``storegate
masters``); the same functions as the REST API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from central.process import definitions, partners
from runtime.clock import now_ms

T = TypeVar("T")
DB_HELP = "central database file or postgresql:// URL"


def _in_db(db: str, fn: Callable[[Any], T], *, write: bool) -> T:
    """``fn`` in one transaction on central's SQLite file or PostgreSQL database (a URL)."""
    from central.migrations import all_migrations  # noqa: PLC0415 - CLI only
    from runtime import dbapi  # noqa: PLC0415

    conn = dbapi.connect(db, migrations=all_migrations())
    try:
        if write:
            dbapi.begin(conn)
        else:
            conn.execute("BEGIN")
        try:
            out = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out
    finally:
        conn.close()


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def process_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="storegate process", description="Process definitions (central/PROCESS.md)."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="validate a TOML or JSON master and store it as a new version")
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", choices=("toml", "json"), help="default: by the file's suffix (.json: json)")
    imp.add_argument("--db", default="var/central/central.db", help=DB_HELP)
    imp.add_argument("--actor", default="cli", help="who imports (kept with the version)")
    sh = sub.add_parser("show", help="print a version of the master (default: the latest) as JSON")
    sh.add_argument("--version", type=int, default=None)
    sh.add_argument("--db", default="var/central/central.db", help=DB_HELP)
    args = p.parse_args(argv)
    if args.cmd == "import":
        fmt = args.format or ("json" if args.file.suffix == ".json" else "toml")
        text = args.file.read_text(encoding="utf-8")
        try:
            out = _in_db(
                args.db,
                lambda c: definitions.import_master(c, text, fmt=fmt, actor=args.actor, now=now_ms()),
                write=True,
            )
        except definitions.ProcessError as e:
            for err in e.errors:
                where = f"definition {err['definition']!r}" if err["definition"] is not None else "master"
                field = f" {err['field']}" if err["field"] else ""
                print(f"error: {args.file}: {where}{field}: {err['reason']}", file=sys.stderr)
            return 1
        _print(out)
        return 0
    shown = _in_db(args.db, lambda c: definitions.show(c, args.version), write=False)
    if shown is None:
        print(f"error: no process version {args.version}", file=sys.stderr)
        return 1
    _print(shown)
    return 0


def partner_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="storegate partner", description="Partners (central/PARTNERS.md).")
    sub = p.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="create a partner or give it a new key; prints the key (once)")
    add.add_argument("code")
    add.add_argument("--kind", required=True, choices=partners.KINDS)
    add.add_argument("--name", default="")
    ls = sub.add_parser("list", help="the partners as JSON")
    rm = sub.add_parser("remove", help="deactivate a partner (its key stops working)")
    rm.add_argument("code")
    for sp in (add, ls, rm):
        sp.add_argument("--db", default="var/central/central.db", help=DB_HELP)
    args = p.parse_args(argv)
    try:
        if args.cmd == "add":
            key = _in_db(
                args.db,
                lambda c: partners.add_partner(c, args.code, args.kind, name=args.name, now=now_ms()),
                write=True,
            )
            print(key)
        elif args.cmd == "list":
            _print({"partners": _in_db(args.db, partners.list_partners, write=False)})
        elif not _in_db(args.db, lambda c: partners.deactivate(c, args.code, now=now_ms()), write=True):
            print(f"error: no partner {args.code!r}", file=sys.stderr)
            return 1
    except partners.PartnerError as e:
        print(f"error: {e.reason}", file=sys.stderr)
        return 1
    return 0
