"""The client side of ``edgeshard.v1.Examples``: a ``CoordinatorClient`` that also exports
a model's hard examples, with the same failover between coordinator replicas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from coordinator.api.control_client import CoordinatorClient, _deadline
from protos import examples_pb2, examples_pb2_grpc, fleet_pb2_grpc


class _Stubs(NamedTuple):
    fleet: fleet_pb2_grpc.FleetStub
    jobs: fleet_pb2_grpc.JobsStub
    rollouts: fleet_pb2_grpc.RolloutsStub
    examples: examples_pb2_grpc.ExamplesStub


class ExamplesClient(CoordinatorClient):
    """``CoordinatorClient`` plus ``examples``; constructed the same way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stubs = [_Stubs(*stubs, examples_pb2_grpc.ExamplesStub(channel))
                       for stubs, channel in zip(self._stubs, self._channels, strict=True)]

    def examples(self, model: str, batch_size: int = 0, timeout: float | None = None
                 ) -> Iterator[examples_pb2.ExampleBatch]:
        """The model's hard examples as ``ExampleBatch`` messages, oldest first; resumed
        after the last one delivered on another coordinator when the one serving them
        goes away (replicas share the store). Raises ``grpc.RpcError`` (NOT_FOUND: an
        unknown model, or one without examples)."""
        last = 0

        def open_call(stubs: _Stubs, left: float | None):
            return stubs.examples.Export(examples_pb2.ExportExamplesRequest(
                model=model, after_seq=last, batch_size=batch_size), timeout=left)

        stream = self._stream(open_call, lambda: False, _deadline(timeout))
        try:
            for batch in stream:
                if batch.seq:
                    last = batch.seq[-1]
                yield batch
        finally:
            stream.close()
