"""Fulfil: from allocated to delivered. Release to the DC (``release``), pick tasks and their
results (``picking``), pick time (``picktime``), delivery notes and shortage reports
(``documents``) and returns (``returns``)."""
