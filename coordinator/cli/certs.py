"""``edge-coordinator certs``: a development CA and the fleet's certificates, for mTLS.

Writes into ``--out``: ``ca.pem``/``ca.key`` (the CA), ``coordinator.pem``/``.key``,
``node-1`` .. ``node-N`` (common name and SAN = the node id; good for serving and for
registering) and ``client`` (for the admin CLI). SANs: the name, localhost, 127.0.0.1,
::1 and every ``--hosts`` entry. Keys are 0600. Existing files are never replaced
without ``--force``.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from pathlib import Path

from edgeshard.certs import write_fleet_pki

DNS_NAME = re.compile(r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``certs`` subcommand's options to ``p``."""
    p.add_argument("--out", required=True, type=Path, help="directory for the files")
    p.add_argument("--nodes", type=int, default=1,
                   help="node certificates to make: node-1 .. node-N (1)")
    p.add_argument("--hosts", nargs="+", default=[], metavar="HOST",
                   help="more DNS names or IP addresses for every certificate's SANs "
                   "(the machines' names and addresses)")
    p.add_argument("--force", action="store_true", help="replace files that exist")


def usage(out: Path, nodes: int) -> list[str]:
    """How to use what ``write_fleet_pki`` wrote into ``out``, as printable lines."""
    tls = f"--tls-ca {out}/ca.pem --tls-cert {out}/{{name}}.pem --tls-key {out}/{{name}}.key"
    return [
        "use them (mutual TLS: each side presents its certificate and checks the other's):",
        f"  edge-coordinator serve --host 0.0.0.0 {tls.format(name='coordinator')}",
        *([f"  edge-node --host 0.0.0.0 --node-id node-1 --coordinator COORD:8000 "
           f"{tls.format(name='node-1')}" + ("  (node-2.. alike)" if nodes > 1 else "")]
          if nodes else []),
        f"  edge-coordinator nodes --coordinator COORD:8000 {tls.format(name='client')}",
        f"  (or EDGESHARD_TLS_CA, EDGESHARD_TLS_CERT, EDGESHARD_TLS_KEY; keep {out}/ca.key "
        "offline: it signs new certificates)",
    ]


def _host_ok(host: str) -> bool:
    """A SAN entry: an IP address, or a DNS name (labels of letters, digits and '-')."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(DNS_NAME.fullmatch(host))


def main(args) -> int:
    """Run ``edge-coordinator certs``; 0 on success, 2 for bad arguments or files that
    exist (without ``--force``), 1 when the files cannot be written."""
    if args.nodes < 0:
        print("edge-coordinator certs: --nodes must be >= 0", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"edge-coordinator certs: --out: {args.out} is a file; give a directory",
              file=sys.stderr)
        return 2
    bad = [h for h in args.hosts if not _host_ok(h)]
    if bad:
        print(f"edge-coordinator certs: --hosts: {bad[0]!r} is neither a DNS name nor an IP "
              "address", file=sys.stderr)
        return 2
    nodes = [f"node-{i + 1}" for i in range(args.nodes)]
    try:
        written = write_fleet_pki(args.out, nodes, args.hosts, force=args.force)
    except FileExistsError as exc:
        print(f"edge-coordinator certs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edge-coordinator certs: cannot write into {args.out}: {exc}", file=sys.stderr)
        return 1
    hosts = ", ".join(["localhost", "127.0.0.1", "::1", *args.hosts])
    print(f"wrote a development CA and {len(written) // 2 - 1} certificates into {args.out} "
          f"(SANs: the name, {hosts}; keys 0600):")
    for path in written:
        print(f"  {path}")
    for line in usage(args.out, args.nodes):
        print(line)
    return 0
