"""Watchers of a run as it trains, passed to the trainer as its ``monitors``: sample grids and FID
every N steps (progress), and TensorBoard events."""
