"""Request segments: the ``segment`` request parameter (e.g. a camera id) and a bounded
set of segment names per model for metric labels.

A segment names where an item came from, so that drift, error and escalation rates can
be watched per camera, site or customer. Clients set it as the string request parameter
``segment`` (KServe v2 ``parameters``); a request without one is in segment ``""``.
Names are at most ``MAX_SEGMENT_CHARS`` printable ASCII characters without spaces.

Metric label values must stay few (Prometheus keeps one series per value), so
``SegmentLabels`` keeps the first ``limit`` segments it sees per model and reports any
further one as ``OTHER``.
"""

from __future__ import annotations

import threading

MAX_SEGMENT_CHARS = 64
OTHER = "_other"
DEFAULT_SEGMENT_LIMIT = 50


class SegmentError(ValueError):
    """A ``segment`` parameter that is not a short printable name."""


def check_segment(value: object) -> str:
    """``value`` as a segment name; ``SegmentError`` (naming the parameter and the fix)
    when it is not a string of at most ``MAX_SEGMENT_CHARS`` printable ASCII characters
    without spaces. ``None`` is the default segment ``""``."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SegmentError(f"parameters.segment: must be a string_param, got "
                           f"{type(value).__name__} {value!r}")
    if len(value) > MAX_SEGMENT_CHARS:
        raise SegmentError(f"parameters.segment: {len(value)} characters; a segment name "
                           f"has at most {MAX_SEGMENT_CHARS}")
    if not all("!" <= c <= "~" for c in value):
        raise SegmentError(f"parameters.segment: {value!r} has a space or a character that "
                           "is not printable ASCII; use a name like 'camera-07'")
    return value


class SegmentLabels:
    """The label value of each segment, per model: the segment itself for the first
    ``limit`` distinct segments seen for that model, ``OTHER`` for later ones. Thread-safe."""

    def __init__(self, limit: int = DEFAULT_SEGMENT_LIMIT):
        if limit < 1:
            raise ValueError(f"limit: must be >= 1, got {limit}")
        self.limit = limit
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def label(self, model: str, segment: str) -> str:
        """The metric label value for ``segment`` of ``model``."""
        with self._lock:
            seen = self._seen.setdefault(model, set())
            if segment in seen:
                return segment
            if len(seen) < self.limit:
                seen.add(segment)
                return segment
            return OTHER
