"""Bearer tokens (issue 10, item 3) without a server: the token file, role nesting, the
authorization header, the decision and its refusals, reloading a changed file."""

from __future__ import annotations

import os

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeshard.auth import (
    OPEN,
    Authenticator,
    NotAuthenticatedError,
    Principal,
    RoleError,
    TokenBook,
    TokenFileError,
    bearer_token,
    check_token,
    new_token,
    parse_tokens,
    read_token_file,
    token_digest,
)
from edgeshard.errors import PermissionDeniedError, UnauthenticatedError
from edgeshard.rpc import status_for
from edgeshard.settings import SettingsError


def entry(name="alice", roles=("jobs",), **kw):
    out = {"name": name, "roles": list(roles)}
    out.update(kw or {"token": f"tok-{name}"})
    return out


def test_tokens_are_known_by_their_sha256_and_roles_nest():
    book = parse_tokens({"token": [entry("alice", ["jobs"]), entry("ops", ["admin"]),
                                   entry("cam", ["infer"]), entry("node-1", ["node"])]}, "f")
    alice = book[token_digest("tok-alice")]
    assert alice == Principal("alice", frozenset({"jobs"}))
    assert alice.allows("jobs") and alice.allows("infer") and not alice.allows("admin")
    ops = book[token_digest("tok-ops")]
    assert ops.is_admin and all(ops.allows(r) for r in ("infer", "jobs", "admin"))
    assert not ops.allows("node")  # a join token is a node's, not an operator's
    cam = book[token_digest("tok-cam")]
    assert cam.allows("infer") and not cam.allows("jobs")
    node = book[token_digest("tok-node-1")]
    assert node.allows("node") and not node.allows("infer")


def test_a_stored_digest_is_accepted_in_either_case():
    digest = token_digest("secret")
    book = parse_tokens({"token": [entry(sha256=digest.upper())]}, "f")
    assert book[digest].name == "alice"


@pytest.mark.parametrize("data, message", [
    ({"tokens": []}, "unknown key(s) tokens"),
    ({"token": {"name": "a"}}, "array of tables"),
    ({"token": ["x"]}, "token #1: must be a table"),
    ({"token": [{"roles": ["jobs"], "token": "t"}]}, "token #1: name: required"),
    ({"token": [entry(roles=["root"])]}, "roles: a list of infer, jobs, admin, node"),
    ({"token": [entry(roles=[])]}, "roles: a list of"),
    ({"token": [{"name": "a", "roles": ["jobs"]}]}, "give exactly one of sha256"),
    ({"token": [entry(sha256="ab", token="t")]}, "give exactly one of sha256"),
    ({"token": [entry(sha256="xyz")]}, "sha256: must be 64 hex digits"),
    ({"token": [entry(token="has space")]}, "printable ASCII characters without spaces"),
    ({"token": [entry(token=7)]}, "token: must be a string"),
    ({"token": [entry(colour="red")]}, "unknown field(s) colour"),
    ({"token": [entry("a", token="same"), entry("b", token="same")]},
     "token 'b': the same token is already given to 'a'"),
])
def test_a_bad_token_file_is_refused_naming_the_entry_and_field(data, message):
    with pytest.raises(TokenFileError) as info:
        parse_tokens(data, "auth_tokens: tokens.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("auth_tokens: tokens.toml")


def test_an_unreadable_or_malformed_file_names_the_file(tmp_path):
    with pytest.raises(TokenFileError, match=r"auth_tokens: cannot read .*missing\.toml"):
        read_token_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[token]\nname=")
    with pytest.raises(TokenFileError, match=r"auth_tokens: .*bad\.toml is not valid TOML"):
        read_token_file(bad)
    assert issubclass(TokenFileError, SettingsError)  # a daemon reports it as a config error


@pytest.mark.parametrize("value, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), (b"Bearer abc", "abc")])
def test_the_bearer_header_is_read(value, token):
    assert bearer_token([("x-other", "1"), ("authorization", value)]) == token


@pytest.mark.parametrize("value", ["Basic abc", "Bearer", "Bearer ", "abc"])
def test_a_malformed_authorization_header_is_unauthenticated(value):
    with pytest.raises(NotAuthenticatedError, match="expected 'Bearer <token>'"):
        bearer_token([("authorization", value)])


def test_no_authorization_header_is_no_token():
    assert bearer_token([("x-other", "1")]) is None and bearer_token(None) is None


@pytest.mark.parametrize("bad", ["", "  ", "a b", "tök", "x" * 513, "a\tb"])
def test_check_token_refuses_what_metadata_cannot_carry(bad):
    with pytest.raises(SettingsError, match="--token"):
        check_token(bad, "--token")


@given(st.integers(min_value=0, max_value=50))
def test_new_tokens_are_valid_and_distinct(_):
    a, b = new_token(), new_token()
    assert a != b and check_token(a, "t") == a and len(a) >= 43


def book_file(tmp_path, *entries) -> TokenBook:
    path = tmp_path / "tokens.toml"
    write_entries(path, *entries)
    return TokenBook(path, clock=lambda: clock[0])


clock = [0.0]


def write_entries(path, *entries):
    text = ""
    for e in entries:
        text += (f'[[token]]\nname = "{e["name"]}"\nroles = {e["roles"]!r}\n'
                 f'token = "{e["token"]}"\n').replace("'", '"')
    path.write_text(text)
    st_ = os.stat(path)
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))  # a new mtime


def authenticator(book, denied):
    access = {"/s/Open": OPEN, "/s/Infer": "infer", "/s/Drain": "admin"}
    return Authenticator(book, lambda m: access.get(m, "admin"),
                         on_denied=lambda method, code: denied.append((method, code)))


def test_the_decision_names_the_role_and_counts_refusals(tmp_path):
    denied = []
    auth = authenticator(book_file(tmp_path, entry("cam", ["infer"])), denied)
    assert auth.check("/s/Open", []) is None
    assert auth.check("/s/Infer", [("authorization", "Bearer tok-cam")]).name == "cam"
    with pytest.raises(NotAuthenticatedError, match="Infer needs a bearer token with the "
                       "infer role: send 'authorization: Bearer <token>'"):
        auth.check("/s/Infer", [])
    with pytest.raises(NotAuthenticatedError, match="not valid here"):
        auth.check("/s/Infer", [("authorization", "Bearer nope")])
    with pytest.raises(RoleError, match="Drain needs the admin role; the token of 'cam' has "
                       "infer"):
        auth.check("/s/Drain", [("authorization", "Bearer tok-cam")])
    assert denied == [("/s/Infer", "UNAUTHENTICATED"), ("/s/Infer", "UNAUTHENTICATED"),
                      ("/s/Drain", "PERMISSION_DENIED")]


def test_refusals_map_to_their_grpc_status():
    assert status_for(NotAuthenticatedError("x"), "c")[0] == grpc.StatusCode.UNAUTHENTICATED
    assert status_for(RoleError("x"), "c")[0] == grpc.StatusCode.PERMISSION_DENIED
    assert issubclass(NotAuthenticatedError, UnauthenticatedError)
    assert issubclass(RoleError, PermissionDeniedError)


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_tokens(tmp_path, caplog):
    clock[0] = 0.0
    book = book_file(tmp_path, entry("alice"))
    assert book.lookup("tok-alice").name == "alice" and book.lookup("tok-bob") is None
    write_entries(book.path, entry("bob"))
    assert book.lookup("tok-bob") is None  # checked at most once a second
    clock[0] = 1.5
    assert book.lookup("tok-bob").name == "bob" and book.lookup("tok-alice") is None
    assert book.reloads == 1
    book.path.write_text("not toml [")
    clock[0] = 3.0
    assert book.lookup("tok-bob").name == "bob"  # revoked only by a file that loads
    assert "the previous tokens stay in force" in caplog.text
    assert not book.has_role("node")
    write_entries(book.path, entry("node-1", ["node"]))
    clock[0] = 4.5
    assert book.has_role("node")
