"""Whole-store housekeeping above the store: `system df`, `system prune` and `system reset`."""
