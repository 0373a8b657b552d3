"""Running Storegate: the ``storegate`` CLI, demo orchestration, broker config and provisioning,
benchmarks. Nothing imports it but the entry point and tests; the infrastructure the parts
share lives in :mod:`runtime`."""
