"""OipHttpServer's own behaviour, over a scripted front: the status of each error kind,
generic 500s, the in-flight bound, and draining. (The daemons' fronts are tested with
real processes in tests/edge_node/test_http.py and tests/coordinator/api/test_http.py.)"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from edgeshard import errors
from edgeshard.oip_http import OipHttpServer
from protos import codec, oip_pb2

pytestmark = pytest.mark.timeout(60)

BODY = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                               "data": [1.5, 2.5]}]}).encode()


class ScriptedFront:
    """Answers like a servicer; ``model_infer`` does what ``behaviour`` says."""

    def __init__(self):
        self.ready = True
        self.behaviour = "echo"
        self.release = threading.Event()
        self.seen: list[oip_pb2.ModelInferRequest] = []
        self.timeouts: list[float | None] = []

    def server_live(self, request, timeout=None):
        return oip_pb2.ServerLiveResponse(live=True)

    def server_ready(self, request, timeout=None):
        return oip_pb2.ServerReadyResponse(ready=self.ready)

    def model_infer(self, request, timeout=None):
        self.seen.append(request)
        self.timeouts.append(timeout)
        if self.behaviour == "block":
            self.release.wait(10)
        elif self.behaviour == "draining":
            raise errors.UnavailableError("node is not ready (starting or draining)")
        elif self.behaviour == "deadline":
            raise errors.DeadlineExceededError("deadline exceeded after 0.010s")
        elif self.behaviour == "overloaded":
            raise errors.ResourceExhaustedError("queue full")
        elif self.behaviour == "bug":
            raise KeyError("secret internals")
        response = oip_pb2.ModelInferResponse(model_name=request.model_name,
                                              model_version="1")
        codec.encode_outputs(response, codec.decode_inputs(request))
        return response


@pytest.fixture
def served():
    front = ScriptedFront()
    server = OipHttpServer(front, "node", max_body=1 << 20, workers=4, max_in_flight=2)
    port = server.start("127.0.0.1", 0)
    yield front, server, f"http://127.0.0.1:{port}"
    front.release.set()
    server.stop(1).wait(10)


def post(url: str, body: bytes = BODY) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_echo_round_trip_keeps_datatype_and_values(served):
    front, _, url = served
    status, answer = post(f"{url}/v2/models/m/versions/3/infer")
    assert status == 200
    assert answer["outputs"] == [{"name": "x", "datatype": "FP32", "shape": [2],
                                  "data": [1.5, 2.5]}]
    assert front.seen[0].model_name == "m" and front.seen[0].model_version == "3"


@pytest.mark.parametrize("behaviour,status", [
    ("draining", 503), ("deadline", 504), ("overloaded", 429)])
def test_error_kinds_get_the_http_status_triton_uses(served, behaviour, status):
    front, _, url = served
    front.behaviour = behaviour
    got, answer = post(f"{url}/v2/models/m/infer")
    assert got == status and set(answer) == {"error"}


def test_an_unexpected_error_is_a_generic_500(served, caplog):
    front, _, url = served
    front.behaviour = "bug"
    status, answer = post(f"{url}/v2/models/m/infer")
    assert status == 500
    assert answer == {"error": "internal error (see the node's log)"}
    assert "secret internals" in caplog.text  # the traceback stays in the log


def test_not_ready_is_503_on_the_health_route(served):
    front, _, url = served
    front.ready = False
    try:
        urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 503 and json.loads(exc.read()) == {"ready": False}
    else:
        raise AssertionError("ready answered 200 while not ready")


def test_requests_beyond_the_in_flight_bound_get_429(served):
    front, _, url = served
    front.behaviour = "block"
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(post(f"{url}/v2/models/m/infer")[0]))
               for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(front.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    status, answer = post(f"{url}/v2/models/m/infer")
    assert status == 429 and "in flight" in answer["error"]
    front.release.set()
    for t in threads:
        t.join(10)
    assert results == [200, 200]


def test_stop_lets_a_request_in_flight_finish_then_closes_the_port(served):
    front, server, url = served
    front.behaviour = "block"
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(post(f"{url}/v2/models/m/infer")[0]))
    t.start()
    while not front.seen:
        time.sleep(0.01)
    stopped = server.stop(5)
    time.sleep(0.2)
    with pytest.raises(OSError):  # the port no longer takes connections
        urllib.request.urlopen(f"{url}/v2/health/live", timeout=2)
    front.release.set()
    assert stopped.wait(10)
    t.join(10)
    assert results == [200]


def test_tritons_timeout_parameter_is_the_deadline(served):
    front, _, url = served
    body = json.loads(BODY)
    assert post(f"{url}/v2/models/m/infer")[0] == 200
    body["parameters"] = {"timeout": 250_000}
    assert post(f"{url}/v2/models/m/infer", json.dumps(body).encode())[0] == 200
    body["parameters"] = {"timeout": -1}
    status, answer = post(f"{url}/v2/models/m/infer", json.dumps(body).encode())
    assert status == 400 and answer["error"].startswith("parameters.timeout")
    assert front.timeouts == [None, 0.25]
