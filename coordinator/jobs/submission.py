"""Assemble a streamed Submit: one header, then batches of items, checked as they come.

The Jobs API receives a job as a stream (a header message, then item batches of a few
MiB each). ``Submission`` takes the decoded messages in order and checks the stream's
shape; ``finish`` checks the whole and returns the job's request and its items. Every
refusal is ``InvalidJobError`` or ``JobInputError`` naming the message and field, so the
caller is told exactly what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from coordinator.errors import InvalidJobError, JobInputError
from coordinator.jobs.items import ItemSource


@dataclass(frozen=True)
class JobRequest:
    """A job's header: model (and optional version), shard size (0: the default),
    the item count the client announced (0: unknown), params, an optional
    caller-chosen ``job_id`` that makes a retried Submit idempotent, and the outputs each
    result keeps (empty: label and confidence of a classifier, every output otherwise)."""

    model: str
    model_version: str = ""
    shard_size: int = 0
    total_items: int = 0
    job_id: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()


MAX_ITEM_ID_CHARS = 256  # an item id is a key in results files and FetchResults records
MAX_PARAMS = 64  # a job's params go to every shard's request: keep them small
MAX_PARAM_KEY_CHARS = 128
MAX_PARAM_VALUE_CHARS = 4096


class Submission:
    """The messages of one Submit stream, in order. Not thread-safe (one stream)."""

    def __init__(self) -> None:
        self.request: JobRequest | None = None
        self._ids: list[str] = []
        self._arrays: list[np.ndarray] = []

    def add_header(self, index: int, request: JobRequest) -> None:
        """Message ``index`` is the header; there must be exactly one, first, with at most
        ``MAX_PARAMS`` params of bounded size."""
        if self.request is not None:
            raise InvalidJobError(f"message {index}: a second header; send exactly one")
        if len(request.params) > MAX_PARAMS:
            raise InvalidJobError(f"params: at most {MAX_PARAMS} entries, got "
                                  f"{len(request.params)}")
        for key, value in request.params.items():
            if not 0 < len(key) <= MAX_PARAM_KEY_CHARS or len(value) > MAX_PARAM_VALUE_CHARS:
                raise InvalidJobError(f"params: key {key[:40]!r}: keys are 1.."
                                      f"{MAX_PARAM_KEY_CHARS} characters, values at most "
                                      f"{MAX_PARAM_VALUE_CHARS}")
        self.request = request

    def add_items(self, index: int, ids: Sequence[str], array: np.ndarray) -> None:
        """Message ``index`` holds ``array`` [n, ...item shape] with ``ids`` (n of them, or
        none for the running index)."""
        if self.request is None:
            raise InvalidJobError("message 0: the first message must be the header")
        if array.ndim < 2:
            raise JobInputError(f"items[{index}].shape: need [n, ...item shape], "
                                f"got {list(array.shape)}")
        if ids and len(ids) != len(array):
            raise JobInputError(f"items[{index}].ids: {len(ids)} ids for {len(array)} items")
        for k, item_id in enumerate(ids):
            if not 0 < len(item_id) <= MAX_ITEM_ID_CHARS:
                raise JobInputError(f"items[{index}].ids[{k}]: an item id is 1.."
                                    f"{MAX_ITEM_ID_CHARS} characters, got {len(item_id)}")
        start = len(self._ids)
        self._ids.extend(ids or [str(start + k) for k in range(len(array))])
        self._arrays.append(array)

    @staticmethod
    def refuse_empty(index: int) -> None:
        """Message ``index`` carried neither a header nor items."""
        raise InvalidJobError(f"message {index}: empty; set header or items")

    def header(self) -> JobRequest:
        """The header; ``InvalidJobError`` if the stream had none."""
        if self.request is None:
            raise InvalidJobError("header: missing; the first message must be the header")
        return self.request

    def finish(self) -> tuple[JobRequest, ItemSource]:
        """The header and every item, validated (ids unique, one dtype and item shape,
        as many items as announced)."""
        request = self.header()
        if not self._arrays:
            raise JobInputError("items: the job has no items")
        shapes = {(a.dtype.str, a.shape[1:]) for a in self._arrays}
        if len(shapes) > 1:
            raise JobInputError(f"items: every batch must share dtype and item shape, got "
                                f"{sorted((d, list(s)) for d, s in shapes)}")
        received = sum(len(a) for a in self._arrays)
        if request.total_items and request.total_items != received:
            raise JobInputError(f"total_items: header said {request.total_items}, "
                                f"received {received} (stream cut short?)")
        # not joined into one array: each shard is copied once, when it is stored
        return request, ItemSource.from_parts(self._ids, self._arrays, path="items")
