"""``edge-coordinator signing-key`` and ``sign-model``: Ed25519 keys and signed manifests.

``signing-key --out DIR`` writes a key pair, ``NAME.key`` (PKCS#8 PEM, 0600; encrypted
with a passphrase when one is given) and ``NAME.pub`` (the public key the nodes trust).
``sign-model --key NAME.key REPO/MODEL/VERSION ...`` writes each version's
``manifest.json`` in the format of ``edgeshard.manifest``: sha256 and size of every file
the node reads for the version, model, version and key id, signed. Bad input gets one
line naming the option and the fix, exit code 2; a file that cannot be written, 1.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from edgeshard.certs import write_file
from edgeshard.keys import KeyFileError, key_id, load_private_key, new_key_pair
from edgeshard.manifest import CONFIG_ENTRY, MANIFEST_FILE, MODEL_FILE, manifest_text
from edgeshard.signing import sign_version

PASSPHRASE_ENV = "EDGESHARD_KEY_PASSPHRASE"
DEFAULT_NAME = "model-signing"
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

SIGNING_KEY_HELP = (
    "make an Ed25519 key pair for signing models",
    "Write an Ed25519 key pair into --out: NAME.key, the private key that sign-model "
    "uses (PKCS#8 PEM, 0600; keep it on the signing machine) and NAME.pub, the public key "
    "that nodes trust with --trust-key. Prints the key id. Existing files are kept unless "
    "--force.")
SIGN_MODEL_HELP = (
    "sign model versions (write their manifest.json)",
    "Write REPO/MODEL/VERSION/manifest.json for each version directory given: the sha256 "
    "and size of model.tflite, of calibration.json when there is one, and of the model's "
    "config.toml, with the model name, the version and the key id, signed with --key "
    "(Ed25519). Other fields of an existing manifest are kept. Sign where the files are "
    "made (the build machine) and after changing any of them (calibrate --write "
    "included), never to silence a node's refusal: that signs whatever is there now. "
    "Nodes started with --require-signed --trust-key NAME.pub serve only versions that "
    "verify.")


def add_parsers(sub) -> None:
    """Add the ``signing-key`` and ``sign-model`` subcommands to ``sub``."""
    passphrase = (f"file whose first line is the key's passphrase (env {PASSPHRASE_ENV} "
                  "holds the passphrase itself)")
    short, description = SIGNING_KEY_HELP
    keygen = sub.add_parser("signing-key", help=short, description=description)
    keygen.add_argument("--out", required=True, type=Path, help="directory for the files")
    keygen.add_argument("--name", default=DEFAULT_NAME,
                        help=f"file name stem: NAME.key and NAME.pub ({DEFAULT_NAME})")
    keygen.add_argument("--passphrase-file", type=Path, metavar="FILE",
                        help="encrypt the private key with the passphrase in FILE's first "
                        f"line (or env {PASSPHRASE_ENV})")
    keygen.add_argument("--force", action="store_true", help="replace files that exist")

    short, description = SIGN_MODEL_HELP
    sign = sub.add_parser("sign-model", help=short, description=description)
    sign.add_argument("version_dir", nargs="+", type=Path, metavar="VERSION_DIR",
                      help="a version directory, REPO/MODEL/VERSION (e.g. "
                      "models/repository/mnist_edge/1)")
    sign.add_argument("--key", required=True, type=Path, metavar="PRIVATE_KEY",
                      help="Ed25519 private key (PEM, or raw/base64), e.g. from signing-key")
    sign.add_argument("--passphrase-file", type=Path, metavar="FILE", help=passphrase)


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"edge-coordinator {command}: {message}", file=sys.stderr)
    return code


def passphrase(args, env) -> bytes | None:
    """The passphrase: ``--passphrase-file``'s first line, else ``EDGESHARD_KEY_PASSPHRASE``,
    else None. Raises ``KeyFileError`` for a file that cannot be read or is empty."""
    if args.passphrase_file:
        path = args.passphrase_file
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise KeyFileError(f"--passphrase-file: cannot read {path} "
                               f"({exc.strerror or exc})") from None
        if not lines or not lines[0]:
            raise KeyFileError(f"--passphrase-file: {path} is empty; put the passphrase "
                               "on its first line")
        return lines[0]
    value = env.get(PASSPHRASE_ENV, "")
    return value.encode() if value else None


def generate(args) -> int:
    """Run ``edge-coordinator signing-key``; 0 on success, 2 for bad arguments or files
    that exist (without ``--force``), 1 when the files cannot be written."""
    command = "signing-key"
    if not KEY_NAME.fullmatch(args.name):
        return _fail(command, f"--name: {args.name!r} is not a plain file name (letters, "
                     "digits, '.', '_', '-')")
    if args.out.exists() and not args.out.is_dir():
        return _fail(command, f"--out: {args.out} is a file; give a directory")
    try:
        secret = passphrase(args, os.environ)
    except KeyFileError as exc:
        return _fail(command, str(exc))
    private, public = args.out / f"{args.name}.key", args.out / f"{args.name}.pub"
    taken = [str(p) for p in (private, public) if p.exists()]
    if taken and not args.force:
        return _fail(command, f"{' and '.join(taken)} exist; --force replaces them (nodes "
                     "that trust the old key then refuse versions signed with the new one "
                     "until they trust it too)")
    key, private_pem, public_pem = new_key_pair(secret)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_file(private, private_pem, 0o600)
        write_file(public, public_pem, 0o644)
    except OSError as exc:
        return _fail(command, f"cannot write into {args.out}: {exc}", 1)
    kid = key_id(key.public_key())
    print(f"wrote an Ed25519 signing key, key id {kid}"
          + (" (private key encrypted)" if secret else "") + ":")
    print(f"  {private}  (private: keep it on the signing machine)")
    print(f"  {public}  (public: give it to the nodes)")
    print("use it:")
    print(f"  edge-coordinator sign-model --key {private} REPO/MODEL/VERSION")
    print(f"  edge-node --model-repository REPO --require-signed --trust-key {public}")
    return 0


def _check_version_dir(path: Path) -> str | None:
    """Why ``path`` is not a version directory one can sign; None when it is."""
    if not path.is_dir():
        return f"{path}: no such directory; give REPO/MODEL/VERSION"
    name = Path(os.path.abspath(path)).name
    if not name.isdigit():
        return (f"{path}: {name!r} is not a version number; give a version directory, "
                f"REPO/MODEL/VERSION (e.g. {path / '1'})")
    if not (path / MODEL_FILE).is_file():
        return f"{path}: no {MODEL_FILE}; a version directory holds the model as {MODEL_FILE}"
    return None


def sign(args) -> int:
    """Run ``edge-coordinator sign-model``; 0 when every version was signed, 2 for bad
    input (nothing is written then), 1 when a manifest cannot be written."""
    command = "sign-model"
    for path in args.version_dir:
        problem = _check_version_dir(path)
        if problem:
            return _fail(command, f"VERSION_DIR: {problem}")
    try:
        key = load_private_key(args.key, "--key", passphrase(args, os.environ))
    except KeyFileError as exc:
        return _fail(command, str(exc))
    manifests = []
    for path in args.version_dir:
        try:
            manifests.append(sign_version(path, key))
        except ValueError as exc:
            return _fail(command, f"{exc}: cannot carry its fields along; fix it, or "
                         "delete it to sign without them")
        except OSError as exc:
            return _fail(command, f"{path}: cannot read ({exc}); check its permissions")
    for path, manifest in zip(args.version_dir, manifests, strict=True):
        target = path / MANIFEST_FILE
        try:
            write_file(target, manifest_text(manifest).encode(), 0o644)
        except OSError as exc:
            return _fail(command, f"cannot write {target}: {exc}", 1)
        files = manifest["files"]
        others = [name.removeprefix("../") for name in files if name != MODEL_FILE]
        print(f"signed {manifest['model']} version {manifest['version']} with key "
              f"{manifest['key_id']}: {MODEL_FILE} sha256 {manifest['sha256'][:12]}… "
              f"({manifest['size']} bytes)" + (f", {', '.join(others)}" if others else "")
              + f" -> {target}")
        if CONFIG_ENTRY not in files:
            print(f"  note: {path.parent / 'config.toml'} does not exist; the node will "
                  "refuse the model without it")
    return 0


def main(args) -> int:
    """Run ``signing-key`` or ``sign-model`` with parsed ``args``; returns the exit code."""
    return generate(args) if args.command == "signing-key" else sign(args)
