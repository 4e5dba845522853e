"""The model version manifest (``manifest.json``): its format, canonical bytes and parsing.

A model version ``<repo>/<model>/<version>/`` carries ``manifest.json``:

.. code-block:: json

    {
      "format": "edgeshard.manifest.v1",
      "model": "mnist_edge",
      "version": "2",
      "files": {
        "../config.toml":   {"sha256": "<64 hex>", "size": 412},
        "calibration.json": {"sha256": "<64 hex>", "size": 231},
        "model.tflite":     {"sha256": "<64 hex>", "size": 10264}
      },
      "sha256": "<64 hex>", "size": 10264,
      "key_id": "1a2b3c4d5e6f7a8b",
      "signed_at": "2025-11-30T12:17:00Z",
      "created_by": "scripts/train_models.py",
      "signature": "<base64 of the 64-byte Ed25519 signature>"
    }

``files`` lists every file the node reads for the version, by its path relative to the
version directory: ``model.tflite``, ``calibration.json`` and ``profile.json`` (the drift
reference, ``edgeshard.profile``) when there are, and the
model's ``../config.toml`` (shared by its versions: editing it changes what each version
serves, so each version's signature covers it). Top-level ``sha256``/``size`` repeat
``model.tflite``'s for nodes that predate signing. ``key_id`` names the signing key
(``edgeshard.keys.key_id``). Other fields (``created_by``, ``holdout_accuracy``...) are
carried along.

**What the signature covers**: every field except ``signature``, as canonical bytes
(:func:`canonical_bytes`: keys sorted at every level, no whitespace, ASCII with ``\\u``
escapes). So model, version, key id, every file's name, sha256 and size, and the
metadata are all signed; re-indenting the file changes nothing, any other edit breaks it.
Binding model and version stops a signed version from being copied to another version or
model directory; file digests stop a file from being replaced.

A manifest from before signing (``{"sha256": ..., "size": ...}`` without ``format``) is
read as describing ``model.tflite`` only, unsigned. Signing and verifying:
``edgeshard.signing``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeshard.errors import EdgeshardError

MANIFEST_FORMAT = "edgeshard.manifest.v1"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.tflite"
CALIBRATION_FILE = "calibration.json"
PROFILE_FILE = "profile.json"  # the drift reference profile (edgeshard.profile)
CONFIG_ENTRY = "../config.toml"  # the model's config, as seen from a version directory
SIGNATURE_FIELD = "signature"
# Files a node reads for a version, in the order they are listed; only model.tflite is
# required.
VERSION_FILES = (MODEL_FILE, CALIBRATION_FILE, PROFILE_FILE, CONFIG_ENTRY)
# Fields the signer sets; everything else in an existing manifest is carried along.
RESERVED = frozenset({"format", "model", "version", "files", "sha256", "size", "key_id",
                      "signed_at", SIGNATURE_FIELD})

REASONS = {  # reason code (metric label) -> meaning
    "manifest_missing": "no manifest.json, and signatures are required",
    "unsigned": "manifest.json has no signature, and signatures are required",
    "manifest_invalid": "manifest.json is not a valid manifest",
    "manifest_mismatch": "manifest.json names another model or version",
    "untrusted_key": "signed by a key that is not trusted",
    "bad_signature": "the signature is malformed or does not match the manifest",
    "file_missing": "a file the manifest lists is missing",
    "digest_mismatch": "a file's size or sha256 differs from the manifest's",
    "not_covered": "the node would read a file the signed manifest does not list",
}

# The fix for a refusal that is evidence of tampering: never "sign it again" (that would
# bless whatever is there now).
RESTORE = "restore the version from where it was built and signed"

_HEX64 = re.compile(r"[0-9a-f]{64}")


class ManifestError(EdgeshardError):
    """A version's manifest, signature or files do not verify; ``reason`` is a REASONS key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: ``manifest`` without its ``signature`` field as JSON
    with keys sorted at every level, no whitespace and only ASCII (``\\u`` escapes).

    Stable: equal for every manifest that parses to the same values, however the file is
    indented or its keys ordered. Raises ``ValueError`` for NaN or infinite numbers
    (JSON has none).
    """
    body = {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


@dataclass(frozen=True)
class FileDigest:
    """A file's expected sha256 (lowercase hex) and size in bytes (None: not recorded)."""

    sha256: str
    size: int | None

    @classmethod
    def of(cls, data: bytes) -> FileDigest:
        """The digest of ``data``."""
        return cls(hashlib.sha256(data).hexdigest(), len(data))

    def as_json(self) -> dict[str, Any]:
        """The manifest's ``{"sha256", "size"}`` object."""
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``: its fields as read, and the file digests it lists."""

    path: Path
    fields: Mapping[str, Any]
    files: Mapping[str, FileDigest]

    @property
    def legacy(self) -> bool:
        """A manifest from before signing: only ``sha256``/``size`` of ``model.tflite``."""
        return "format" not in self.fields and SIGNATURE_FIELD not in self.fields

    @property
    def signed(self) -> bool:
        """Whether the manifest carries a signature (verified or not)."""
        return SIGNATURE_FIELD in self.fields

    @property
    def key_id(self) -> str:
        """The signing key's id ("" when unsigned)."""
        return self.fields.get("key_id", "") if self.signed else ""

    @classmethod
    def parse(cls, data: bytes, path: Path) -> Manifest:
        """Parse and validate the manifest ``data`` read from ``path``.

        Raises ``ManifestError`` (``manifest_invalid``) naming the field for invalid JSON,
        a key given twice, a field of the wrong type, an unknown format, a file entry that
        is not a plain name in the version directory (or ``../config.toml``), or a
        ``sha256``/``size`` that differs from ``files``' ``model.tflite``.
        """
        def bad(problem: str) -> ManifestError:
            return ManifestError("manifest_invalid", f"{path}: {problem}; {RESTORE}")

        try:
            fields = json.loads(data, object_pairs_hook=_unique_keys)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise bad(f"not valid JSON ({exc})") from None
        if not isinstance(fields, dict):
            raise bad("not a JSON object")
        legacy_digest = _digest(fields, "", bad) if "sha256" in fields else None
        if "format" not in fields and SIGNATURE_FIELD not in fields:
            # A manifest from before signing: its top-level sha256 is all there is to check.
            if "files" in fields:
                raise bad(f"files needs format {MANIFEST_FORMAT!r} (a manifest that lists "
                          "files must say which format it is)")
            if legacy_digest is None:
                raise bad("no sha256 of model.tflite and no files: nothing to check the "
                          "version against")
            return cls(path, fields, {MODEL_FILE: legacy_digest})
        if fields.get("format") != MANIFEST_FORMAT:
            raise bad(f"format {fields.get('format')!r} is not {MANIFEST_FORMAT!r}")
        for name in ("model", "version") + (("key_id",) if SIGNATURE_FIELD in fields else ()):
            if not isinstance(fields.get(name), str) or not fields[name]:
                raise bad(f"{name} must be a non-empty string")
        if SIGNATURE_FIELD in fields and not isinstance(fields[SIGNATURE_FIELD], str):
            raise bad("signature must be a base64 string")
        entries = fields.get("files")
        if not isinstance(entries, dict) or MODEL_FILE not in entries:
            raise bad(f"files must be an object listing {MODEL_FILE}")
        files = {}
        for name, entry in entries.items():
            if not _safe_name(name):
                raise bad(f"files: {name!r} is not a file name in the version directory")
            if not isinstance(entry, dict):
                raise bad(f"files[{name!r}] must be an object with sha256 and size")
            files[name] = _digest(entry, f"files[{name!r}].", bad)
            if files[name].size is None:
                raise bad(f"files[{name!r}].size is missing")
        if legacy_digest and legacy_digest != files[MODEL_FILE]:
            raise bad(f"sha256/size differ from files[{MODEL_FILE!r}]")
        return cls(path, fields, files)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"key {twice[0]!r} given twice")
    return dict(pairs)


def _digest(entry: Mapping[str, Any], prefix: str, bad) -> FileDigest:
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise bad(f"{prefix}sha256 must be 64 lowercase hex digits")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise bad(f"{prefix}size must be a whole number of bytes")
    return FileDigest(sha, size)


def _safe_name(name: str) -> bool:
    """A plain file name inside the version directory, or the model's config."""
    if name == CONFIG_ENTRY:
        return True
    return (bool(name) and name not in (".", "..", MANIFEST_FILE)
            and "/" not in name and "\\" not in name and "\0" not in name)


def read_manifest(version_dir: Path) -> Manifest | None:
    """The version's parsed ``manifest.json``; None when there is none.

    Raises ``ManifestError`` (``manifest_invalid``) when it cannot be parsed.
    """
    path = version_dir / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError("manifest_invalid", f"{path}: cannot read: {exc}") from None
    return Manifest.parse(data, path)


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """How a manifest is written to ``manifest.json``: indented for people (whitespace is
    not signed), keys sorted, ending with a newline."""
    return json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
