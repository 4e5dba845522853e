"""A small network lab for fault tests: hosts in network namespaces on one bridge, and
nftables rules that cut or thin their links.

Layout (one lab per test; addresses in 198.18.0.0/15, the range RFC 2544 sets aside for
network tests, so they never collide with a real network)::

    root namespace (the test, the coordinator) -- veth -- bridge namespace -- veth -- host "n1"
                   198.18.<lab>.1/24                      (br0)            -- veth -- host "n2"

The root end of the first veth gives the root namespace a connected route to the lab's
/24, so a coordinator started normally dials the hosts, and they dial it at
``lab.gateway``. Each host runs processes through ``ip netns exec``. Faults are
nftables rules in the host's own namespace on its one interface: ``partition`` drops
everything, ``loss(percent)`` drops that share of packets each way at random (``numgen
random``; this kernel has no netem). ``close`` deletes every namespace (their veths go
with them). Needs root with CAP_NET_ADMIN, ``ip`` and ``nft``; ``NetLab.unavailable``
says why not.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

TABLE = "edgeshard_fault"


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


class NetLab:
    """A bridge namespace and hosts on it; see the module docstring."""

    def __init__(self) -> None:
        used = _run("ip", "-4", "-o", "addr")
        free = [n for n in range(1, 255) if f"198.18.{n}." not in used]
        self.lab = random.choice(free)
        self.tag = f"{os.getpid() % 10000}{self.lab}"[-7:]  # names stay under 15 chars
        self.bridge_ns = f"esbr{self.tag}"
        self.gateway = f"198.18.{self.lab}.1"
        self.hosts: dict[str, tuple[str, str, str]] = {}  # name -> (ns, address, iface)
        self._made: list[str] = []
        self._root_if = f"esr{self.tag}"
        try:
            _run("ip", "netns", "add", self.bridge_ns)
            self._made.append(self.bridge_ns)
            self._ns(self.bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
            self._ns(self.bridge_ns, "ip", "link", "set", "br0", "up")
            _run("ip", "link", "add", self._root_if, "type", "veth", "peer", "name", "up0",
                 "netns", self.bridge_ns)
            self._ns(self.bridge_ns, "ip", "link", "set", "up0", "master", "br0", "up")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self._root_if)
            _run("ip", "link", "set", self._root_if, "up")
        except Exception:
            self.close()
            raise

    @staticmethod
    def unavailable() -> str | None:
        """Why a lab cannot be made here, or None when it can."""
        if os.geteuid() != 0:
            return "network namespaces need root (CAP_NET_ADMIN)"
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                return f"`{tool}` is missing: run bash scripts/setup_faults.sh"
        probe = f"esprobe{os.getpid() % 100000}"
        done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if done.returncode != 0:
            return f"cannot make a network namespace ({done.stderr.strip()})"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return None

    def _ns(self, ns: str, *argv: str) -> str:
        return _run("ip", "netns", "exec", ns, *argv)

    def add_host(self, name: str) -> str:
        """A namespace ``name`` on the bridge; returns its IPv4 address."""
        k = len(self.hosts) + 10
        ns, iface = f"es{name}{self.tag}"[:15], "eth0"
        address = f"198.18.{self.lab}.{k}"
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        peer = f"esb{k}{self.tag}"[:15]
        _run("ip", "link", "add", peer, "type", "veth", "peer", "name", iface, "netns", ns)
        _run("ip", "link", "set", peer, "netns", self.bridge_ns)
        self._ns(self.bridge_ns, "ip", "link", "set", peer, "master", "br0", "up")
        self._ns(ns, "ip", "addr", "add", f"{address}/24", "dev", iface)
        self._ns(ns, "ip", "link", "set", iface, "up")
        self._ns(ns, "ip", "link", "set", "lo", "up")
        self.hosts[name] = (ns, address, iface)
        return address

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace (``ip netns exec`` execs it: the
        process's pid is the command's)."""
        return ["ip", "netns", "exec", self.hosts[host][0], *argv]

    def python(self, host: str, *args: str) -> list[str]:
        """This interpreter with ``args``, inside ``host``."""
        return self.command(host, [sys.executable, *args])

    def _rules(self, host: str, verdict: str) -> None:
        ns, _, iface = self.hosts[host]
        self.heal(host)
        self._ns(ns, "nft", "add", "table", "inet", TABLE)
        for chain, hook, match in (("in", "input", "iifname"), ("out", "output", "oifname")):
            self._ns(ns, "nft", "add", "chain", "inet", TABLE, chain,
                     f"{{ type filter hook {hook} priority 0 ; policy accept ; }}")
            self._ns(ns, "nft", "add", "rule", "inet", TABLE, chain, match, iface,
                     *verdict.split())

    def partition(self, host: str) -> None:
        """Drop every packet in and out of ``host``'s link (its loopback still works)."""
        self._rules(host, "drop")

    def loss(self, host: str, percent: int) -> None:
        """Drop ``percent`` % of packets each way on ``host``'s link, at random."""
        self._rules(host, f"numgen random mod 100 < {int(percent)} drop")

    def heal(self, host: str) -> None:
        """Remove ``host``'s fault rules."""
        ns = self.hosts[host][0]
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", TABLE],
                       capture_output=True)

    def close(self) -> None:
        """Delete every namespace of the lab (and with them the veths, the root one too)."""
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self._root_if], capture_output=True)
        self._made.clear()

