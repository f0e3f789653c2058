"""Everything that is not a WSSS algorithm: config, datasets, Ray wiring, tracking, reports."""
