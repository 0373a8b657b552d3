"""The order lifecycle: a transition table, an append-only event history, and hooks.

::

    received -> validated | held        held -> validated | cancelled
    validated -> allocated -> released -> picked -> shipped -> delivered -> returned
    allocated -> validated | held              (a change gave the allocation back)
    cash sale: validated -> delivered          (no picking: handed over at once)
    drop-ship: validated -> released -> shipped (the supplier ships)
    cancelled from received, held, validated, allocated; returned from shipped, delivered

:func:`transition` is the only way an order's status changes. It checks the table (raising
:class:`IllegalTransition`), writes the status and one ``order_events`` row, keeps the
customer's open-order value and receivables in step (``returned`` settles what the
order's RMAs have not credited yet), queues an ``order_status`` downlink record to the order's
originating gateway (and, when the customer's exposure moved in a way the customer's gateway
cannot count itself, a ``customer_standing`` record to it), and runs the hub's hooks - all in
the caller's transaction (``central.wiring`` puts them there). ``on_status`` hooks run after
every change (each line's process steps, ``central/PROCESS.md``); ``on_validated`` hooks run when
an order that is filled from stock becomes ``validated`` (allocation); ``on_cancelled`` hooks
run after an order is cancelled (give back stock, vouchers, consignment); ``on_give_back``
hooks run before a change to an allocated order (give its allocation back).
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from central import CentralError, downlink
from central.hub import hub_of, state
from central.orders import masters, valuation
from runtime.clock import now_ms

STATUS_RECORD = "order_status"


class Status(enum.StrEnum):
    RECEIVED = "received"
    VALIDATED = "validated"
    HELD = "held"
    ALLOCATED = "allocated"
    RELEASED = "released"
    PICKED = "picked"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    RETURNED = "returned"


S = Status
ANY_TYPE: frozenset[str] | None = None
STOCK_TYPES = frozenset({"normal", "contract", "consignment", "voucher"})

# (from, to) -> the order types that may take it (None: every type)
TRANSITIONS: dict[tuple[Status, Status], frozenset[str] | None] = {
    (S.RECEIVED, S.VALIDATED): ANY_TYPE,
    (S.RECEIVED, S.HELD): ANY_TYPE,
    (S.RECEIVED, S.CANCELLED): ANY_TYPE,
    (S.HELD, S.VALIDATED): ANY_TYPE,
    (S.HELD, S.CANCELLED): ANY_TYPE,
    (S.VALIDATED, S.HELD): ANY_TYPE,  # a change made it fail a check
    (S.VALIDATED, S.ALLOCATED): STOCK_TYPES,
    (S.VALIDATED, S.RELEASED): frozenset({"drop-ship"}),
    (S.VALIDATED, S.DELIVERED): frozenset({"cash-sale"}),
    (S.VALIDATED, S.CANCELLED): ANY_TYPE,
    (S.ALLOCATED, S.VALIDATED): STOCK_TYPES,  # allocation given back for a change: allocate again
    (S.ALLOCATED, S.HELD): STOCK_TYPES,  # a change made it fail a check (allocation given back)
    (S.ALLOCATED, S.RELEASED): STOCK_TYPES,
    (S.ALLOCATED, S.CANCELLED): STOCK_TYPES,
    (S.RELEASED, S.PICKED): STOCK_TYPES,
    (S.RELEASED, S.SHIPPED): frozenset({"drop-ship"}),
    (S.RELEASED, S.CANCELLED): frozenset({"drop-ship"}),  # the supplier refused
    (S.PICKED, S.SHIPPED): STOCK_TYPES,
    (S.SHIPPED, S.DELIVERED): ANY_TYPE,
    (S.SHIPPED, S.RETURNED): ANY_TYPE,
    (S.DELIVERED, S.RETURNED): ANY_TYPE,
}
# Orders whose value counts against the customer's credit until delivered.
OPEN = frozenset({S.VALIDATED, S.ALLOCATED, S.RELEASED, S.PICKED, S.SHIPPED})
# Lines may be changed (and the order re-validated) until the order is released to picking;
# an allocated order gives its allocation back first and is allocated again after the change.
EDITABLE = frozenset({S.RECEIVED, S.HELD, S.VALIDATED, S.ALLOCATED})
FINAL = frozenset({S.CANCELLED, S.RETURNED})

Hook = Callable[[sqlite3.Connection, int], None]  # the hub's on_validated, on_cancelled, on_give_back
StatusHook = Callable[[sqlite3.Connection, int, str, str, int], None]  # (conn, order id, status, actor, at)


class LifecycleError(CentralError):
    pass


class UnknownOrder(LifecycleError):
    def __init__(self, order_id: int) -> None:
        super().__init__(f"no order with id {order_id}")
        self.order_id = order_id


class IllegalTransition(LifecycleError):
    """``new`` is not reachable from ``current`` for this order (type)."""

    def __init__(self, order_no: str, order_type: str, current: str, new: str) -> None:
        super().__init__(f"order {order_no} ({order_type}) cannot go from {current} to {new}")
        self.order_no = order_no
        self.order_type = order_type
        self.current = current
        self.new = new


def allowed(current: Status | str, new: Status | str, order_type: str) -> bool:
    try:
        key = (Status(current), Status(new))
    except ValueError:
        return False
    if key not in TRANSITIONS:
        return False
    types = TRANSITIONS[key]
    return types is None or order_type in types


def record_event(
    conn: sqlite3.Connection,
    order_id: int,
    event: str,
    *,
    detail: str,
    actor: str = "system",
    status: str | None = None,
    now: int | None = None,
) -> int:
    """Append one event to the order's history (never updated or deleted); returns its id."""
    cur = conn.execute(
        "INSERT INTO order_events (order_id, at, event, status, detail, actor) VALUES (?, ?, ?, ?, ?, ?)",
        (order_id, now if now is not None else now_ms(), event, status, detail, actor),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


class OrderRow(NamedTuple):
    """What a transition needs to know about an order."""

    status: str
    order_type: str
    customer: str
    value: int
    gateway: str
    record_id: str
    order_no: str


def transition(
    conn: sqlite3.Connection,
    order_id: int,
    new_status: Status | str,
    *,
    actor: str,
    detail: str,
    now: int | None = None,
) -> None:
    """Move an order to ``new_status`` (inside the caller's write transaction)."""
    row = conn.execute(
        "SELECT status, order_type, customer, value, gateway, record_id, order_no FROM orders"
        " WHERE order_id = ?",
        (order_id,),
    ).fetchone()
    if row is None:
        raise UnknownOrder(order_id)
    transition_from(conn, order_id, OrderRow(*row), new_status, actor=actor, detail=detail, now=now)


def transition_from(
    conn: sqlite3.Connection,
    order_id: int,
    row: OrderRow,
    new_status: Status | str,
    *,
    actor: str,
    detail: str,
    now: int | None = None,
) -> None:
    """:func:`transition` for a caller that has just read or written the order's row."""
    new = Status(new_status)
    current, otype, customer, value, gateway, record_id, order_no = row
    if not allowed(current, new, otype):
        raise IllegalTransition(order_no, otype, current, new)
    t = now if now is not None else now_ms()
    conn.execute(
        "UPDATE orders SET status = ?, updated_at = ?, hold_reason = ? WHERE order_id = ?",
        (new.value, t, detail if new is S.HELD else "", order_id),
    )
    version = record_event(conn, order_id, new.value, detail=detail, actor=actor, status=new.value, now=t)
    was_open, is_open = Status(current) in OPEN, new in OPEN
    if was_open != is_open or new in (S.DELIVERED, S.RETURNED):
        delta_open = value if is_open and not was_open else -value if was_open and not is_open else 0
        delta_recv = value if new is S.DELIVERED else 0
        if new is S.RETURNED:
            # nothing is owed for the order any more: take back what delivery put on the
            # receivables, less what its RMAs have credited already
            delta_recv = (-value if current == S.DELIVERED else 0) + valuation.credited(conn, order_id)
        conn.execute(
            "UPDATE customers SET open_value = open_value + ?, receivables = receivables + ? WHERE code = ?",
            (delta_open, delta_recv, customer),
        )
        if delta_open + delta_recv < 0:
            notify_standing(conn, customer)  # the edge cannot see its exposure fall
        elif delta_open + delta_recv > 0:
            notify_standing(conn, customer, counted_by=gateway)
    notify_status(
        conn,
        gateway=gateway,
        body={
            "record_id": record_id,
            "order_no": order_no,
            "status": new.value,
            "detail": detail,
            "version": version,
            "at": t,
        },
    )
    for status_hook in hub_of(conn).on_status:  # the lines' process steps (central.process)
        status_hook(conn, order_id, new.value, actor, t)
    if new is S.VALIDATED and otype in STOCK_TYPES:
        for hook in hub_of(conn).on_validated:
            hook(conn, order_id)
    elif new is S.CANCELLED:
        for hook in hub_of(conn).on_cancelled:
            hook(conn, order_id)


# -- status downlink, coalesced per order within one unit of work ----------------------


def notify_standing(conn: sqlite3.Connection, customer: str, *, counted_by: str = "") -> None:
    """Tell the customer's gateway (if mapped) its new credit standing, once per unit of work.

    ``counted_by``: the gateway the order came from; it counts its own orders' value at the
    edge (``gateway/edge_checks.py``), so a rise caused by its order is not sent to it."""
    pending = state(conn).pending_standing  # {customer: the gateway that counts it, or ""}
    if pending is not None:
        pending[customer] = counted_by if pending.get(customer, counted_by) == counted_by else ""
        return
    masters.publish_standing(conn, [customer], skip_gateways=[counted_by] if counted_by else ())


def notify_status(conn: sqlite3.Connection, *, gateway: str, body: dict[str, Any]) -> None:
    """Tell the originating gateway (if any) about an order's new status or event."""
    if not gateway:
        return  # entered at central with no gateway mapped for the customer
    pending = state(conn).pending_status  # {(gateway, record_id): latest body} in coalesce_status
    if pending is not None:
        pending[(gateway, body["record_id"])] = body
        return
    downlink.enqueue(conn, gateway=gateway, type=STATUS_RECORD, body=body)


def coalescing(conn: sqlite3.Connection) -> bool:
    """True inside :func:`coalesce_status` on this connection."""
    return state(conn).pending_status is not None


@contextlib.contextmanager
def coalesce_status(conn: sqlite3.Connection) -> Iterator[None]:
    """Within this block, send each order's status down once (its latest), on success."""
    st = state(conn)
    if st.pending_status is not None:
        yield
        return
    pending: dict[tuple[str, str], dict[str, Any]] = {}
    standing: dict[str, str] = {}
    st.pending_status, st.pending_standing = pending, standing
    try:
        yield
    finally:
        st.pending_status = st.pending_standing = None
    for (gw, _rid), body in pending.items():
        downlink.enqueue(conn, gateway=gw, type=STATUS_RECORD, body=body)
    for customer, counted_by in sorted(standing.items()):
        masters.publish_standing(conn, [customer], skip_gateways=[counted_by] if counted_by else ())
