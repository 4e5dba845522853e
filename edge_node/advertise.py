"""Announce this edge node on the local network with mDNS/DNS-SD (zeroconf).

Discovery is optional: the node serves whether or not its advert goes out.
Every failure to open the multicast sockets or register the service is logged
as a warning and leaves the node running without an advert; nothing here
raises into the daemon after construction.

The advert is ``protos.discovery``'s format: instance
``<node-id-label>._edgeshard._tcp.local.``, host ``<node-id-label>.local.``,
the gRPC port in SRV, the node's addresses in A/AAAA, identity and models in
TXT. Interfaces default to ``InterfaceChoice.All`` rather than ``Default``:
``Default`` opens its socket on the default route's interface and fails in a
network namespace (or container) without a default route, which is exactly
how isolated edge networks and our tests are set up.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Sequence

from zeroconf import ServiceInfo, Zeroconf

from edgeshard.mdns import interface_choice
from protos.discovery import (
    SERVICE_TYPE,
    NodeAdvert,
    encode_txt,
    host_name,
    instance_name,
)

log = logging.getLogger(__name__)


class Advertiser:
    """Registers one ``NodeAdvert`` with mDNS, keeps it current, withdraws it on close.

    ``interfaces``: ``None`` (all interfaces), ``["all"]``, ``["default"]``, or
    IP addresses / interface names to answer on. ``host_address`` is the
    address published in the A/AAAA record unless the advert carries its own
    ``addresses``; the default, loopback, only reaches peers on this host, so a
    real deployment passes the address the node's gRPC server is reachable on.

    Thread-safe; ``start``, ``update`` and ``close`` serialize on one lock.
    """

    def __init__(
        self,
        advert: NodeAdvert,
        interfaces: Sequence[str] | None = None,
        host_address: str = "127.0.0.1",
    ) -> None:
        self._advert = advert
        self._interfaces = list(interfaces) if interfaces else None
        self._host_address = str(ipaddress.ip_address(host_address))  # ValueError early
        self._lock = threading.Lock()
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None
        self._closed = False

    @property
    def advert(self) -> NodeAdvert:
        """The advert as last given (published or not)."""
        return self._advert

    @property
    def registered(self) -> bool:
        """True while the advert is published."""
        return self._info is not None

    @property
    def name(self) -> str:
        """The DNS-SD instance name the advert is published under."""
        return instance_name(self._advert.node_id)

    def start(self) -> bool:
        """Open mDNS and register the advert; True when it is published.

        Blocks for zeroconf's probing and first announcement, about 1-2 s
        (RFC 6762 probing: three probes 250 ms apart, then announcements).
        On failure logs a warning and returns False; calling again retries.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("Advertiser is closed")
            if self._info is not None:
                return True
            zc = None
            try:
                info = self._service_info(self._advert)
                zc = Zeroconf(interfaces=interface_choice(self._interfaces))
                zc.register_service(info)
            except Exception as exc:  # discovery is optional, never fatal
                log.warning("mDNS advert of node %r not published (%s: %s); serving without it",
                            self._advert.node_id, type(exc).__name__, exc)
                if zc is not None:
                    _close_quietly(zc)
                return False
            self._zc, self._info = zc, info
            log.info("advertising node %r over mDNS as %s (%s port %d)", self._advert.node_id,
                     info.name, ",".join(info.parsed_addresses()), info.port)
            return True

    def update(self, advert: NodeAdvert) -> None:
        """Publish a changed advert (models loaded or unloaded, new capacity).

        The node id names the service and cannot change. A no-op when nothing
        on the wire changes; when not published, the advert is kept for the
        next ``start``. Blocks about as long as ``start``'s announcement.
        """
        if advert.node_id != self._advert.node_id:
            raise ValueError(f"node_id cannot change ({self._advert.node_id!r} -> "
                             f"{advert.node_id!r}); close and start a new Advertiser")
        with self._lock:
            self._advert = advert
            if self._zc is None or self._info is None:
                return
            info = self._service_info(advert)
            if (info.properties == self._info.properties and info.port == self._info.port
                    and info.parsed_addresses() == self._info.parsed_addresses()):
                return
            try:
                self._zc.update_service(info)
            except Exception as exc:  # a stale advert must not stop the node
                log.warning("mDNS advert of node %r not updated (%s: %s)",
                            advert.node_id, type(exc).__name__, exc)
                return
            self._info = info

    def close(self) -> None:
        """Withdraw the advert (goodbye packets, TTL 0) and close mDNS; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            zc, info = self._zc, self._info
            self._zc = self._info = None
        if zc is None:
            return
        if info is not None:
            try:
                zc.unregister_service(info)
            except Exception as exc:  # peers fall back to TTL expiry
                log.warning("mDNS goodbye for %s not sent (%s: %s)", info.name,
                            type(exc).__name__, exc)
        _close_quietly(zc)

    def __enter__(self) -> Advertiser:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _service_info(self, advert: NodeAdvert) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            instance_name(advert.node_id),
            port=advert.port,
            properties=encode_txt(advert),
            server=host_name(advert.node_id),
            parsed_addresses=list(advert.addresses or (self._host_address,)),
        )


def _close_quietly(zc: Zeroconf) -> None:
    try:
        zc.close()
    except Exception:  # shutting down anyway
        log.debug("closing zeroconf failed", exc_info=True)
