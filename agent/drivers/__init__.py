"""Device drivers: one module per vendor, plus `sim` (simulated devices of every vendor)."""
