"""Watching the models in production: segments, drift, edge/cloud agreement."""
