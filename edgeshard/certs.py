"""A development PKI for a fleet: one CA, and certificates it signs (``cryptography``).

``write_fleet_pki`` writes what ``edge-coordinator certs`` and ``demo --tls`` need: the
CA (``ca.pem``, ``ca.key``), the coordinator's certificate, one per node (common name and
SAN = the node id) and one for the CLI. Every certificate is good for both TLS server and
client use: the coordinator serves and dials nodes, nodes serve and register. SANs hold
``localhost``, ``127.0.0.1``, ``::1`` and the hosts given. Keys are EC P-256, written
0600. Meant for development and tests; a production fleet brings its own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365
CA_NAME = "edgeshard development CA"


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # once each, in order
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _builder(subject: str, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little apart
            .not_valid_after(now + datetime.timedelta(days=days)))


class DevCA:
    """A certificate authority that signs leaf certificates (``issue``)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, name: str = CA_NAME, days: int = VALID_DAYS) -> DevCA:
        """A new self-signed CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (_builder(name, subject, key.public_key(), days)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .sign(key, hashes.SHA256()))
        return cls(cert, key)

    @property
    def issued(self) -> Issued:
        """The CA's own certificate and key."""
        return Issued(self.cert.public_bytes(serialization.Encoding.PEM), _key_pem(self.key))

    def issue(self, common_name: str, hosts: Sequence[str] = (),
              days: int = VALID_DAYS) -> Issued:
        """A certificate for ``common_name`` with SANs ``common_name`` (when it is a host
        name), the loopback names and ``hosts``; usable as TLS server and client."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (_builder(common_name, self.cert.subject, key.public_key(), days)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_san([common_name, *LOOPBACK_NAMES, *hosts]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def fleet_files(nodes: Sequence[str]) -> list[str]:
    """The file names ``write_fleet_pki`` writes for ``nodes`` (node ids), in order."""
    names = ["ca.pem", "ca.key", "coordinator.pem", "coordinator.key"]
    for name in (*nodes, "client"):
        names += [f"{name}.pem", f"{name}.key"]
    return names


def write_fleet_pki(out: Path, nodes: Sequence[str], hosts: Sequence[str] = (),
                    force: bool = False) -> list[Path]:
    """Write a new CA and the coordinator's, each node's and the CLI client's certificate
    and key into ``out`` (created if needed); returns the paths written.

    Raises ``FileExistsError`` naming the files already there, before writing anything,
    unless ``force``. Keys are created 0600, certificates 0644.
    """
    out.mkdir(parents=True, exist_ok=True)
    names = fleet_files(nodes)
    if not force:
        taken = [n for n in names if (out / n).exists()]
        if taken:
            raise FileExistsError(f"{out} already holds {', '.join(taken)}; "
                                  "--force replaces them")
    ca = DevCA.create()
    pairs = {"ca": ca.issued, "coordinator": ca.issue("coordinator", hosts)}
    for name in nodes:
        pairs[name] = ca.issue(name, hosts)
    pairs["client"] = ca.issue("client", hosts)
    written = []
    for name, issued in pairs.items():
        written.append(write_file(out / f"{name}.pem", issued.cert_pem, 0o644))
        written.append(write_file(out / f"{name}.key", issued.key_pem, 0o600))
    return written


def write_file(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to ``path`` with permissions ``mode`` from the start (a key is never
    readable by others, not even for a moment), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)  # the umask may have taken bits away
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
