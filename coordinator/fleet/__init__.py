"""The fleet: which nodes exist and are healthy, and which node gets a unit of work.

Registry (membership state), Membership (probes, ageing), Discovery (zeroconf), the
pure placement and rebalancing math, the online Router, and the Forwarder that runs a
call on a node with admission, accounting and one retry elsewhere. Transport-free:
nothing here imports gRPC or generated code; imports ``coordinator.errors`` only.
"""
