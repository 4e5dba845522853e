"""The Prometheus side shared by the node and the coordinator: one registry per process
role, its ``/metrics`` HTTP endpoint, and no ``_created`` series."""

from __future__ import annotations

import logging

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from edgeshard.errors import BindError

log = logging.getLogger(__name__)

# No `<counter>_created` series: they double every counter's series for a timestamp that
# the process start time already gives.
disable_created_metrics()


class MetricsEndpoint:
    """A metrics registry of its own (with the standard ``process_*`` series: CPU seconds,
    resident memory, open files, start time) and the HTTP endpoint that serves it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._server = None

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0: a free port); returns the port.

        Raises ``BindError`` (an ``OSError`` naming ``metrics_port``) when it cannot bind.
        """
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise BindError("metrics_port", f"{host}:{port}", exc.strerror or str(exc)) from None
        bound = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        """Stop the HTTP endpoint, if serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
