"""Find edge nodes on the local network by browsing mDNS/DNS-SD (zeroconf).

A ``ServiceBrowser`` watches ``_edgeshard._tcp.local.``. Its events are only
queued; one worker thread resolves each instance (SRV/TXT/A, from zeroconf's
cache when the announcement already carried them, otherwise by querying with
a timeout), decodes the TXT record with ``protos.discovery.decode_txt`` and
calls ``on_found``. Resolving never happens on zeroconf's threads, which
must not block, and callback errors or malformed adverts are logged, never
raised into zeroconf.

mDNS is for discovery, not liveness. A node that shuts down cleanly sends a
goodbye and ``on_lost`` fires within a second; a node that crashes or loses
its network stays in every peer's cache until its records expire (minutes:
about 19 measured with zeroconf 0.154; the PTR TTL is 75 min). So ``on_lost``
is informational: the fleet decides a node is gone from failed heartbeats
and health checks, and a node found again after a restart is simply
``on_found`` once more.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

from edgeshard.mdns import interface_choice
from protos.discovery import SERVICE_TYPE, NodeAdvert, decode_txt

log = logging.getLogger(__name__)

_STOP = object()


class Discovery:
    """Reports edge nodes as they appear, change and say goodbye on mDNS.

    ``on_found(advert)`` is called once per new or changed advert (repeated
    identical announcements are dropped), with ``advert.addresses`` filled
    from the A/AAAA records and ``advert.port`` from SRV. ``on_lost(node_id)``
    is called when a previously found node's service is removed (goodbye or
    cache expiry). Both run on the worker thread ``edgeshard-discovery``, one
    at a time, in event order; keep them short (hand off anything slow).

    ``interfaces`` is read like ``Advertiser``'s: ``None`` for all interfaces,
    ``["default"]``, or IP addresses / interface names. ``resolve_timeout`` (s)
    bounds the query for an instance whose records were not in the cache.
    """

    def __init__(
        self,
        on_found: Callable[[NodeAdvert], None],
        on_lost: Callable[[str], None] | None = None,
        interfaces: Sequence[str] | None = None,
        resolve_timeout: float = 3.0,
    ) -> None:
        self._on_found = on_found
        self._on_lost = on_lost
        self._interfaces = list(interfaces) if interfaces else None
        self._resolve_timeout_ms = int(resolve_timeout * 1000)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._known: dict[str, NodeAdvert] = {}  # instance name -> last advert reported
        self._lock = threading.Lock()
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._worker: threading.Thread | None = None
        self._closed = False

    @property
    def nodes(self) -> dict[str, NodeAdvert]:
        """The adverts currently known, by node id (a snapshot)."""
        with self._lock:
            return {a.node_id: a for a in self._known.values()}

    def start(self) -> bool:
        """Open mDNS and start browsing; returns at once (results arrive by callback).

        Returns False, with a warning logged, when mDNS cannot be opened: the
        coordinator keeps serving its configured nodes without discovery.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("Discovery is closed")
            if self._zc is not None:
                return True
            try:
                zc = Zeroconf(interfaces=interface_choice(self._interfaces))
            except Exception as exc:  # discovery is optional, never fatal
                log.warning("mDNS discovery not started (%s: %s)", type(exc).__name__, exc)
                return False
            self._worker = threading.Thread(target=self._run, name="edgeshard-discovery",
                                            daemon=True)
            self._worker.start()
            self._zc = zc
            self._browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_event])
            log.info("browsing mDNS for %s", SERVICE_TYPE)
            return True

    def close(self) -> None:
        """Stop browsing and close mDNS; idempotent. Waits up to ~resolve_timeout for the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            zc, browser, worker = self._zc, self._browser, self._worker
        self._events.put(_STOP)
        if browser is not None:
            browser.cancel()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=self._resolve_timeout_ms / 1000 + 2)
        if zc is not None:
            try:
                zc.close()
            except Exception:  # shutting down anyway
                log.debug("closing zeroconf failed", exc_info=True)

    def __enter__(self) -> Discovery:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _on_event(self, zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        # Runs on zeroconf's browser thread: queue only, never block or raise.
        self._events.put((state_change, name))

    def _run(self) -> None:
        while True:
            event = self._events.get()
            if event is _STOP or self._closed:
                return
            state_change, name = event
            try:
                if state_change is ServiceStateChange.Removed:
                    self._lost(name)
                else:
                    self._resolve(name)
            except Exception:  # a bad advert or callback must not stop discovery
                log.exception("handling mDNS %s of %s failed", state_change.name, name)

    def _resolve(self, name: str) -> None:
        zc = self._zc
        if zc is None:
            return
        info = zc.get_service_info(SERVICE_TYPE, name, timeout=self._resolve_timeout_ms)
        if info is None:
            log.warning("mDNS service %s did not resolve within %d ms", name,
                        self._resolve_timeout_ms)
            return
        try:
            advert = decode_txt(info.properties, info.parsed_addresses(), info.port)
        except ValueError as exc:
            log.warning("ignoring malformed mDNS advert %s: %s", name, exc)
            return
        with self._lock:
            if self._closed or self._known.get(name) == advert:
                return
            self._known[name] = advert
        log.info("found node %r at %s port %d via mDNS", advert.node_id,
                 ",".join(advert.addresses), advert.port)
        self._on_found(advert)

    def _lost(self, name: str) -> None:
        with self._lock:
            advert = self._known.pop(name, None)
        if advert is None:
            return
        log.info("node %r withdrew its mDNS advert (informational; liveness is by heartbeat)",
                 advert.node_id)
        if self._on_lost is not None:
            self._on_lost(advert.node_id)
