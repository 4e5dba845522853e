"""Edge first, cloud for the hard cases: escalation policies, the cascade decision,
the budgeted cloud tier with its circuit breaker, and calibration.

Transport-free and independent of jobs and fleet: the cloud is reached through an
injected transport function, results are NumPy arrays and dataclasses.
"""
