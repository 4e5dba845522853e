"""Sharded batch jobs: submission, the durable store, leases, dispatch and the spool.

Transport-free. ``model`` holds the records, ``store`` the SQLite job store (its
``schema``, ``results`` and ``spool`` helpers run inside its transactions), ``dispatcher``
the per-node shard pullers, ``service`` what the Jobs API does, ``replayer`` the spool's
replay to the cloud tier. May import ``coordinator.fleet`` and ``coordinator.cascade``.
"""
