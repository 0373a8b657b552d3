"""Promising and scheduling: delivery dates per order line from stock, receipts, lead and
transit days and value-added service capacity, kept as reservations until a deadline
(:mod:`central.promising.promise`); delivery slots per route and the field services of order
lines booked into them (:mod:`central.promising.services`). See ``central/PROMISE.md``."""

from central import CentralError


class ScheduleError(CentralError):
    """A promise or a booking that cannot be made; ``status`` is its HTTP answer (400 bad
    input, 404 unknown, 409 the state or the capacity forbids it)."""

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
