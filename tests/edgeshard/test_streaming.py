"""edgeshard.streaming.serve_stream on real threads: the requests of one stream run
concurrently (a barrier only passes when several are inside ``infer`` at once), at most
``max_in_flight`` at a time, and every request is answered once."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

from edgeshard.streaming import serve_stream
from protos import oip_pb2

log = logging.getLogger(__name__)


def test_requests_of_one_stream_are_in_flight_together_and_bounded():
    inside = threading.Barrier(4, timeout=20)  # trips only with 4 requests in infer at once
    lock = threading.Lock()
    now, most = [0], [0]

    def infer(request):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            if int(request.id) < 4:
                inside.wait()
            return oip_pb2.ModelInferResponse(id=request.id)
        finally:
            with lock:
                now[0] -= 1

    requests = [oip_pb2.ModelInferRequest(id=str(i)) for i in range(40)]
    with futures.ThreadPoolExecutor(16) as pool:
        answers = list(serve_stream(iter(requests), infer, pool, lambda: True, "test", log,
                                    max_in_flight=6))
    assert sorted(int(a.infer_response.id) for a in answers) == list(range(40))
    assert all(a.error_message == "" for a in answers)  # the barrier did not time out
    assert 4 <= most[0] <= 6
