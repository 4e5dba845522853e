"""Shadow copies: off the caller's path, bounded, dropped (never queued) when full."""

from __future__ import annotations

import threading

import numpy as np

from coordinator.api.canary import Shadow, top1_labels
from protos import codec, oip_pb2


def test_mirrors_beyond_the_bound_are_dropped_and_counted():
    outcomes = []
    shadow = Shadow(2, on_outcome=lambda model, outcome: outcomes.append(outcome))
    release, ran = threading.Event(), []
    try:
        def slow():
            ran.append(1)
            release.wait(5)

        assert shadow.mirror("m", slow) and shadow.mirror("m", slow)
        assert not shadow.mirror("m", slow)  # both slots busy: dropped at once
        assert outcomes == ["dropped"]
        release.set()
        deadline = threading.Event()
        for _ in range(50):  # a slot frees once a mirror ends
            if shadow.mirror("m", lambda: None):
                break
            deadline.wait(0.05)
        else:
            raise AssertionError("no slot freed")
        assert len(ran) == 2
    finally:
        release.set()
        shadow.close()


def test_top1_labels_come_from_label_else_probabilities():
    response = oip_pb2.ModelInferResponse()
    assert top1_labels(response) is None
    probabilities = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    codec.encode_outputs(response, {"probabilities": probabilities})
    assert top1_labels(response).tolist() == [1, 0]
    response = oip_pb2.ModelInferResponse()
    codec.encode_outputs(response, {"label": np.array([4, 5], np.int64),
                                    "probabilities": probabilities})
    assert top1_labels(response).tolist() == [4, 5]
