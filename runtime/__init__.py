"""The shared infrastructure the gateway and central processes stand on: durable SQLite with
group commit and savepoints (:mod:`runtime.sqlitedb`), typed TOML config
(:mod:`runtime.config`), Prometheus metrics (:mod:`runtime.metrics`), the MQTT client
(:mod:`runtime.mqtt`), supervision and retry (:mod:`runtime.retry`) and the one clock
(:mod:`runtime.clock`). It imports no part (gateway, central, firmware_sim, ops)."""
