"""What one central keeps besides its database: no module of ``central/`` keeps state of its own.

- :class:`Hub` - one per central (``central.wiring`` builds it, ``central.app`` opens the
  database with it): the record handlers by record type, the order lifecycle's hooks, the
  allocation settings (real time or waves) and the count of internal errors.
- :class:`ConnState` - one per database connection (the writer's, the reader's), given to
  the connection as its ``state`` when it opens (``runtime.sqlitedb.Connection``, or
  ``runtime.pgdb.PgConnection`` on PostgreSQL; given again after a rollback of a whole group
  there, so no cache keeps what was undone): the
  :class:`Hub` and the caches that must not outlive or cross the connection (the customers'
  column layout with the profiles read through it, the stock and sourcing network the
  real-time path keeps, the masters snapshot, the status updates held back inside
  ``lifecycle.coalesce_status``, the items and snapshots a master import publishes at its
  end, whether any change is parked).

So two centrals in one process (two databases) share nothing. :func:`state` returns a
connection's state; a connection nobody gave one (a test's or a tool's own ``connect``)
gets the standard wiring without lifecycle hooks (``central.wiring.hub``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from central.allocate.allocation import Network
    from central.allocate.demand import Layout
    from central.allocate.inventory import Stock
    from central.allocate.waves import AllocationSettings
    from central.intake.ingest import Handler, Schema
    from central.orders.lifecycle import Hook, StatusHook
    from central.orders.masters import Snapshot


@dataclass(eq=False)
class Hub:
    """One central's wiring; see the module docstring."""

    allocation: AllocationSettings
    handlers: dict[str, Handler] = field(default_factory=dict)
    schemas: dict[str, Schema] = field(default_factory=dict)
    on_validated: list[Hook] = field(default_factory=list)
    on_cancelled: list[Hook] = field(default_factory=list)
    on_give_back: list[Hook] = field(default_factory=list)  # before a change to an allocated order
    on_status: list[StatusHook] = field(default_factory=list)  # after every status change
    internal_errors: int = 0  # records quarantined because their handler failed unexpectedly

    def handler(self, record_type: str, fn: Handler, *, schema: Schema | None = None) -> None:
        """Handle records of ``record_type`` with ``fn``; ``schema`` (a parse function raising
        RecordSchemaError) is checked on receipt, so a malformed record is refused in its ack."""
        self.handlers[record_type] = fn
        if schema is not None:
            self.schemas[record_type] = schema

    def attach(self, conn: sqlite3.Connection) -> None:
        """Give ``conn`` (a ``runtime.sqlitedb`` or ``runtime.pgdb`` connection) this hub and fresh caches."""
        conn.state = ConnState(self)  # type: ignore[attr-defined]


@dataclass(eq=False)
class ConnState:
    """One connection's hub and caches; see the module docstring."""

    hub: Hub
    layout: tuple[int | str, Layout] | None = None  # (schema key, layout): demand.customer_layout
    kept: tuple[int, int, int, Stock] | None = None  # (data_version, changes, stamp, stock)
    network: tuple[list[Any], Network] | None = None  # (sourcing rows, network)
    masters: tuple[int, Snapshot] | None = None  # (data_version, snapshot)
    pending_status: dict[tuple[str, str], dict[str, Any]] | None = None  # inside coalesce_status
    pending_standing: dict[str, str] | None = None  # customer -> gateway counting it, ditto
    # (skus, gateways to snapshot, customers whose standing changed) inside a master import
    master_batch: tuple[set[str], set[str], set[str]] | None = None
    none_parked: int | None = None  # data_version at which no order change was parked


def state(conn: sqlite3.Connection) -> ConnState:
    """``conn``'s state; the standard wiring without hooks for a connection given none."""
    st: ConnState | None = getattr(conn, "state", None)
    if st is None:
        from central import wiring  # noqa: PLC0415 - wiring imports every stage, which import this

        st = ConnState(wiring.hub())
        try:
            conn.state = st  # type: ignore[attr-defined]
        except AttributeError:
            raise TypeError(
                "central needs a runtime.sqlitedb or runtime.pgdb connection (runtime.dbapi)"
            ) from None
    return st


def hub_of(conn: sqlite3.Connection) -> Hub:
    """The hub of the central whose connection ``conn`` is."""
    return state(conn).hub
