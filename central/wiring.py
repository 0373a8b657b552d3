"""Central's wiring, in one place: which handler takes each uplink record type, and what runs
when an order is validated or cancelled. ``central.app`` builds the hub of the running
central with :func:`hub`; nothing registers itself when imported.

The path of an order through the stages (see README, Architecture):

- intake: the consumer stores a gateway's records; the processor hands each to its handler
  (``order`` -> ``ingest.apply_order`` -> ``orders.create``; ``order_change``,
  ``supplier_confirmation``; the DC's ``pick_result`` and ``tote_event`` -> ``picking``);
- orders: validated (or held) -> the hub's ``on_validated`` hooks: ``waves.on_validated``
  allocates at once when the allocation settings say real time (else a wave takes it);
- cancelled -> ``on_cancelled``: the order type's effects undone
  (``ordertypes.on_cancelled``), then its stock given back (``waves.on_cancelled``);
- cancelled also frees the order's service slots and a promise it claimed
  (``central.promising``);
- every status change -> ``on_status``: each line's process step follows (``tracker.on_status``,
  ``central/PROCESS.md``);
- a change to an allocated order -> ``on_give_back``: its allocation given back first
  (``waves.give_back``); the change's checks allocate it again.
"""

from __future__ import annotations

from central.allocate import waves
from central.allocate.waves import AllocationSettings
from central.fulfil import picking
from central.hub import Hub
from central.intake import ingest
from central.orders import ordertypes
from central.process import tracker
from central.promising import promise, services
from protocols.order_changes import parse_order_change, parse_supplier_confirmation
from protocols.picking import PICK_RESULT, TOTE_EVENT
from protocols.records import parse_order


def hub(allocation: AllocationSettings | None = None) -> Hub:
    """A central's hub: every record handler and the order types' cancel hook; with
    ``allocation`` (the running central always has it), allocation on the lifecycle hooks
    under those settings. Without, orders stop at ``validated`` (a test's or a tool's
    connection that nobody wired, see ``central.hub.state``)."""
    h = Hub(allocation=allocation or AllocationSettings())
    h.handler("order", ingest.apply_order, schema=parse_order)
    h.handler("order_change", ingest.apply_order_change, schema=parse_order_change)
    h.handler("supplier_confirmation", ingest.apply_supplier_confirmation, schema=parse_supplier_confirmation)
    h.handler(PICK_RESULT, picking.apply_pick_result)
    h.handler(TOTE_EVENT, picking.apply_tote_event)
    h.on_cancelled.append(ordertypes.on_cancelled)
    h.on_cancelled.append(services.on_cancelled)  # the order's service bookings free their slots
    h.on_cancelled.append(promise.on_cancelled)  # a claimed promise gives its stock and minutes back
    h.on_status.append(tracker.on_status)  # each line's process steps follow the status
    if allocation is not None:
        h.on_validated.append(waves.on_validated)
        h.on_cancelled.append(waves.on_cancelled)
        h.on_give_back.append(waves.give_back)
    return h
