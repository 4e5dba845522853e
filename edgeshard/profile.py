"""A model version's drift reference profile (``profile.json``): format, parsing, checks.

A version ``<repo>/<model>/<version>/`` may carry ``profile.json``, the statistics of its
calibration data that drift is measured against (made by ``edge-coordinator profile``):

.. code-block:: json

    {
      "format": "edgeshard.profile.v1",
      "items": 500,
      "input": {"dtype": "uint8", "channels": 1, "count": [392000],
                "mean": [33.3], "std": [78.6], "lo": 0, "hi": 256,
                "histogram": [350000, 1200, ...]},
      "confidence": {"lo": 0, "hi": 1, "histogram": [0, 0, ..., 470]},
      "temperature": 1.0,
      "source": "the shipped calibration split (500 MNIST images)"
    }

``input`` describes the input tensor as clients send it (``dtype``: uint8, int8 or
float32; ``channels``: the last axis of an NHWC image, 1 for ``[N,H,W]``), with ``count``,
``mean`` and ``std`` of the values per channel and a histogram of all values over
``[lo, hi)`` in equal bins (``ext.window_stats`` makes both). ``confidence`` (classifiers
only) is the histogram of top-1 confidences at ``temperature``, the softmax temperature
the profile was made at. Nodes keep the same statistics over a rolling window of what
they serve and the coordinator compares the two (``coordinator.monitoring.drift``).

The node reads the file with the version's other files (so a signed manifest covers it,
``edgeshard.manifest.VERSION_FILES``); a malformed file refuses the version with a
``ProfileError`` naming the file and the field, like a malformed ``calibration.json``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edgeshard.errors import EdgeshardError

PROFILE_FORMAT = "edgeshard.profile.v1"
DTYPES = ("uint8", "int8", "float32")
MAX_BINS = 4096  # as ext.window_stats
MAX_CHANNELS = 64


class ProfileError(EdgeshardError):
    """A ``profile.json`` that is not a valid drift reference profile (names file, field)."""


@dataclass(frozen=True)
class Histogram:
    """Counts of values in ``len(counts)`` equal bins over ``[lo, hi)``; values outside
    fall in the end bins."""

    lo: float
    hi: float
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        """The number of values counted."""
        return sum(self.counts)

    def as_json(self) -> dict[str, Any]:
        """The histogram's fields in ``profile.json``."""
        return {"lo": self.lo, "hi": self.hi, "histogram": list(self.counts)}


@dataclass(frozen=True)
class InputStats:
    """Per-channel counts, means and standard deviations of an input, and its histogram."""

    dtype: str
    channels: int
    count: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    histogram: Histogram

    def as_json(self) -> dict[str, Any]:
        """The ``input`` object of ``profile.json``."""
        return {"dtype": self.dtype, "channels": self.channels, "count": list(self.count),
                "mean": list(self.mean), "std": list(self.std),
                **self.histogram.as_json()}


@dataclass(frozen=True)
class DriftProfile:
    """The reference statistics of a model version (see the module docstring)."""

    items: int
    input: InputStats
    confidence: Histogram | None = None
    temperature: float = 1.0
    source: str = ""

    def as_json(self) -> dict[str, Any]:
        """The whole ``profile.json`` object."""
        body: dict[str, Any] = {"format": PROFILE_FORMAT, "items": self.items,
                                "input": self.input.as_json()}
        if self.confidence is not None:
            body["confidence"] = self.confidence.as_json()
        body["temperature"] = self.temperature
        body["source"] = self.source
        return body

    def to_bytes(self) -> bytes:
        """The file's content: indented JSON ending in a newline."""
        text = json.dumps(self.as_json(), indent=1)
        # lists of numbers on one line each: a histogram reads as a row, not 32 lines
        text = re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]",
                      lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
        return (text + "\n").encode()


def parse_profile(content: bytes, where: str) -> DriftProfile:
    """The profile in ``content`` (the bytes of the file ``where``); ``ProfileError``
    naming ``where`` and the field for anything malformed."""

    def bad(field: str, why: str) -> ProfileError:
        return ProfileError(f"{where}: {field}: {why} (remake it with edge-coordinator "
                            "profile)")

    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{where}: not JSON ({exc}); remake it with edge-coordinator "
                           "profile") from None
    if not isinstance(body, dict):
        raise bad("(top level)", f"must be an object, got {type(body).__name__}")
    if body.get("format") != PROFILE_FORMAT:
        raise bad("format", f"must be {PROFILE_FORMAT!r}, got {body.get('format')!r}")
    items = _count(body.get("items"), "items", bad)
    inp = body.get("input")
    if not isinstance(inp, dict):
        raise bad("input", "missing, or not an object")
    dtype = inp.get("dtype")
    if dtype not in DTYPES:
        raise bad("input.dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    channels = inp.get("channels")
    if isinstance(channels, bool) or not isinstance(channels, int) \
            or not 1 <= channels <= MAX_CHANNELS:
        raise bad("input.channels", f"must be an integer in 1..{MAX_CHANNELS}, got {channels!r}")
    per_channel = {}
    for key in ("count", "mean", "std"):
        values = inp.get(key)
        if not isinstance(values, list) or len(values) != channels:
            raise bad(f"input.{key}", f"must be a list of {channels} number(s) (one per "
                      f"channel), got {_short(values)}")
        per_channel[key] = tuple(
            _count(v, f"input.{key}[{i}]", bad) if key == "count"
            else _number(v, f"input.{key}[{i}]", bad) for i, v in enumerate(values))
    if any(s < 0 for s in per_channel["std"]):
        raise bad("input.std", "must be >= 0")
    confidence = None
    if body.get("confidence") is not None:
        if not isinstance(body["confidence"], dict):
            raise bad("confidence", "must be an object")
        confidence = _histogram(body["confidence"], "confidence", bad)
    temperature = _number(body.get("temperature", 1.0), "temperature", bad)
    if temperature <= 0:
        raise bad("temperature", f"must be > 0, got {temperature}")
    source = body.get("source", "")
    if not isinstance(source, str):
        raise bad("source", "must be a string")
    return DriftProfile(
        items, InputStats(dtype, channels, per_channel["count"], per_channel["mean"],
                          per_channel["std"], _histogram(inp, "input", bad)),
        confidence, temperature, source)


def _histogram(table: dict, name: str, bad) -> Histogram:
    lo = _number(table.get("lo"), f"{name}.lo", bad)
    hi = _number(table.get("hi"), f"{name}.hi", bad)
    if not lo < hi:
        raise bad(f"{name}.hi", f"must be above {name}.lo ({lo}), got {hi}")
    counts = table.get("histogram")
    if not isinstance(counts, list) or not 1 <= len(counts) <= MAX_BINS:
        raise bad(f"{name}.histogram", f"must be a list of 1..{MAX_BINS} counts, got "
                  f"{_short(counts)}")
    values = tuple(_count(c, f"{name}.histogram[{i}]", bad) for i, c in enumerate(counts))
    if not sum(values):
        raise bad(f"{name}.histogram", "all counts are 0: a reference needs data")
    return Histogram(lo, hi, values)


def _number(value: object, field: str, bad) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise bad(field, f"must be a finite number, got {_short(value)}")
    return float(value)


def _count(value: object, field: str, bad) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad(field, f"must be an integer >= 0, got {_short(value)}")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
