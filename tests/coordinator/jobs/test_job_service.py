"""What JobService decides without a transport: shard sizes that fit a message, pages."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from coordinator.errors import InvalidJobError
from coordinator.jobs.service import MAX_PAGE, JobService
from coordinator.jobs.store import JobStore


@pytest.fixture
def service(tmp_path):
    store = JobStore(str(tmp_path / "jobs.db"))
    yield JobService(store, catalog=None, default_shard_size=64, on_submit=lambda: None,
                     stopping=threading.Event(), max_shard_bytes=10_000)
    store.close()


def items(shape, dtype=np.uint8):
    return SimpleNamespace(dtype=np.dtype(dtype), item_shape=shape)


def test_a_shard_is_cut_to_fit_one_message(service):
    assert service._fit_message(64, items((28, 28))) == 12  # 10,000 // 784
    assert service._fit_message(8, items((28, 28))) == 8
    assert service._fit_message(64, items((50, 50), np.float32)) == 1  # 10,000 bytes
    with pytest.raises(InvalidJobError, match="one item is 10004 bytes, more than a shard "
                       "may carry .10000 bytes"):
        service._fit_message(64, items((2501,), np.float32))


def test_pages_of_jobs_and_their_tokens(service):
    for _ in range(3):
        service.store.create_job("m", (None, np.zeros((1, 2), np.uint8)), 1, owner="a")
    first, token = service.list(page_size=2)
    assert len(first) == 2 and token == first[-1].job_id
    rest, token = service.list(page_size=2, page_token=token)
    assert len(rest) == 1 and token == ""
    assert service.list()[1] == ""  # one page holds them all
    assert service.list(scope="b") == ([], "")
    with pytest.raises(InvalidJobError, match="page_size: at most 1000"):
        service.list(page_size=MAX_PAGE + 1)
    with pytest.raises(InvalidJobError, match="page_token: not one this coordinator gave"):
        service.list(page_token="forged")
