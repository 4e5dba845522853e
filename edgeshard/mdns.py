"""Which network interfaces zeroconf uses: the ``--mdns-interface`` option of both daemons."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from zeroconf import InterfaceChoice


def interface_choice(specs: Sequence[str] | None) -> InterfaceChoice | list[str]:
    """Map ``--mdns-interface`` values onto zeroconf's ``interfaces`` argument.

    ``None``/empty or ``all`` -> ``InterfaceChoice.All``: every interface,
    which also works in a network namespace without a default route, where
    ``InterfaceChoice.Default`` fails to open its socket. ``default`` ->
    ``InterfaceChoice.Default`` for operators who ask for it. Anything else is
    an IP address or an interface name (``eth0``), resolved to its addresses.
    Raises ``ValueError`` for an unknown name or an interface without one.
    """
    if not specs:
        return InterfaceChoice.All
    lowered = [s.strip().lower() for s in specs]
    if lowered == ["all"]:
        return InterfaceChoice.All
    if lowered == ["default"]:
        return InterfaceChoice.Default
    if {"all", "default"} & set(lowered):
        raise ValueError("mdns-interface: 'all' and 'default' cannot be combined with others")
    chosen: list[str] = []
    for spec in specs:
        spec = spec.strip()
        try:
            found = [str(ipaddress.ip_address(spec))]
        except ValueError:
            found = _interface_addresses(spec)
        chosen.extend(a for a in found if a not in chosen)
    return chosen


def _interface_addresses(name: str) -> list[str]:
    # ifaddr is a dependency of zeroconf itself (it enumerates interfaces with it).
    import ifaddr

    for adapter in ifaddr.get_adapters():
        if adapter.nice_name == name or adapter.name == name:
            found = [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]  # IPv4 only
            if not found:
                raise ValueError(f"mdns-interface: {name!r} has no IPv4 address")
            return found
    raise ValueError(f"mdns-interface: {name!r} is neither an IP address nor an interface")
