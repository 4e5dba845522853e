"""TLS and mutual TLS credentials for every gRPC link, built in one place.

Settings (both daemons and the CLI): ``tls_cert`` + ``tls_key`` (this process's
certificate chain and key, PEM) and ``tls_ca`` (the CA bundle that signs the peers).

* A **server** with ``tls_cert``/``tls_key`` serves TLS; with ``tls_ca`` too it requires
  a client certificate signed by that CA (mTLS). Its files are watched: each new
  connection checks their modification times, and a changed, valid pair is served from
  then on (``dynamic_ssl_server_credentials``), without a restart. A half-written or
  mismatched pair is logged and the previous one kept.
* A **client** with any of the three speaks TLS: it verifies the server against
  ``tls_ca`` (the system roots without it) and presents ``tls_cert``/``tls_key`` when
  given. Client files are read when the channel opens.

Every error names the setting (as its flag) and the file: missing or unreadable, not PEM,
or a key that does not belong to the certificate.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from edgeshard.errors import EdgeshardError
from edgeshard.settings import SettingsError

if TYPE_CHECKING:  # cryptography is imported where a file is checked: a process without
    # TLS never loads it (~10 MB of resident memory on an edge node)
    from cryptography import x509

log = logging.getLogger(__name__)


class TLSError(EdgeshardError, SettingsError):
    """A TLS setting or file is unusable; the message names the flag and the file."""


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a process's TLS material; any may be None."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @classmethod
    def of(cls, cert, key, ca) -> TLSFiles:
        """From setting values (``str``/``Path``/None; empty strings count as unset)."""
        return cls(*(Path(v) if v else None for v in (cert, key, ca)))

    @property
    def enabled(self) -> bool:
        """Whether anything was given (a client then speaks TLS)."""
        return any((self.cert, self.key, self.ca))

    def check(self) -> None:
        """Raise ``TLSError`` when only one of ``cert`` and ``key`` is given."""
        if bool(self.cert) != bool(self.key):
            given, missing = (("--tls-cert", "--tls-key") if self.cert
                              else ("--tls-key", "--tls-cert"))
            raise TLSError(f"{missing}: required with {given} (a certificate and its key "
                           "go together)")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``; a wildcard
    (``0.0.0.0``, ``::``, empty) or any other name is not."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_settings(host: str, files: TLSFiles, insecure: bool) -> None:
    """Raise ``TLSError`` for a server setting that cannot work or is unsafe: a lone cert
    or key, a CA without a certificate, or plaintext on a non-loopback ``host`` without
    ``insecure``."""
    files.check()
    if files.ca and not files.cert:
        raise TLSError("--tls-ca: a server that verifies clients needs its own "
                       "--tls-cert and --tls-key")
    if not files.cert and not insecure and not is_loopback(host):
        raise TLSError(f"host: refusing to serve plaintext on non-loopback address {host!r}: "
                       "give --tls-cert and --tls-key (and --tls-ca to require client "
                       "certificates), or --insecure to serve without TLS anyway")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSError(f"{flag}: cannot read {path} ({exc.strerror or exc})") from None


def _certificates(data: bytes, path: Path, flag: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSError(f"{flag}: {path} is not a PEM certificate")
    return certs


def read_ca(path: Path) -> bytes:
    """The CA bundle at ``path`` (PEM); ``TLSError`` names ``--tls-ca`` and the file."""
    data = _read(path, "--tls-ca")
    _certificates(data, path, "--tls-ca")
    return data


def read_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """``(key_pem, cert_chain_pem)`` from the files, checked: both PEM and the key the
    certificate's. ``TLSError`` names the flag and the file at fault."""
    chain = _read(cert, "--tls-cert")
    leaf = _certificates(chain, cert, "--tls-cert")[0]
    key_pem = _read(key, "--tls-key")
    from cryptography.hazmat.primitives import serialization

    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TLSError(f"--tls-key: {key} is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (private.public_key().public_bytes(serialization.Encoding.PEM, public)
            != leaf.public_key().public_bytes(serialization.Encoding.PEM, public)):
        raise TLSError(f"--tls-key: {key} is not the key of the certificate in {cert} "
                       "(--tls-cert)")
    return key_pem, chain


def certificate_common_name(path: Path) -> str | None:
    """The subject common name of the first certificate in ``path`` (None when it has
    none); ``TLSError`` names ``--tls-cert`` when the file is unreadable or not PEM."""
    from cryptography import x509

    leaf = _certificates(_read(path, "--tls-cert"), path, "--tls-cert")[0]
    names = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def channel_credentials(files: TLSFiles) -> grpc.ChannelCredentials | None:
    """Client credentials for ``files``, or None (plaintext) when none is given."""
    if not files.enabled:
        return None
    files.check()
    key = chain = None
    if files.cert:
        key, chain = read_pair(files.cert, files.key)
    root = read_ca(files.ca) if files.ca else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                        certificate_chain=chain)


def _file_stamps(files: TLSFiles) -> tuple:
    """What tells a replaced file: modification time, size and inode of each path."""
    out = []
    for path in (files.cert, files.key, files.ca):
        try:
            st = os.stat(path) if path else None
            out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
        except OSError:
            out.append(None)
    return tuple(out)


class _Watcher:
    """Re-reads the server's files when their modification times change (gRPC asks on
    every new handshake); a pair that does not load keeps the previous one."""

    def __init__(self, files: TLSFiles):
        self.files = files
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self.config = self._load()
        self.reloads = 0

    def _stamps(self) -> tuple:
        return _file_stamps(self.files)

    def _load(self):
        key, chain = read_pair(self.files.cert, self.files.key)
        root = read_ca(self.files.ca) if self.files.ca else None
        return grpc.ssl_server_certificate_configuration([(key, chain)],
                                                          root_certificates=root)

    def fetch(self):
        """gRPC's certificate configuration fetcher: a new configuration, or None to keep
        the current one."""
        try:
            with self._lock:
                stamp = self._stamps()
                if stamp == self._stamp:
                    return None
                self._stamp = stamp
                try:
                    self.config = self._load()
                except TLSError as exc:
                    log.warning("TLS files changed but cannot be used (%s); still serving "
                                "the previous certificate", exc)
                    return None
                self.reloads += 1
                log.info("TLS certificate reloaded from %s", self.files.cert)
                return self.config
        except Exception:  # noqa: BLE001 - an error here must not break the handshake
            log.exception("checking the TLS files failed; keeping the current certificate")
            return None


def _serves_tls(files: TLSFiles) -> bool:
    """Check ``files`` for a server; False for plaintext (no certificate). Raises
    ``TLSError`` for a CA to verify clients with but no certificate of its own."""
    files.check()
    if not files.cert:
        if files.ca:
            raise TLSError("--tls-ca: a server that verifies clients needs its own "
                           "--tls-cert and --tls-key")
        return False
    return True


def server_credentials(files: TLSFiles) -> grpc.ServerCredentials | None:
    """Server credentials for ``files`` that pick up replaced files without a restart, or
    None (plaintext) without a certificate. With ``files.ca`` clients must present a
    certificate it signed. Raises ``TLSError`` naming the flag and file at fault."""
    if not _serves_tls(files):
        return None
    watcher = _Watcher(files)
    return grpc.dynamic_ssl_server_credentials(
        watcher.config, watcher.fetch, require_client_authentication=files.ca is not None)


def server_ssl_context(files: TLSFiles) -> ssl.SSLContext | None:
    """An ``ssl`` server context for ``files`` (the HTTP/REST listener's), or None
    (plaintext) without a certificate; with ``files.ca`` clients must present a
    certificate it signed, as ``server_credentials`` requires of gRPC clients. Replaced
    files are picked up on the next handshake after their modification times change.
    Raises ``TLSError`` naming the flag and file at fault."""
    if not _serves_tls(files):
        return None
    read_pair(files.cert, files.key)  # names the flag and file of a bad one
    if files.ca:
        read_ca(files.ca)
    watcher = _ContextWatcher(files)
    return watcher.context


class _ContextWatcher:
    """Keeps an ``ssl.SSLContext`` built from ``files``; its SNI callback (called on each
    handshake) swaps in a fresh context when the files changed and still load."""

    def __init__(self, files: TLSFiles):
        self.files = files
        self._lock = threading.Lock()
        self._stamp = _file_stamps(files)
        self.context = self._build()
        self._current = self.context

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.files.cert, self.files.key)
        if self.files.ca:
            context.load_verify_locations(cafile=str(self.files.ca))
            context.verify_mode = ssl.CERT_REQUIRED
        context.sni_callback = self._handshake
        return context

    def _handshake(self, sock: ssl.SSLObject, _name, _context) -> None:
        try:
            with self._lock:
                stamp = _file_stamps(self.files)
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._current = self._build()
                        log.info("TLS certificate reloaded from %s (HTTP)", self.files.cert)
                    except (OSError, ssl.SSLError) as exc:
                        log.warning("TLS files changed but cannot be used (%s); still "
                                    "serving the previous certificate (HTTP)", exc)
                if self._current is not self.context:
                    sock.context = self._current
        except Exception:  # noqa: BLE001 - an error here must not break the handshake
            log.exception("checking the TLS files failed; keeping the current certificate")


def handshake_failed(details: str) -> bool:
    """Whether an UNAVAILABLE's ``details`` report a failed TLS handshake (a certificate
    not verified, TLS against a plaintext server), which waiting does not fix."""
    lower = details.lower()
    return "handshake" in lower or "ssl_error" in lower


def handshake_hint(details: str, client_tls: bool) -> str | None:
    """One line for an UNAVAILABLE whose ``details`` show a TLS mismatch, else None.

    A failed verification names the handshake; a server that requires a client
    certificate (TLS 1.3), or TLS from a plaintext client, just closes the socket, so a
    closed socket right after connecting is read as the same mismatch.
    """
    lower = details.lower()
    if handshake_failed(details):
        return (f"TLS handshake failed: {details} (check --tls-ca/--tls-cert/--tls-key: "
                "the server's certificate must be signed by --tls-ca, and the server must "
                "speak TLS)")
    if "socket closed" in lower:
        if client_tls:
            return (f"TLS handshake failed: the server closed the connection ({details}); "
                    "check --tls-ca/--tls-cert/--tls-key: a server that requires client "
                    "certificates needs --tls-cert and --tls-key signed by its CA")
        return (f"the server closed a plaintext connection ({details}): it may require "
                "TLS; check --tls-ca/--tls-cert/--tls-key")
    return None


def describe(files: TLSFiles) -> str:
    """How a server with ``files`` talks, for its start-up log line."""
    if not files.cert:
        return "plaintext"
    return "mutual TLS" if files.ca else "TLS"
