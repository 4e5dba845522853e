"""``edgeshard.v1.Examples``: the hard examples of a model, streamed for
``edge-coordinator export-examples``.

Examples come from the job store (``ExampleBook``), so any replica on a shared PostgreSQL
store answers for the whole fleet. The stream sends batches of at most ``batch_size``
examples and about ``BATCH_BYTES`` of item data (a change of item datatype or shape starts
a new one, so each batch is one array), oldest first, after the
request's ``after_seq``: a client whose coordinator went away resumes on another after
the last seq it received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from coordinator.errors import ExamplesNotFoundError, InvalidRequestError
from coordinator.jobs.examples import ExampleBook, HardExample
from edgeshard.rpc import guarded
from protos import codec, examples_pb2, examples_pb2_grpc

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)
DEFAULT_BATCH = 256
MAX_BATCH = 4096
BATCH_BYTES = 2 * 1024 * 1024  # item bytes per message, well within gRPC's message limits


def example_batch(examples: list[HardExample], total: int) -> examples_pb2.ExampleBatch:
    """The message of ``examples`` (one item datatype and shape)."""
    datatype, shape, raw = codec.encode_array(np.stack([e.item for e in examples]))
    return examples_pb2.ExampleBatch(
        total=total, seq=[e.seq for e in examples], id=[e.item_id for e in examples],
        datatype=datatype, shape=shape[1:], items=raw,
        edge_label=[e.edge_label for e in examples],
        edge_confidence=[e.edge_confidence for e in examples],
        cloud_label=[e.cloud_label for e in examples],
        cloud_confidence=[e.cloud_confidence for e in examples],
        source=[e.source for e in examples], segment=[e.segment for e in examples],
        version=[e.version for e in examples])


def _runs(examples: list[HardExample]) -> Iterator[list[HardExample]]:
    """``examples`` split where the item's dtype or shape changes, and where a run's items
    would pass ``BATCH_BYTES``."""
    run: list[HardExample] = []
    size = 0
    for e in examples:
        if run and (e.item.dtype != run[0].item.dtype or e.item.shape != run[0].item.shape
                    or size + e.item.nbytes > BATCH_BYTES):
            yield run
            run, size = [], 0
        run.append(e)
        size += e.item.nbytes
    if run:
        yield run


class ExamplesServicer(examples_pb2_grpc.ExamplesServicer):
    """Export over an ``ExampleBook`` (None: this coordinator has no cascade);
    ``models()`` are the models the coordinator knows (cascaded or served)."""

    def __init__(self, book: ExampleBook | None, models: Callable[[], set[str]]):
        self.book = book
        self.models = models

    @guard
    def Export(self, request, context):
        if not request.model:
            raise InvalidRequestError("MODEL: the model whose examples to export is required")
        if request.batch_size > MAX_BATCH:
            raise InvalidRequestError(f"batch_size: at most {MAX_BATCH}, got "
                                      f"{request.batch_size}")
        counts = self.book.counts() if self.book is not None else {}
        total = counts.get(request.model, 0)
        if not total:
            raise ExamplesNotFoundError(self._none(request.model, counts))
        size = request.batch_size or DEFAULT_BATCH
        after = request.after_seq
        while True:
            page = self.book.page(request.model, after, size)
            if not page:
                return
            for run in _runs(page):
                yield example_batch(run, total)
            after = page[-1].seq

    def _none(self, model: str, counts: dict[str, int]) -> str:
        """Why ``model`` has nothing to export, and what does."""
        having = ", ".join(f"{m} ({n})" for m, n in sorted(counts.items())) or "none"
        if model not in self.models() and model not in counts:
            return (f"MODEL: unknown model {model!r}: no node serves it and it has no cascade "
                    f"rule (models with hard examples: {having})")
        return (f"MODEL: no hard examples of {model} are stored yet: they are its escalated "
                f"items the cloud answered and its audited ones (--audit {model}=RATE) "
                f"(models with hard examples: {having})")
