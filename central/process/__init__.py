"""Process definitions (work units per order line) and partners (3PL, drop-ship suppliers)."""
