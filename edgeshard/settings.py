"""Configuration loading for any frozen-dataclass config: flags > EDGESHARD_* env > TOML file.

Every field ``name`` of the dataclass has a flag ``--name-with-dashes``, an environment
variable ``EDGESHARD_NAME`` and a key ``name`` in the config file (top level or under the
process's section, e.g. ``[edge_node]``). List fields take repeated flags, a
comma-separated environment value, or a TOML array. Errors name the field and the
source so the fix is obvious.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_PREFIX = "EDGESHARD_"


class SettingsError(ValueError):
    """A configuration value is invalid; the message starts with the field name."""


def check(ok: bool, name: str, message: str) -> None:
    """Raise ``SettingsError`` (``name: message``) unless ``ok``."""
    if not ok:
        raise SettingsError(f"{name}: {message}")


def check_port(name: str, value: int) -> None:
    """Raise ``SettingsError`` unless ``value`` is a port number in 0..65535."""
    check(0 <= value <= 65535, name, f"must be a port in 0..65535, got {value}")


def address_list(name: str, value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``value`` as a tuple of ``HOST:PORT`` addresses, in order.

    ``value`` is one address, a comma-separated list, or a sequence of either (repeated
    flags, a TOML array); blank entries are dropped, but not every entry. Raises
    ``SettingsError`` naming ``name`` and the entry that is not ``HOST:PORT`` (a URL
    scheme included) or that is given twice, or saying that none was given.
    """
    if value is None or (not isinstance(value, str) and not value):
        return ()  # none configured
    out: list[str] = []
    for part in [value] if isinstance(value, str) else value:
        if not isinstance(part, str):
            raise SettingsError(f"{name}: {part!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
        for entry in (e.strip() for e in part.split(",")):
            if not entry:
                continue
            check("://" not in entry, name,
                  f"{entry!r}: give HOST:PORT without a scheme (e.g. 127.0.0.1:8000)")
            host, _, port = entry.rpartition(":")
            check(bool(host) and port.isdigit() and int(port) <= 65535, name,
                  f"{entry!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
            check(entry not in out, name, f"{entry!r} is given twice")
            out.append(entry)
    check(bool(out), name, f"no address in {value!r}; give HOST:PORT (e.g. 127.0.0.1:8000)")
    return tuple(out)


def _kind(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _coerce_one(kind: str, raw: Any) -> Any:
    if "bool" in kind:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if "Path" in kind:
        return Path(str(raw))
    if "int" in kind:
        if isinstance(raw, bool):
            raise ValueError("boolean given")
        return int(raw)
    if "float" in kind:
        return float(raw)
    return str(raw)


def coerce(f: dataclasses.Field, raw: Any, source: str) -> Any:
    """Convert a flag/env string or TOML value to the field's type, naming the source on error."""
    kind = _kind(f)
    try:
        if raw is None:
            return None
        if "tuple" in kind or "list" in kind:
            items = raw if isinstance(raw, list | tuple) else [
                part for part in str(raw).split(",") if part.strip()
            ]
            inner = kind.split("[", 1)[1] if "[" in kind else "str"
            return tuple(_coerce_one(inner, item.strip() if isinstance(item, str) else item)
                         for item in items)
        return _coerce_one(kind, raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{f.name}: invalid value {raw!r} from {source} ({exc})") from None


def load_file(cls: type, path: Path, section: str) -> dict[str, Any]:
    """Read a TOML config file; keys at top level or under ``[section]``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config: {path} is not valid TOML: {exc}") from None
    values = data.get(section, data)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in values if k not in known and k != section)
    if unknown:
        raise SettingsError(
            f"config: unknown key(s) {', '.join(unknown)} in {path}; "
            f"known: {', '.join(sorted(known))}"
        )
    return dict(values)


def build(cls: type, flags: Mapping[str, Any], env: Mapping[str, str],
          config_file: Path | None = None, section: str = "") -> Any:
    """Instantiate ``cls`` merging flags > environment > file > the dataclass defaults."""
    values: dict[str, Any] = {}
    file_values = load_file(cls, config_file, section) if config_file else {}
    for f in dataclasses.fields(cls):
        env_name = ENV_PREFIX + f.name.upper()
        flag = flags.get(f.name)
        if flag is not None and flag != []:
            values[f.name] = coerce(f, flag, f"--{f.name.replace('_', '-')}")
        elif env.get(env_name) not in (None, ""):
            values[f.name] = coerce(f, env[env_name], env_name)
        elif f.name in file_values:
            values[f.name] = coerce(f, file_values[f.name], str(config_file))
    return cls(**values)


def _metavar(f: dataclasses.Field) -> str:
    """What a flag's value is, for ``--help``: ``metadata["metavar"]``, else its unit or
    kind (``SECONDS``, ``BYTES``, ``PORT``, ``N``...), else the field's last word."""
    if "metavar" in f.metadata:
        return f.metadata["metavar"]
    kind, name = _kind(f), f.name
    for suffix, metavar in (("_per_s", "PER_SECOND"), ("_ms", "MS"), ("_s", "SECONDS"),
                            ("_seconds", "SECONDS"), ("_bytes", "BYTES"), ("port", "PORT")):
        if name.endswith(suffix):
            return metavar
    named = {"node": "HOST:PORT", "cloud": "HOST:PORT", "coordinator": "HOST:PORT",
             "advertise_address": "HOST", "cascade": "EDGE_MODEL=CLOUD_MODEL",
             "escalation": "MODEL=POLICY:THRESHOLD"}
    if name in named:
        return named[name]
    if "Path" in kind:
        return "PATH"
    if "int" in kind and "tuple" not in kind:
        return "N"
    if "float" in kind:
        return "NUMBER"
    return name.split("_")[-1].upper()


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, with its help text and environment variable."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        kind = _kind(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in (None, (), "") else f" (default {default})"
        text = f"{f.metadata.get('help', '')}{shown}; env {env}"
        if "bool" in kind:
            parser.add_argument(flag, dest=f.name, action="store_const", const=True,
                                default=None, help=text)
        elif "tuple" in kind or "list" in kind:
            parser.add_argument(flag, dest=f.name, action="append", default=None,
                                metavar=_metavar(f), help=text + " (repeatable)")
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=_metavar(f),
                                help=text)


def config_file_from(args_value: Path | None, env: Mapping[str, str]) -> Path | None:
    """``--config`` or, failing that, ``EDGESHARD_CONFIG``."""
    if args_value:
        return Path(args_value)
    value = env.get(ENV_PREFIX + "CONFIG")
    return Path(value) if value else None
