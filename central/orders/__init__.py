"""Orders: an order as the hub keeps it. Creation and changes (``orders``), its order type's
handling (``ordertypes``), validation against the masters (``validation``, ``masters``), its
status and events (``lifecycle``), what its lines are worth (``valuation``) and the read side
(``repo``)."""
