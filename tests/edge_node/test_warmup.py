"""Warm-up: a full batch is tried once per version, serving interpreters stay at batch 1.

A TFLite interpreter keeps the tensor arena of the largest batch it ran, so warming every
worker's interpreter at ``max_batch_size`` held 12 MB per worker for mnist_cloud at idle.
"""

from __future__ import annotations

import numpy as np

import edgeshard_models
from edge_node.config import NodeConfig
from edge_node.engine import InferenceEngine
from edge_node.repository import ModelRepository
from edge_node.runtime import TFLiteModel

CLOUD = edgeshard_models.CLOUD_MODEL


def test_serving_interpreters_warm_at_one_row_and_a_full_batch_is_tried_once(
        repo_copy, monkeypatch):
    runs: list[tuple[TFLiteModel, int]] = []  # (interpreter, leading dim) per run, in order
    real_run = TFLiteModel.run

    def recording_run(self, tensors):
        runs.append((self, int(tensors[0].shape[0])))
        return real_run(self, tensors)

    monkeypatch.setattr(TFLiteModel, "run", recording_run)
    repository = ModelRepository(repo_copy)
    repository.load()
    engine = InferenceEngine(NodeConfig(model_repository=repo_copy, workers=2), repository)
    engine.start()
    try:
        versions = list(engine.versions.values())
        assert [mv.max_batch_size for mv in versions] == [64, 64]  # mnist_cloud, mnist_edge
        serving = [s[mv.key] for s in engine.batcher._sets for mv in versions]
        assert len(serving) == 4  # 2 workers x 2 versions
        for interp in serving:
            assert [n for i, n in runs if i is interp] == [1]
        # a full batch ran once per version, each on an interpreter of its own
        full = [i for i, n in runs if n == 64]
        assert len(full) == 2 and full[0] is not full[1]
        assert not any(f is i for f in full for i in serving)
        # and a full batch is still served (the interpreter grows on demand)
        out = engine.infer(CLOUD, "", {"image": np.zeros((64, 28, 28), np.uint8)}, timeout=30)
        assert all(a.shape[0] == 64 for a in out.outputs.values())
    finally:
        engine.stop(5)
