"""Signing model versions and verifying them against trusted Ed25519 keys.

The manifest format and exactly what a signature covers: ``edgeshard.manifest``. Keys
and key ids: ``edgeshard.keys``.

**Verification** (:func:`verify_version`, used by the node before a model reaches the
interpreter), with a :class:`SigningPolicy` of trusted keys and ``require_signed``:

* every file ``files`` lists must exist with that size and sha256 (always);
* a manifest's ``model``/``version`` must be the directory's (always);
* a signature is verified whenever trusted keys are configured: one by an unknown key,
  malformed, or not matching the bytes is refused even without ``require_signed`` (it is
  evidence of tampering; absence of a signature is not, until ``require_signed``);
* with ``require_signed``: a missing or unsigned manifest is refused, and so is a version
  whose node-read files are not all listed (a ``calibration.json`` added after signing).

Each refusal is a :class:`ManifestError` whose ``reason`` is one of :data:`REASONS` and
whose message starts with the version directory and ends with the fix.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeshard.keys import key_id
from edgeshard.manifest import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MODEL_FILE,
    RESERVED,
    RESTORE,
    SIGNATURE_FIELD,
    VERSION_FILES,
    FileDigest,
    Manifest,
    ManifestError,
    canonical_bytes,
    read_manifest,
)

if TYPE_CHECKING:  # imported where a signature is checked (see edgeshard.keys)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


@dataclass(frozen=True)
class TrustStore:
    """The public keys whose signatures a node accepts, by key id (key rotation: several)."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Iterable[Ed25519PublicKey]) -> TrustStore:
        """A store of ``keys`` (the same key twice counts once)."""
        return cls({key_id(k): k for k in keys})

    @property
    def key_ids(self) -> list[str]:
        """The trusted key ids, sorted."""
        return sorted(self.keys)

    def verify(self, manifest: Manifest) -> str:
        """Check ``manifest``'s signature; returns the key id that verified it.

        Raises ``ManifestError``: ``untrusted_key`` when its key id is not trusted,
        ``bad_signature`` when the signature is not base64 of 64 bytes or does not match
        the manifest's canonical bytes.
        """
        where = manifest.path
        kid = manifest.key_id
        key = self.keys.get(kid)
        if key is None:
            raise ManifestError(
                "untrusted_key",
                f"{where}: signed by key {kid}, which is not trusted (trusted: "
                f"{', '.join(self.key_ids)}); if the key is yours, give its public key "
                f"with --trust-key, else {RESTORE}")
        try:
            signature = base64.b64decode(manifest.fields[SIGNATURE_FIELD], validate=True)
        except (binascii.Error, ValueError):
            signature = b""
        if len(signature) != 64:
            raise ManifestError(
                "bad_signature",
                f"{where}: malformed signature (base64 of a 64-byte Ed25519 signature "
                f"expected); {RESTORE}")
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(signature, canonical_bytes(manifest.fields))
        except InvalidSignature:
            raise ManifestError(
                "bad_signature",
                f"{where}: signature does not verify with key {kid}: the manifest was "
                f"changed after it was signed; {RESTORE}") from None
        return kid


@dataclass(frozen=True)
class SigningPolicy:
    """What a node demands of versions: ``trust`` (keys checked whenever a version is
    signed) and ``require_signed`` (refuse versions that are not signed by one of them)."""

    trust: TrustStore = field(default_factory=TrustStore)
    require_signed: bool = False

    def __post_init__(self) -> None:
        if self.require_signed and not self.trust.keys:
            raise ValueError("require_signed needs at least one trusted key")

    def describe(self) -> str:
        """One line for the start-up log."""
        ids = ", ".join(self.trust.key_ids)
        if self.require_signed:
            return f"model signatures required (trusted keys: {ids})"
        if self.trust.keys:
            return f"model signatures verified when present (trusted keys: {ids})"
        return "model signatures not checked (no --trust-key)"


def verify_version(version_dir: Path, model: str, read: Mapping[str, bytes],
                   policy: SigningPolicy) -> Manifest | None:
    """Check the version in ``version_dir`` of ``model`` against its manifest and ``policy``.

    ``read`` maps the names (as in ``files``) of the files the node read for this version
    to their bytes: those bytes, not the files again, are what is checked, so what is
    verified is what is served. Returns the manifest (None when there is none and none is
    required); the order of checks is: manifest present and signed (when required), the
    signature (when keys are trusted), model and version, then every listed file, then
    that every file in ``read`` is listed (when required). Raises ``ManifestError``.
    """
    sign = f"edge-coordinator sign-model --key KEY {version_dir}"
    fix = (f"if these are the files you built, sign them where they were built: {sign}; "
           "if you do not know where they came from, restore the version instead")
    manifest = read_manifest(version_dir)
    if manifest is None:
        if policy.require_signed:
            raise ManifestError(
                "manifest_missing",
                f"{version_dir}: no {MANIFEST_FILE}; --require-signed serves only signed "
                f"versions ({fix})")
        return None
    if manifest.signed and policy.trust.keys:
        policy.trust.verify(manifest)
    elif policy.require_signed:
        raise ManifestError(
            "unsigned",
            f"{manifest.path}: not signed; --require-signed serves only signed versions "
            f"({fix})")
    if not manifest.legacy:
        claimed = (manifest.fields["model"], manifest.fields["version"])
        if claimed != (model, version_dir.name):
            raise ManifestError(
                "manifest_mismatch",
                f"{manifest.path}: written for {claimed[0]} version {claimed[1]}, not "
                f"{model} version {version_dir.name} (copied from another version?); "
                f"{RESTORE}")
    for name, expected in manifest.files.items():
        data = read.get(name)
        if data is None:
            try:
                data = (version_dir / name).read_bytes()
            except OSError as exc:
                raise ManifestError(
                    "file_missing",
                    f"{version_dir}: {name} is listed in {MANIFEST_FILE} but cannot be "
                    f"read ({exc.strerror or exc}); {RESTORE}") from None
        actual = FileDigest.of(data)
        if actual.sha256 != expected.sha256 or expected.size not in (None, actual.size):
            raise ManifestError(
                "digest_mismatch",
                f"{version_dir}: {name} has sha256 {actual.sha256[:12]}… ({actual.size} "
                f"bytes), {MANIFEST_FILE} says {expected.sha256[:12]}… "
                f"({expected.size} bytes): the file was replaced or is corrupt; {RESTORE}")
    if policy.require_signed:
        unlisted = sorted(set(read) - set(manifest.files))
        if unlisted:
            raise ManifestError(
                "not_covered",
                f"{version_dir}: {', '.join(unlisted)} not covered by the signed "
                f"{MANIFEST_FILE} (added after signing, by calibrate --write?); remove it, "
                f"or sign the version again where its files were made: {sign}")
    return manifest


def read_version_files(version_dir: Path) -> dict[str, bytes]:
    """The files a node reads for the version in ``version_dir``, by their ``files`` name.

    Raises ``FileNotFoundError`` when ``model.tflite`` is missing (the others are
    optional) and ``OSError`` when a file cannot be read.
    """
    found = {}
    for name in VERSION_FILES:
        try:
            found[name] = (version_dir / name).read_bytes()
        except FileNotFoundError:
            if name == MODEL_FILE:
                raise
    return found


def sign_version(version_dir: Path, key: Ed25519PrivateKey,
                 now: datetime.datetime | None = None) -> dict[str, Any]:
    """A signed manifest for the version in ``version_dir`` (``<repo>/<model>/<version>``),
    covering the files it holds now (:func:`read_version_files`).

    Fields of its current ``manifest.json`` other than the signer's own (``created_by``,
    ``holdout_accuracy``...) are carried along, and signed too. Raises
    ``FileNotFoundError`` without ``model.tflite``, ``ValueError`` when the current
    manifest is not a JSON object or holds a number JSON cannot carry (NaN).
    """
    files = {name: FileDigest.of(data) for name, data in read_version_files(version_dir).items()}
    model = files[MODEL_FILE]
    now = now or datetime.datetime.now(datetime.UTC)
    where = Path(os.path.abspath(version_dir))  # "." and ".." resolved, symlinks kept
    manifest = {k: v for k, v in _current_fields(version_dir).items() if k not in RESERVED}
    manifest.update({
        "format": MANIFEST_FORMAT,
        "model": where.parent.name,
        "version": where.name,
        "files": {name: digest.as_json() for name, digest in files.items()},
        "sha256": model.sha256,
        "size": model.size,
        "key_id": key_id(key.public_key()),
        "signed_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    signature = key.sign(canonical_bytes(manifest))
    manifest[SIGNATURE_FIELD] = base64.b64encode(signature).decode("ascii")
    return manifest


def _current_fields(version_dir: Path) -> dict[str, Any]:
    """The fields of the version's manifest as it is ({} without one)."""
    path = version_dir / MANIFEST_FILE
    try:
        fields = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: not a JSON object")
    return fields


