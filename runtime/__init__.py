"""The shared infrastructure the gateway and central processes stand on: durable SQLite with
group commit and savepoints (:mod:`runtime.sqlitedb`; the group commit itself is
:mod:`runtime.groupwriter`, shared with PostgreSQL's :mod:`runtime.pgdb`), typed TOML config
(:mod:`runtime.config`), Prometheus metrics (:mod:`runtime.metrics`), the MQTT client
(:mod:`runtime.mqtt`), supervision and retry (:mod:`runtime.retry`), the one clock
(:mod:`runtime.clock`) and the HTTP edge every process shares (the bounded JSON body reader
:mod:`runtime.jsonbody`, the full-disk answer :mod:`runtime.http_errors`). It stands on
:mod:`protocols` (pure, sans-IO) and imports no part (gateway, central, firmware_sim, ops)."""
