"""The main job on the embedded default: a local edge node classifies the shipped hold-out set.

Starts ``edge-node`` on the shipped model repository (loopback, free port), sends the
hold-out images as batched Open Inference Protocol requests from a few client threads,
and reports accuracy per model next to the model card's figure, plus latency and
throughput.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import edgeshard_models
from coordinator.clients import OIPClient
from coordinator.launcher import start_node


@dataclass
class ModelRun:
    model: str
    items: int
    correct: int
    card_accuracy: float | None
    latencies_ms: list[float]
    seconds: float
    model_version: str

    @property
    def accuracy(self) -> float:
        return self.correct / self.items

    def lines(self) -> list[str]:
        lat = np.asarray(self.latencies_ms)
        card = "" if self.card_accuracy is None else f" (model card {self.card_accuracy:.4f})"
        return [
            f"model {self.model} version {self.model_version}",
            f"  items      {self.items}",
            f"  accuracy   {self.accuracy:.4f} = {self.correct}/{self.items}{card}",
            f"  latency    p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms"
            f" per request of <= {self.items // max(1, len(lat)) or 1} items",
            f"  throughput {self.items / self.seconds:,.0f} items/s",
        ]


def classify_all(client: OIPClient, model: str, images: np.ndarray, labels: np.ndarray,
                 batch_size: int, concurrency: int) -> ModelRun:
    batches = [slice(i, i + batch_size) for i in range(0, len(images), batch_size)]
    predictions = np.empty(len(images), dtype=np.int64)
    latencies: list[float] = []
    versions: set[str] = set()

    def one(sl: slice) -> None:
        t0 = time.perf_counter()
        result = client.classify(model, images[sl], timeout=30.0)
        latencies.append((time.perf_counter() - t0) * 1000)
        predictions[sl] = result.label
        versions.add(result.model_version)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, batches))
    seconds = time.perf_counter() - t0
    card = edgeshard_models.model_card().get(model, {})
    card_acc = card.get("holdout_accuracy_int8", card.get("holdout_accuracy"))
    return ModelRun(model, len(images), int((predictions == labels).sum()), card_acc,
                    latencies, seconds, ",".join(sorted(versions)))


def run(batch_size: int = 32, concurrency: int = 4, models: tuple[str, ...] = (
        edgeshard_models.EDGE_MODEL, edgeshard_models.CLOUD_MODEL),
        workdir: Path | None = None, out=print) -> list[ModelRun]:
    images, labels = edgeshard_models.load_holdout()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgeshard-demo-"))
    out(f"starting an edge node on {edgeshard_models.repository_path()} ...")
    node = start_node("node-1", edgeshard_models.repository_path(), workdir)
    client = OIPClient(node.address)
    try:
        out(f"node-1 serving on {node.address}; classifying {len(images)} hold-out images")
        runs = [classify_all(client, m, images, labels, batch_size, concurrency) for m in models]
        for r in runs:
            for line in r.lines():
                out(line)
        return runs
    finally:
        client.close()
        code = node.stop()
        out(f"node-1 drained and exited with code {code}")
