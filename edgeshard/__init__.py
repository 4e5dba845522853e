"""Process infrastructure shared by the edge node and the coordinator (no domain logic).

Imports nothing else of edgeshard, so ``edge_node`` and ``coordinator`` may both use it
without depending on each other.
"""
