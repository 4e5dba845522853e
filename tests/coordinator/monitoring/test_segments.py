"""The ``segment`` request parameter: what is a valid name, and bounded metric labels."""

from __future__ import annotations

import threading

import pytest

from coordinator.monitoring.segments import (
    MAX_SEGMENT_CHARS,
    OTHER,
    SegmentError,
    SegmentLabels,
    check_segment,
)


def test_valid_segments_pass_through_and_none_is_the_default_segment():
    assert check_segment(None) == ""
    assert check_segment("") == ""
    assert check_segment("camera-07") == "camera-07"
    assert check_segment("x" * MAX_SEGMENT_CHARS) == "x" * MAX_SEGMENT_CHARS


@pytest.mark.parametrize("value, why", [
    (7, "must be a string_param, got int"),
    (True, "must be a string_param, got bool"),
    ("x" * (MAX_SEGMENT_CHARS + 1), "65 characters"),
    ("camera 7", "has a space"),
    ("caméra", "not printable ASCII"),
    ("a\nb", "not printable ASCII"),
])
def test_bad_segments_name_the_parameter_and_the_rule(value, why):
    with pytest.raises(SegmentError, match=r"^parameters\.segment: ") as err:
        check_segment(value)
    assert why in str(err.value)


def test_labels_keep_the_first_segments_per_model_and_fold_the_rest():
    labels = SegmentLabels(limit=2)
    assert [labels.label("m", s) for s in ("a", "b", "c", "a", "d", "b")] == \
        ["a", "b", OTHER, "a", OTHER, "b"]
    assert labels.label("other-model", "c") == "c"  # the limit is per model
    with pytest.raises(ValueError, match="^limit"):
        SegmentLabels(limit=0)


def test_labels_are_thread_safe():
    labels = SegmentLabels(limit=10)
    out: list[str] = []

    def worker(k: int) -> None:
        out.extend(labels.label("m", f"s{(k * 7 + i) % 30}") for i in range(200))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = {s for s in out if s != OTHER}
    assert len(kept) == 10
