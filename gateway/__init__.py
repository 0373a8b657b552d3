"""The store / distribution-centre edge process: device adapters, the durable SQLite
outbox and inbox, local stock and reorder, local pick execution, MQTT sync with central."""


class GatewayError(Exception):
    """Base class of gateway errors."""
