"""The TLS seam on real gRPC servers on loopback: credentials, mTLS, mismatches, file
errors, reload without restart, and the development PKI the certs command writes."""

from __future__ import annotations

import ipaddress
import stat
import time

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgeshard.certs import DevCA, write_file, write_fleet_pki
from edgeshard.tls import (
    TLSError,
    TLSFiles,
    channel_credentials,
    check_server_settings,
    handshake_hint,
    is_loopback,
    server_credentials,
)
from edgeshard.transport import add_port, create_server, open_channel


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("pki")
    write_fleet_pki(out, ["node-1"], hosts=["edge.example", "10.1.2.3"])
    return out


def files(pki, name, ca=True):
    return TLSFiles(pki / f"{name}.pem", pki / f"{name}.key", pki / "ca.pem" if ca else None)


@pytest.fixture
def serve():
    servers = []

    def _serve(tls: TLSFiles) -> int:
        server = create_server(4, "tls-test")
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = add_port(server, "127.0.0.1:0", server_credentials(tls))
        server.start()
        servers.append(server)
        return port

    yield _serve
    for server in servers:
        server.stop(0)


def check(port: int, tls: TLSFiles):
    """One health call on a new channel; the error, or None when it answered SERVING."""
    channel = open_channel(f"127.0.0.1:{port}", credentials=channel_credentials(tls))
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        return None
    except grpc.RpcError as exc:
        return exc
    finally:
        channel.close()


def test_mutual_tls_admits_a_client_certificate_the_ca_signed(serve, pki):
    port = serve(files(pki, "coordinator"))
    assert check(port, files(pki, "client")) is None
    assert check(port, files(pki, "node-1")) is None


def test_mutual_tls_refuses_a_client_without_a_certificate(serve, pki):
    port = serve(files(pki, "coordinator"))
    error = check(port, TLSFiles(ca=pki / "ca.pem"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    hint = handshake_hint(error.details(), client_tls=True)
    assert hint.startswith("TLS handshake failed") and "check --tls-ca/--tls-cert" in hint


def test_a_client_certificate_from_another_ca_is_refused(serve, pki, tmp_path):
    write_fleet_pki(tmp_path, [])
    port = serve(files(pki, "coordinator"))
    error = check(port, TLSFiles(tmp_path / "client.pem", tmp_path / "client.key",
                                 pki / "ca.pem"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_server_from_another_ca_fails_verification(serve, pki, tmp_path):
    write_fleet_pki(tmp_path, [])
    port = serve(files(pki, "coordinator", ca=False))
    error = check(port, TLSFiles(ca=tmp_path / "ca.pem"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert handshake_hint(error.details(), True).startswith("TLS handshake failed")


def test_plaintext_and_tls_do_not_mix_and_say_so(serve, pki):
    tls_port = serve(files(pki, "coordinator", ca=False))
    plain_port = serve(TLSFiles())
    assert check(tls_port, TLSFiles(ca=pki / "ca.pem")) is None  # server-only TLS
    plain_client = check(tls_port, TLSFiles())
    assert plain_client.code() == grpc.StatusCode.UNAVAILABLE
    assert "may require TLS" in handshake_hint(plain_client.details(), client_tls=False)
    tls_client = check(plain_port, files(pki, "client"))
    assert tls_client.code() == grpc.StatusCode.UNAVAILABLE
    assert "handshake" in tls_client.details().lower()
    assert handshake_hint(tls_client.details(), True).startswith("TLS handshake failed")


def test_file_errors_name_the_flag_and_the_file(pki, tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSError, match=rf"--tls-cert: cannot read {missing}"):
        server_credentials(TLSFiles(missing, pki / "coordinator.key"))
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("hello")
    with pytest.raises(TLSError, match=rf"--tls-ca: {not_pem} is not a PEM certificate"):
        channel_credentials(TLSFiles(ca=not_pem))
    with pytest.raises(TLSError, match=rf"--tls-key: {not_pem} is not an unencrypted PEM"):
        server_credentials(TLSFiles(pki / "coordinator.pem", not_pem))
    with pytest.raises(TLSError, match=r"--tls-key: .*client.key is not the key of the "
                                       r"certificate in .*coordinator.pem"):
        server_credentials(TLSFiles(pki / "coordinator.pem", pki / "client.key"))
    with pytest.raises(TLSError, match="--tls-key: required with --tls-cert"):
        channel_credentials(TLSFiles(cert=pki / "client.pem"))
    with pytest.raises(TLSError, match="--tls-ca: a server that verifies clients"):
        server_credentials(TLSFiles(ca=pki / "ca.pem"))


def test_loopback_serves_plaintext_anything_else_needs_tls_or_insecure(pki):
    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        check_server_settings(host, TLSFiles(), insecure=False)
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "edge.example"):
        assert not is_loopback(host)
        with pytest.raises(TLSError, match="--tls-cert and --tls-key .* or --insecure"):
            check_server_settings(host, TLSFiles(), insecure=False)
        check_server_settings(host, TLSFiles(), insecure=True)
        check_server_settings(host, files(pki, "coordinator"), insecure=False)


def test_replaced_certificate_files_are_served_without_a_restart(serve, tmp_path):
    """A new pair from another CA: new connections verify against the new CA only."""
    old, new = DevCA.create("old CA"), DevCA.create("new CA")
    for name, ca in (("old", old), ("new", new)):
        write_file(tmp_path / f"{name}-ca.pem", ca.issued.cert_pem, 0o644)
    pair = old.issue("coordinator")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    write_file(cert, pair.cert_pem, 0o644)
    write_file(key, pair.key_pem, 0o600)
    port = serve(TLSFiles(cert, key))
    trusts_old, trusts_new = (TLSFiles(ca=tmp_path / "old-ca.pem"),
                              TLSFiles(ca=tmp_path / "new-ca.pem"))
    assert check(port, trusts_old) is None
    assert check(port, trusts_new) is not None
    renewed = new.issue("coordinator")
    write_file(key, renewed.key_pem, 0o600)  # in the middle: a mismatched pair...
    assert check(port, trusts_old) is None  # ...keeps the previous certificate
    write_file(cert, renewed.cert_pem, 0o644)
    deadline = time.monotonic() + 10
    while check(port, trusts_new) is not None:  # the next handshake reads the files
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.1)
    assert check(port, trusts_old) is not None


def test_fleet_pki_files_sans_permissions_and_no_overwrite(tmp_path):
    written = write_fleet_pki(tmp_path, ["node-1", "node-2"], hosts=["edge.example",
                                                                      "10.1.2.3"])
    names = sorted(p.name for p in written)
    assert names == sorted(f"{n}.{ext}" for n in ("ca", "coordinator", "node-1", "node-2",
                                                   "client") for ext in ("pem", "key"))
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.suffix == ".key" else 0o644), path
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    node = x509.load_pem_x509_certificate((tmp_path / "node-2.pem").read_bytes())
    assert node.issuer == ca.subject
    assert node.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "node-2"
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"node-2", "localhost",
                                                          "edge.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")}
    usage = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH} <= set(
        usage)
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(FileExistsError, match="already holds ca.pem"):
        write_fleet_pki(tmp_path, ["node-1"])
    assert (tmp_path / "ca.pem").read_bytes() == before
    write_fleet_pki(tmp_path, ["node-1"], force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before
