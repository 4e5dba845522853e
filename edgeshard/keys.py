"""Ed25519 key files for model signing: load, name (key id) and make them.

Accepted encodings, for a private key (``sign-model --key``) and a public key (a node's
``--trust-key``) alike:

* PEM: PKCS#8 ``BEGIN PRIVATE KEY`` (optionally encrypted: ``BEGIN ENCRYPTED PRIVATE
  KEY``, with its passphrase) and SubjectPublicKeyInfo ``BEGIN PUBLIC KEY``, as
  ``edge-coordinator signing-key`` and ``openssl genpkey -algorithm ed25519`` write them;
* raw: the 32 key bytes, as a binary file or base64 text.

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key; a
manifest names its signer by it, and a node with several trusted keys (rotation) picks
the key by it. Every error is a ``KeyFileError`` that names the setting, the file and the
fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeshard.errors import EdgeshardError
from edgeshard.settings import SettingsError

MAX_KEY_FILE_BYTES = 64 * 1024  # far above any key file; stops a model file read as a key
PUBLIC_SUFFIX = ".pub"  # what a --trust-key directory's key files end with
MAKE_ONE = "edge-coordinator signing-key --out DIR makes a key pair"
PASSPHRASE_HINT = "--passphrase-file FILE or EDGESHARD_KEY_PASSPHRASE"


if TYPE_CHECKING:  # cryptography is imported where a key is handled: a node without
    # --trust-key or TLS never loads it (~10 MB of its resident memory)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


class KeyFileError(EdgeshardError, SettingsError):
    """A key file is unusable; the message names the setting (as its flag), file and fix."""


def key_id(key: Ed25519PublicKey) -> str:
    """The key's id: sha256 of its raw 32 bytes, first 16 hex digits."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read(path: Path, flag: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{flag}: {path}: no such file; give the {what} file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{flag}: {path} is a directory; give the {what} file") from None
    except OSError as exc:
        raise KeyFileError(f"{flag}: cannot read {path} ({exc.strerror or exc}); "
                           "check the path and its permissions") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{flag}: {path} is too large to be a key file; give the "
                           f"{what} file")
    return data


def _raw32(data: bytes) -> bytes | None:
    """The 32 key bytes of a raw (binary or base64 text) key file, else None."""
    if len(data) == 32:
        return data
    try:
        decoded = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == 32 else None


def _kind(key: object) -> str:
    return type(key).__name__.removesuffix("PrivateKey").removesuffix("PublicKey")


def _pem_label(data: bytes) -> str:
    """The label of the first PEM block (``PRIVATE KEY``...), "" when not PEM."""
    text = data.lstrip()
    if not text.startswith(b"-----BEGIN "):
        return ""
    return text[11:text.find(b"-----", 11)].decode("ascii", "replace")


def load_private_key(path: Path, flag: str = "--key",
                     passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PEM, optionally encrypted, or raw).

    Raises ``KeyFileError`` for a file that is missing or unreadable, a public key or
    certificate, an encrypted key without ``passphrase`` (or a wrong one), a passphrase
    for a key that is not encrypted, or a key of another type (RSA, EC...).
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(path, flag, "Ed25519 private key")
    label = _pem_label(data)
    if "PUBLIC KEY" in label or "CERTIFICATE" in label:
        raise KeyFileError(f"{flag}: {path} holds a {label.lower()}, not a private key; "
                           "give the private key file (signing-key writes NAME.key)")
    if label:
        try:
            key = serialization.load_pem_private_key(data, passphrase)
        except TypeError:  # a passphrase missing, or given for a key that needs none
            if passphrase is None:
                raise KeyFileError(f"{flag}: {path} is encrypted; give its passphrase with "
                                   f"{PASSPHRASE_HINT}") from None
            raise KeyFileError(f"{flag}: {path} is not encrypted; give no passphrase "
                               f"({PASSPHRASE_HINT})") from None
        except ValueError as exc:
            # A wrong passphrase usually fails the padding check ("bad decrypt"), but
            # about one time in 256 the padding passes and the garbage fails to parse
            # instead, so any failure to read an encrypted key with a passphrase is
            # reported as a wrong passphrase.
            if passphrase is not None and ("password" in str(exc).lower()
                                           or "ENCRYPTED" in label):
                raise KeyFileError(f"{flag}: wrong passphrase for {path} (or the file is "
                                   f"damaged); check {PASSPHRASE_HINT}") from None
            raise KeyFileError(f"{flag}: {path} is not a valid PEM private key; "
                               f"{MAKE_ONE}") from None
        except UnsupportedAlgorithm:
            raise KeyFileError(f"{flag}: {path} holds a key of a type this build cannot "
                               f"read; model signing needs Ed25519 ({MAKE_ONE})") from None
    else:
        raw = _raw32(data)
        if raw is None:
            raise KeyFileError(f"{flag}: {path} is not an Ed25519 private key (PEM, or 32 "
                               f"raw or base64 bytes); {MAKE_ONE}")
        key = Ed25519PrivateKey.from_private_bytes(raw)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{flag}: {path} is not an Ed25519 key ({_kind(key)}); model "
                           f"signing needs an Ed25519 key ({MAKE_ONE})")
    return key


def load_public_key(path: Path, flag: str = "--trust-key") -> Ed25519PublicKey:
    """The Ed25519 public key in ``path`` (PEM or raw).

    Raises ``KeyFileError`` for a file that is missing or unreadable, a private key (keep
    those off the devices), or anything but an Ed25519 public key.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read(path, flag, "Ed25519 public key")
    label = _pem_label(data)
    if "PRIVATE KEY" in label:
        raise KeyFileError(f"{flag}: {path} is a private key; give the public key "
                           "(signing-key writes it as NAME.pub) and keep the private key "
                           "off the devices")
    if label:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"{flag}: {path} is not a PEM public key; give an Ed25519 "
                               f"public key ({MAKE_ONE})") from None
    else:
        raw = _raw32(data)
        if raw is None:
            raise KeyFileError(f"{flag}: {path} is not an Ed25519 public key (PEM, or 32 "
                               "raw or base64 bytes)")
        key = Ed25519PublicKey.from_public_bytes(raw)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{flag}: {path} is not an Ed25519 key ({_kind(key)}); model "
                           "signatures are Ed25519: give the signing key's public key")
    return key


def load_trust_keys(paths: Iterable[Path], flag: str = "--trust-key") -> list[Ed25519PublicKey]:
    """The public keys in ``paths``: each a key file, or a directory whose ``*.pub``
    files are each a key. Raises ``KeyFileError`` for any unusable file or a directory
    without ``*.pub`` files."""
    keys = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.suffix == PUBLIC_SUFFIX and not p.name.startswith("."))
            if not files:
                raise KeyFileError(f"{flag}: directory {path} holds no *{PUBLIC_SUFFIX} "
                                   "file; put the trusted public keys there")
            keys.extend(load_public_key(p, flag) for p in files)
        else:
            keys.append(load_public_key(path, flag))
    return keys


def new_key_pair(passphrase: bytes | None = None) -> tuple[Ed25519PrivateKey, bytes, bytes]:
    """A new key, its PKCS#8 PEM (encrypted when ``passphrase`` is given) and its public
    key's PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, private_pem, public_pem
