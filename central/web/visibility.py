"""Role-scoped inventory visibility: which locations and items one user may see and change.

A user's scope (``central.web.auth.Scope``, table ``user_scopes``) becomes a :class:`View`:

- **all** (no scope rows: head office, planners): every location and item; stock writes as
  the role allows.
- **locations** (a store user): reads its own locations and the locations that serve them -
  the sourcing rules of each own location's zone (the location master's ``region``; the
  ``*`` rules when the zone has none of its own), other stores left out; writes (on hand,
  receipts) only its own locations.
- **supplier** (a supplier user): reads the stock of the items whose item master names it as
  supplier, at every location; never writes stock.

Orders (``GET /api/orders``, ``/api/orders/{no}``): a store user sees its own customers'
(customers mapped to its locations' gateways), a supplier user the orders with a line of its
items; everyone else all. What hangs off orders follows them: waves and pick lists (a wave
with one of the user's orders, its pick lines of the user's orders at locations and of items
it sees), delivery notes, returns, shortage reports, consignment stock. Quarantined records
and the fleet (raw records and gateways) only the gateway's own store; allocation run traces
(every order and location of a run) only all-scope users.

A refusal is a :class:`Refused` with the reason (HTTP 403); the REST layer
(``central.web.allocation_api``, ``central.web.availability_api``) asks here before every
stock read or write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from central import CentralError
from central.allocate.inventory import load_network
from central.web.auth import ALL, Scope, ScopeKind, get_scope


class Refused(CentralError):
    """Outside the user's scope (HTTP 403); ``reason`` says what the user may see."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class View:
    user: str
    scope: Scope
    own: frozenset[str] = frozenset()  # a store user's own locations
    serving: frozenset[str] = frozenset()  # the locations that serve them
    skus: frozenset[str] | None = None  # a supplier user's items; None: every item
    customers: frozenset[str] | None = None  # a store user's customers (same gateway); None: all
    gateways: frozenset[str] | None = None  # a store user's own locations' gateways; None: all

    @property
    def everything(self) -> bool:
        return self.scope.kind is ScopeKind.ALL

    @property
    def readable(self) -> frozenset[str] | None:
        """The locations this user may read; None: every location."""
        return self.own | self.serving if self.scope.kind is ScopeKind.LOCATIONS else None

    def sees_location(self, loc: str) -> bool:
        r = self.readable
        return r is None or loc in r

    def sees_sku(self, sku: str) -> bool:
        return self.skus is None or sku in self.skus

    def sees(self, loc: str, sku: str) -> bool:
        return self.sees_location(loc) and self.sees_sku(sku)

    def describe_scope(self) -> str:
        """Whom the user is bound to, the start of every refusal's reason."""
        if self.scope.kind is ScopeKind.SUPPLIER:
            return f"user {self.user!r} is bound to supplier {self.scope.values[0]!r}"
        return (
            f"user {self.user!r} is bound to {', '.join(sorted(self.own))}"
            f" (served by {', '.join(sorted(self.serving)) or 'no location'})"
        )

    def sees_customer(self, customer: str) -> bool:
        return self.customers is None or customer in self.customers

    def check_read(self, loc: str | None = None, sku: str | None = None) -> None:
        if loc is not None and not self.sees_location(loc):
            raise Refused(f"{self.describe_scope()}; the stock of {loc!r} is not visible to it")
        if sku is not None and not self.sees_sku(sku):
            raise Refused(f"{self.describe_scope()}; item {sku!r} is not one it supplies")

    @property
    def supplier(self) -> str | None:
        return self.scope.values[0] if self.scope.kind is ScopeKind.SUPPLIER else None

    def check_order(self, customer: str, skus: Iterable[str], order_no: str) -> None:
        """A store user reads its own customers' orders; a supplier user those with its items."""
        if not self.sees_customer(customer):
            raise Refused(
                f"{self.describe_scope()}; order {order_no} is customer {customer!r}'s, not one of its own"
            )
        if self.skus is not None and not any(s in self.skus for s in skus):
            raise Refused(f"{self.describe_scope()}; order {order_no} has none of its items")

    def check_customer(self, customer: str, what: str) -> None:
        """A customer's own figures (credit, consignment stock): a store user its own customers
        only; a supplier user none but what :meth:`sees_sku` lets through (the caller's filter)."""
        if not self.sees_customer(customer):
            raise Refused(
                f"{self.describe_scope()}; customer {customer!r} is not one of its own:"
                f" {what} is not visible to it"
            )

    def check_gateway(self, gateway: str | None, what: str) -> None:
        """Raw records and devices of ``gateway`` (None: of any): all-scope users, and a store
        user its own locations' gateways; never a supplier user."""
        if self.scope.kind is ScopeKind.SUPPLIER:
            raise Refused(
                f"{self.describe_scope()}; {what} are visible only to all-scope users and the gateway's store"
            )
        if gateway is not None and self.gateways is not None and gateway not in self.gateways:
            raise Refused(f"{self.describe_scope()}; gateway {gateway!r} is not one of its own")

    def check_everything(self, what: str) -> None:
        """What spans every customer and location at once (an allocation run's trace)."""
        if not self.everything:
            raise Refused(f"{self.describe_scope()}; {what} is visible only to all-scope users")

    def check_write(self, loc: str, *, action: str) -> None:
        """Stock writes at ``loc`` (on hand, receipts): everyone-scoped users anywhere, store
        users at their own locations, supplier users nowhere."""
        if self.scope.kind is ScopeKind.SUPPLIER:
            raise Refused(f"{self.describe_scope()}; a supplier user cannot {action}")
        if self.scope.kind is ScopeKind.LOCATIONS and loc not in self.own:
            raise Refused(
                f"{self.describe_scope()}; it may {action} only at its own location(s), not {loc!r}"
            )


def serving_locations(conn: sqlite3.Connection, own: Iterable[str]) -> frozenset[str]:
    """The locations the sourcing rules name for the zones (regions) of ``own``, other
    stores left out (a transfer source that is a store is another store's stock)."""
    own = sorted(set(own))
    if not own:
        return frozenset()
    marks = ",".join("?" * len(own))
    zones = {r for (r,) in conn.execute(f"SELECT region FROM locations WHERE code IN ({marks})", own)}
    net = load_network(conn)
    found: set[str] = set()
    for zone in zones:
        normal, transfer = net.candidates(zone)
        found |= {loc for loc, _ in (*normal, *transfer)}
    found -= set(own)
    if found:
        cand = sorted(found)
        marks = ",".join("?" * len(cand))
        stores = {
            c
            for (c,) in conn.execute(
                f"SELECT code FROM locations WHERE kind = 'store' AND code IN ({marks})", cand
            )
        }
        found -= stores
    return frozenset(found)


def store_customers(conn: sqlite3.Connection, own: Iterable[str]) -> frozenset[str]:
    """The customers mapped to the gateways of ``own`` locations (a store and its customer
    account share the store's gateway)."""
    own = sorted(set(own))
    marks = ",".join("?" * len(own))
    return frozenset(
        c
        for (c,) in conn.execute(
            "SELECT c.code FROM customers c JOIN locations l ON l.gateway = c.gateway"
            f" WHERE l.code IN ({marks}) AND c.gateway <> '' ORDER BY c.code",
            own,
        )
    )


def store_gateways(conn: sqlite3.Connection, own: Iterable[str]) -> frozenset[str]:
    """The gateways of ``own`` locations (its raw records, its devices)."""
    own = sorted(set(own))
    marks = ",".join("?" * len(own))
    return frozenset(
        g
        for (g,) in conn.execute(
            f"SELECT gateway FROM locations WHERE code IN ({marks}) AND gateway <> ''", own
        )
    )


def supplier_skus(conn: sqlite3.Connection, supplier: str) -> frozenset[str]:
    return frozenset(s for (s,) in conn.execute("SELECT sku FROM items WHERE supplier = ?", (supplier,)))


def view_of(conn: sqlite3.Connection, name: str) -> View:
    """The user's :class:`View`, read now (a scope or sourcing change applies at once)."""
    scope = get_scope(conn, name)
    if scope.kind is ScopeKind.LOCATIONS:
        own = frozenset(scope.values)
        return View(
            name,
            scope,
            own=own,
            serving=serving_locations(conn, own),
            customers=store_customers(conn, own),
            gateways=store_gateways(conn, own),
        )
    if scope.kind is ScopeKind.SUPPLIER:
        return View(name, scope, skus=supplier_skus(conn, scope.values[0]))
    return View(name, ALL)


def check_order_id(conn: sqlite3.Connection, view: View, order_id: int) -> None:
    """:meth:`View.check_order` for order ``order_id`` (what hangs off an order: its delivery
    note, returns, services); an unknown order passes (the caller answers 404 or nothing)."""
    if view.everything:
        return
    head = conn.execute("SELECT order_no, customer FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if head is not None:
        skus = [s for (s,) in conn.execute("SELECT sku FROM order_lines WHERE order_id = ?", (order_id,))]
        view.check_order(head[1], [s for s in skus if s], head[0])


def describe(conn: sqlite3.Connection, name: str) -> dict[str, object]:
    """``GET /api/me/scope``: the scope and what it resolves to now."""
    v = view_of(conn, name)
    out: dict[str, object] = {"user": name, "scope": v.scope.to_json()}
    if v.scope.kind is ScopeKind.LOCATIONS:
        out["own"] = sorted(v.own)
        out["serving"] = sorted(v.serving)
    if v.skus is not None:
        out["items"] = sorted(v.skus)
    return out
