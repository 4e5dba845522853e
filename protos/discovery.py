"""The mDNS/DNS-SD advert of an edge node: service type, instance names and TXT format.

Edge nodes announce ``<instance>._edgeshard._tcp.local.``; the SRV record
carries the gRPC port, the A/AAAA records the addresses, and the TXT record
the node's identity and what it serves:

======== ============================================ =====================
key      value                                        example
======== ============================================ =====================
``id``   node id (UTF-8, the fleet's name for it)     ``id=jetson-07``
``port`` gRPC port (also in SRV; SRV wins)            ``port=50051``
``models`` ``name:v1,v2;name:v1``, names sorted       ``models=mnist_cloud:1;mnist_edge:1,2``
``cap``  capacity: concurrent requests it accepts     ``cap=4``
``v``    advert format version                        ``v=1``
``more`` ``1`` when ``models`` was cut to fit         ``more=1``
======== ============================================ =====================

A TXT string (``key=value``) is at most 255 bytes on the wire. When the model
list does not fit, whole ``name:versions`` entries are kept in name order,
entries that would overflow are skipped, and ``more=1`` is set: the
advert is then a hint, and the coordinator asks the node over gRPC for the
full repository index. Decoding ignores keys it does not know (newer nodes
may add some) and raises ``ValueError`` naming the key when a known one is
malformed.

This module is pure (no sockets, no zeroconf); ``edgeshard.mdns`` maps the
``--mdns-interface`` option onto zeroconf's interface argument.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SERVICE_TYPE = "_edgeshard._tcp.local."
ADVERT_VERSION = "1"
"""The TXT format written by ``encode_txt`` (the ``v`` key)."""

MAX_TXT_STRING = 254
"""Bytes per ``key=value`` string; the wire limit is 255 (one length byte), kept one under."""

MAX_LABEL = 63
"""Bytes in one DNS label (RFC 1035), for instance and host names."""

_FORBIDDEN_IN_NAMES = frozenset(":;,=")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


@dataclass(frozen=True)
class NodeAdvert:
    """What an edge node announces about itself over mDNS."""

    node_id: str
    """The node's name in the fleet; the coordinator keys nodes by it."""
    port: int
    """gRPC port of the node's Open Inference Protocol server."""
    models: dict[str, list[str]]
    """Model name -> versions served (possibly incomplete: see ``truncated``)."""
    capacity: int
    """Concurrent requests the node accepts (its worker count)."""
    addresses: tuple[str, ...] = ()
    """IP addresses the node is reachable on (filled from A/AAAA when decoded)."""
    version: str = ""
    """Advert format version as received (``v``); empty when encoding means ``ADVERT_VERSION``."""
    truncated: bool = False
    """True when ``models`` lists only part of the node's models (TXT ``more=1``)."""

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id must not be empty")
        if len(f"id={self.node_id}".encode()) > MAX_TXT_STRING:
            raise ValueError(f"node_id is longer than {MAX_TXT_STRING - 3} bytes")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {self.capacity}")
        for name, versions in self.models.items():
            for text in (name, *versions):
                if not text or _FORBIDDEN_IN_NAMES & set(text):
                    raise ValueError(
                        f"model {name!r}: names and versions must be non-empty "
                        f"and free of {''.join(sorted(_FORBIDDEN_IN_NAMES))!r}"
                    )


def encode_txt(advert: NodeAdvert) -> dict[str, str]:
    """The TXT properties for ``advert``; ``more=1`` is added when models were cut."""
    entries = [f"{name}:{','.join(versions)}" for name, versions in sorted(advert.models.items())]
    room = MAX_TXT_STRING - len(b"models=")
    kept: list[str] = []
    used = 0
    for entry in entries:
        cost = len(entry.encode()) + (1 if kept else 0)  # the ';' separator
        if used + cost <= room:
            kept.append(entry)
            used += cost
    txt = {
        "id": advert.node_id,
        "port": str(advert.port),
        "models": ";".join(kept),
        "cap": str(advert.capacity),
        "v": advert.version or ADVERT_VERSION,
    }
    if advert.truncated or len(kept) < len(entries):
        txt["more"] = "1"
    return txt


def decode_txt(
    properties: Mapping[bytes | str, bytes | str | None],
    addresses: Iterable[str] = (),
    port: int | None = None,
) -> NodeAdvert:
    """Parse TXT ``properties`` (as zeroconf gives them) into a ``NodeAdvert``.

    ``port`` is the SRV port, which wins over the TXT ``port`` (it is what
    DNS-SD clients connect to); the TXT one is still validated. Raises
    ``ValueError`` whose message starts with the offending key.
    """
    txt: dict[str, str | None] = {}
    for raw_key, raw_value in properties.items():
        key = _text("<key>", raw_key).lower()  # DNS-SD keys are case-insensitive
        txt[key] = None if raw_value is None else _text(key, raw_value)

    node_id = _required(txt, "id")
    txt_port = _integer(txt, "port", 1, 65535) if "port" in txt else None
    if port is None:
        if txt_port is None:
            raise ValueError("port: missing (no SRV port given either)")
        port = txt_port
    capacity = _integer(txt, "cap", 0, None)
    models = _parse_models(_required(txt, "models", allow_empty=True))
    version = txt.get("v") or ""
    if version and not version.isdigit():
        raise ValueError(f"v: expected a decimal version, got {version!r}")
    more = txt.get("more", "0")
    if more not in ("0", "1"):
        raise ValueError(f"more: expected 0 or 1, got {more!r}")
    try:
        return NodeAdvert(
            node_id=node_id, port=port, models=models, capacity=capacity,
            addresses=tuple(addresses), version=version, truncated=more == "1",
        )
    except ValueError as exc:  # e.g. an SRV port of 0
        raise ValueError(f"advert: {exc}") from exc


def instance_label(node_id: str) -> str:
    """A DNS label for ``node_id``: ``[A-Za-z0-9-]``, at most 63 bytes, never empty.

    Lossy mappings (``node.a`` and ``node_a`` both clean to ``node-a``) get a
    short hash of the original appended, so two distinct node ids do not
    collide on one name (a collision makes the second registration fail).
    """
    clean = _LABEL_UNSAFE.sub("-", node_id).strip("-")
    if clean == node_id and len(clean) <= MAX_LABEL:
        return clean
    digest = hashlib.sha1(node_id.encode()).hexdigest()[:6]
    stem = clean[: MAX_LABEL - len(digest) - 1].rstrip("-")
    return f"{stem}-{digest}" if stem else f"node-{digest}"


def instance_name(node_id: str) -> str:
    """The DNS-SD service instance name of ``node_id``: ``<label>._edgeshard._tcp.local.``."""
    return f"{instance_label(node_id)}.{SERVICE_TYPE}"


def host_name(node_id: str) -> str:
    """The mDNS host name (SRV target) of ``node_id``: ``<label>.local.``."""
    return f"{instance_label(node_id)}.local."


def _text(key: str, value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{key}: not valid UTF-8") from exc


def _required(txt: Mapping[str, str | None], key: str, allow_empty: bool = False) -> str:
    if key not in txt:
        raise ValueError(f"{key}: missing")
    value = txt[key]
    if value is None or (not value and not allow_empty):
        raise ValueError(f"{key}: empty")
    return value


def _integer(txt: Mapping[str, str | None], key: str, low: int, high: int | None) -> int:
    value = _required(txt, key)
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{key}: expected a decimal integer, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(f"{key}: {number} is out of range")
    return number


def _parse_models(text: str) -> dict[str, list[str]]:
    models: dict[str, list[str]] = {}
    if not text:
        return models
    for entry in text.split(";"):
        name, sep, versions = entry.partition(":")
        if not name or not sep or name in models:
            raise ValueError(f"models: bad entry {entry!r} (want name:v1,v2, names unique)")
        listed = versions.split(",") if versions else []
        if any(not v for v in listed):
            raise ValueError(f"models: empty version in {entry!r}")
        models[name] = listed
    return models
