"""Bearer tokens with roles: the token file, the server interceptor that checks them, and
the client interceptor that sends one.

A caller sends ``authorization: Bearer <token>`` metadata (RFC 6750's header, as gRPC
and HTTP servers expect it). The server knows tokens only by their SHA-256 (like GitHub's
stored tokens), so a leaked token file grants nothing. The token file (``--auth-tokens``)
is TOML, one table per token::

    [[token]]
    name = "alice"             # who holds it; a job belongs to the name that submitted it
    roles = ["jobs"]           # infer, jobs, admin, node
    sha256 = "9f86d08188..."   # hex SHA-256 of the token (``edge-coordinator tokens add``)

(``token = "..."`` in clear instead of ``sha256`` is accepted, for tests.) Roles nest:
``infer`` calls the Open Inference Protocol front and lists nodes; ``jobs`` adds the Jobs
API for its own jobs; ``admin`` adds every job, Drain/Undrain and the model repository.
``node`` is apart: a node's join token, named after the node id it may register as.

The file is read again when it changes (checked at most once a second), so a token is
added or revoked without a restart; a file that no longer parses keeps the previous
tokens and says why in the log.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import secrets
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from edgeshard.errors import EdgeshardError, PermissionDeniedError, UnauthenticatedError
from edgeshard.settings import SettingsError

log = logging.getLogger(__name__)

INFER, JOBS, ADMIN, NODE = "infer", "jobs", "admin", "node"
ROLES = (INFER, JOBS, ADMIN, NODE)
# What each role may do besides its own: an admin may do what jobs and infer may.
IMPLIES = {INFER: {INFER}, JOBS: {JOBS, INFER}, ADMIN: {ADMIN, JOBS, INFER}, NODE: {NODE}}
OPEN = "open"  # an access level: no token needed (health, reflection)
METADATA_KEY = "authorization"
SCHEME = "Bearer"
RELOAD_CHECK_S = 1.0
MAX_TOKEN_CHARS = 512


class TokenFileError(SettingsError):
    """The token file cannot be read or is malformed; the message names the file, the
    entry and the field."""


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to: its ``name`` and the roles it was given."""

    name: str
    roles: frozenset[str]

    def allows(self, role: str) -> bool:
        """Whether this principal may do what ``role`` may (roles nest: see the module)."""
        return any(role in IMPLIES[r] for r in self.roles)

    @property
    def is_admin(self) -> bool:
        """True for the admin role: every job is its business."""
        return ADMIN in self.roles


def token_digest(token: str) -> str:
    """The hex SHA-256 of ``token`` (UTF-8), as the token file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token: 32 bytes from ``secrets``, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def check_token(token: str, field: str) -> str:
    """``token`` stripped, or ``SettingsError`` naming ``field`` when it cannot be sent as
    gRPC metadata (empty, whitespace inside, not printable ASCII, too long)."""
    token = token.strip()
    if not token:
        raise SettingsError(f"{field}: empty token")
    if (len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable()
            or any(c.isspace() for c in token)):
        raise SettingsError(f"{field}: a token is up to {MAX_TOKEN_CHARS} printable ASCII "
                            "characters without spaces")
    return token


def parse_tokens(data: Mapping, where: str) -> dict[str, Principal]:
    """Token digest -> principal from a parsed token file (``where`` names it in errors).

    Raises ``TokenFileError`` naming the entry and field: a missing or malformed name,
    an unknown role, neither or both of ``sha256`` and ``token``, or a token given twice.
    """
    entries = data.get("token", [])
    unknown = sorted(set(data) - {"token"})
    if unknown:
        raise TokenFileError(f"{where}: unknown key(s) {', '.join(unknown)}; entries are "
                             "[[token]] tables")
    if not isinstance(entries, list):
        raise TokenFileError(f"{where}: 'token' must be an array of tables ([[token]])")
    out: dict[str, Principal] = {}
    for i, entry in enumerate(entries):
        at = f"{where}: token #{i + 1}"
        if not isinstance(entry, dict):
            raise TokenFileError(f"{at}: must be a table ([[token]])")
        extra = sorted(set(entry) - {"name", "roles", "sha256", "token"})
        if extra:
            raise TokenFileError(f"{at}: unknown field(s) {', '.join(extra)} (known: name, "
                                 "roles, sha256, token)")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise TokenFileError(f"{at}: name: required, the holder's name (a node's id for "
                                 "a node token)")
        at = f"{where}: token {name!r}"
        roles = entry.get("roles")
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not roles or not all(r in ROLES for r in roles):
            raise TokenFileError(f"{at}: roles: a list of {', '.join(ROLES)}, got {roles!r}")
        if ("sha256" in entry) == ("token" in entry):
            raise TokenFileError(f"{at}: give exactly one of sha256 (hex SHA-256 of the "
                                 "token) and token (the token in clear)")
        if "token" in entry:
            if not isinstance(entry["token"], str):
                raise TokenFileError(f"{at}: token: must be a string")
            try:
                digest = token_digest(check_token(entry["token"], "token"))
            except SettingsError as exc:
                raise TokenFileError(f"{at}: {exc}") from None
        else:
            digest = entry["sha256"]
            if (not isinstance(digest, str) or len(digest) != 64
                    or any(c not in "0123456789abcdef" for c in digest.lower())):
                raise TokenFileError(f"{at}: sha256: must be 64 hex digits")
            digest = digest.lower()
        if digest in out:
            raise TokenFileError(f"{at}: the same token is already given to "
                                 f"{out[digest].name!r}")
        out[digest] = Principal(name.strip(), frozenset(roles))
    return out


def load_token_table(path: Path, field: str = "auth_tokens") -> dict:
    """The TOML table in ``path``; ``TokenFileError`` names ``field`` and the file when it
    is unreadable or not TOML (entries are checked by ``parse_tokens``)."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise TokenFileError(f"{field}: cannot read {path} ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{field}: {path} is not valid TOML ({exc})") from None


def read_token_file(path: Path) -> dict[str, Principal]:
    """The tokens in the TOML file at ``path``; ``TokenFileError`` names the file and what
    is wrong (unreadable, not TOML, a bad entry). Warns (log) of tokens kept in clear and
    of a file without tokens."""
    data = load_token_table(path)
    tokens = parse_tokens(data, f"auth_tokens: {path}")
    clear = sum(1 for e in data.get("token", []) if isinstance(e, dict) and "token" in e)
    if clear:
        log.warning("%s: %d token(s) stored in clear text; store their sha256 instead "
                    "(edge-coordinator tokens add writes it)", path, clear)
    if not tokens:
        log.warning("%s holds no tokens: every call but health is refused", path)
    return tokens


class TokenBook:
    """The tokens of a token file, kept current: ``lookup`` re-reads the file (at most
    once per ``RELOAD_CHECK_S``) when its modification time or size changed."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = read_token_file(self.path)  # a bad file fails at start-up
        self._stamp = self._file_stamp()
        self._checked = clock()
        self.reloads = 0

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            if now - self._checked < RELOAD_CHECK_S:
                return
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._tokens = read_token_file(self.path)
            except TokenFileError as exc:
                log.error("token file changed but cannot be used (%s); the previous tokens "
                          "stay in force", exc)
                return
            self.reloads += 1
            log.info("token file %s reloaded: %d token(s)", self.path, len(self._tokens))

    def lookup(self, token: str) -> Principal | None:
        """The principal holding ``token``, or None for an unknown (or revoked) one."""
        self._refresh()
        return self._tokens.get(token_digest(token))

    def has_role(self, role: str) -> bool:
        """Whether any token has ``role`` exactly (e.g. whether join tokens are in use)."""
        self._refresh()
        return any(role in p.roles for p in self._tokens.values())


class AuthError(EdgeshardError):
    """A call's credentials are missing or not good enough."""


class NotAuthenticatedError(AuthError, UnauthenticatedError):
    """No token, a malformed header, or a token nobody holds (UNAUTHENTICATED)."""


class RoleError(AuthError, PermissionDeniedError):
    """A valid token without the role the call needs (PERMISSION_DENIED)."""


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry in ``metadata``, or None
    when there is none; ``AuthError`` (UNAUTHENTICATED) when the entry is malformed."""
    for key, value in metadata or ():
        if key.lower() != METADATA_KEY:
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != SCHEME.lower() or not token.strip():
            raise NotAuthenticatedError("authorization: expected 'Bearer <token>'")
        return token.strip()
    return None


class Authenticator:
    """Decides who a call comes from and whether it may go on.

    ``access(method)`` gives the role a full method name (``/pkg.Service/Method``) needs,
    or ``OPEN``; ``on_denied(method, code_name)`` is told of every refusal (metrics).
    """

    def __init__(self, book: TokenBook, access: Callable[[str], str],
                 on_denied: Callable[[str, str], None] = lambda method, code: None):
        self.book = book
        self.access = access
        self.on_denied = on_denied

    def principal(self, metadata) -> Principal | None:
        """The principal of the call's token, or None without one. ``AuthError``
        (UNAUTHENTICATED) for a malformed header or a token the book does not know."""
        token = bearer_token(metadata)
        if token is None:
            return None
        principal = self.book.lookup(token)
        if principal is None:
            raise NotAuthenticatedError("the bearer token is not valid here (unknown or "
                                        "revoked)")
        return principal

    def check(self, method: str, metadata) -> Principal | None:
        """The caller's principal when it may call ``method`` (None for an open one);
        ``AuthError`` otherwise, after telling ``on_denied``."""
        need = self.access(method)
        if need == OPEN:
            return None
        try:
            principal = self.principal(metadata)
            if principal is None:
                raise NotAuthenticatedError(
                                f"{_short(method)} needs a bearer token with the {need} role: "
                                "send 'authorization: Bearer <token>' metadata (the CLI's "
                                "--token or EDGESHARD_TOKEN)")
            if not principal.allows(need):
                raise RoleError(f"{_short(method)} needs the {need} role; the token of "
                                f"{principal.name!r} has {', '.join(sorted(principal.roles))}")
        except AuthError as exc:
            self.on_denied(method, _code(exc).name)
            raise
        return principal


def _short(method: str) -> str:
    """``/pkg.Service/Method`` -> ``Method``."""
    return method.rsplit("/", 1)[-1] or method


def _code(error: AuthError) -> grpc.StatusCode:
    return (grpc.StatusCode.PERMISSION_DENIED if isinstance(error, PermissionDeniedError)
            else grpc.StatusCode.UNAUTHENTICATED)


def _refusal(handler: grpc.RpcMethodHandler, error: AuthError) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that answers ``error``'s status and message."""

    def refuse(_request, context):
        context.abort(_code(error), str(error))

    kinds = {(False, False): grpc.unary_unary_rpc_method_handler,
             (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler,
             (True, True): grpc.stream_stream_rpc_method_handler}
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call before its handler runs when ``authenticator.check`` does:
    UNAUTHENTICATED without a valid token, PERMISSION_DENIED without the role. For a
    ``grpc.aio`` server (``edgeshard.aio_server``); the check itself does not block."""

    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator

    async def intercept_service(self, continuation, handler_call_details):
        """The method's handler, or one that refuses the call."""
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return None
        try:
            self.authenticator.check(handler_call_details.method,
                                     handler_call_details.invocation_metadata)
        except AuthError as exc:
            return _refusal(handler, exc)
        return handler


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    """A call's details with other metadata (gRPC's ``ClientCallDetails`` is abstract)."""


class BearerTokenInterceptor(grpc.UnaryUnaryClientInterceptor,
                             grpc.UnaryStreamClientInterceptor,
                             grpc.StreamUnaryClientInterceptor,
                             grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str):
        self._entry = (METADATA_KEY, f"{SCHEME} {token}")

    def _details(self, details):
        metadata = [m for m in (details.metadata or ()) if m[0].lower() != METADATA_KEY]
        return _CallDetails(details.method, details.timeout, [*metadata, self._entry],
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        """Send the call on with the token added."""
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        """Send the call on with the token added."""
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        """Send the call on with the token added."""
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        """Send the call on with the token added."""
        return continuation(self._details(client_call_details), request_iterator)
