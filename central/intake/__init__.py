"""Intake: the first stage an order walks through. The MQTT consumer (``consumer``) receives
gateway uplinks, checks and stores them durably (``ingest``), and the processor
(``processor``) applies each stored record once through the record handlers."""
