"""The Examples service over a real gRPC server and job store (SQLite and PostgreSQL):
batches, resumption after a seq, a change of item shape, and NOT_FOUND that says why."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest

from coordinator.api.examples_client import ExamplesClient
from coordinator.api.examples_servicer import ExamplesServicer
from coordinator.cascade.audit import Comparison
from coordinator.jobs.examples import ExampleBook
from coordinator.jobs.store import JobStore
from protos import examples_pb2_grpc


def comparison(n, shape=(2, 2), start=0, model="m"):
    items = np.arange(n * int(np.prod(shape)), dtype=np.uint8).reshape(n, *shape)
    return Comparison(model, "1", "", "audit", [f"x{start + k}" for k in range(n)], items,
                      np.zeros(n, np.int64), np.ones(n, np.float32), np.arange(n) % 10,
                      np.full(n, 0.9, np.float32))


@pytest.fixture
def served(store_location):
    store = JobStore(store_location)
    book = ExampleBook(store.database)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    examples_pb2_grpc.add_ExamplesServicer_to_server(
        ExamplesServicer(book, lambda: {"m", "served"}), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = ExamplesClient(f"127.0.0.1:{port}")
    client.port = port
    yield book, client
    client.close()
    server.stop(0)
    store.close()


def test_examples_stream_in_batches_split_where_the_item_shape_changes(served):
    book, client = served
    book.add([comparison(5), comparison(2, shape=(3,), start=5)])
    batches = list(client.examples("m", batch_size=2))
    assert [list(b.id) for b in batches] == [["x0", "x1"], ["x2", "x3"], ["x4"], ["x5"],
                                             ["x6"]]
    assert {b.total for b in batches} == {7}
    assert [list(b.shape) for b in batches] == [[2, 2]] * 3 + [[3]] * 2
    assert list(batches[0].cloud_label) == [0, 1] and batches[0].datatype == "UINT8"


@pytest.mark.parametrize("model,text", [
    ("nope", "MODEL: unknown model 'nope'"),
    ("served", "MODEL: no hard examples of served are stored yet")])
def test_nothing_to_export_is_not_found_and_says_why(served, model, text):
    book, client = served
    book.add([comparison(1)])
    with pytest.raises(grpc.RpcError) as err:
        list(client.examples(model))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert text in err.value.details() and "m (1)" in err.value.details()


def test_large_items_are_split_to_stay_small_messages(served, monkeypatch):
    from coordinator.api import examples_servicer

    monkeypatch.setattr(examples_servicer, "BATCH_BYTES", 10)  # 4-byte items: 2 a message
    book, client = served
    book.add([comparison(5)])
    assert [len(b.id) for b in client.examples("m")] == [2, 2, 1]


def test_a_coordinator_that_is_away_is_skipped_for_the_next(served):
    import socket

    book, client = served
    book.add([comparison(3)])
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        away = s.getsockname()[1]
    both = ExamplesClient([f"127.0.0.1:{away}", f"127.0.0.1:{client.port}"], reconnect_s=0.5)
    try:
        assert [i for b in both.examples("m") for i in b.id] == ["x0", "x1", "x2"]
        assert both.address.endswith(f":{client.port}")
    finally:
        both.close()
