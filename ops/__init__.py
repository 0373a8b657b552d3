"""Running Storegate: the ``storegate`` CLI, demo orchestration, broker config, benchmarks,
and the small infrastructure shared by the gateway and central processes (typed TOML
config, durable SQLite with group commit, MQTT client, one bounded reader of JSON request
bodies)."""
