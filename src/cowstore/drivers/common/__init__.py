"""Machinery several drivers share: per-id locks and mount counts, transit names and
start-up sweeps, option parsing and layer id checks."""
