"""The central hub: MQTT consumer, order repository, masters, validation, allocation,
documents, fleet registry, REST API and dashboard."""


class CentralError(Exception):
    """Base class of central errors."""
