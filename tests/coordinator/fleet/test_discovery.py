"""mDNS discovery: the TXT advert format, and real zeroconf between processes on this host.

Node ids carry a random suffix and every collector ignores other ids, so
adverts from other test runs on the same network do not interfere.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from zeroconf import InterfaceChoice, ServiceInfo, Zeroconf

from coordinator.fleet.discovery import Discovery
from edge_node.advertise import Advertiser
from edgeshard.mdns import interface_choice
from protos.discovery import (
    MAX_TXT_STRING,
    SERVICE_TYPE,
    NodeAdvert,
    decode_txt,
    encode_txt,
    host_name,
    instance_label,
    instance_name,
)

ROOT = Path(__file__).resolve().parents[3]
FOUND_WITHIN = 10.0

ADVERTISE_SCRIPT = """
import signal, sys, time
from protos.discovery import NodeAdvert
from edge_node.advertise import Advertiser

node_id, port = sys.argv[1], int(sys.argv[2])
advertiser = Advertiser(NodeAdvert(node_id, port, {"mnist_edge": ["1", "2"], "mnist_cloud": ["1"]},
                                   capacity=4))

def stop(*_):
    advertiser.close()
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
started = time.monotonic()
ok = advertiser.start()
print("ready" if ok else "failed", round(time.monotonic() - started, 2), flush=True)
while True:
    time.sleep(60)
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Seen:
    """Collects on_found/on_lost calls for a set of node ids; waits on conditions."""

    def __init__(self, node_ids: set[str]) -> None:
        self.node_ids = node_ids
        self.found: list[tuple[float, NodeAdvert]] = []
        self.lost: list[tuple[float, str]] = []
        self._cond = threading.Condition()

    def on_found(self, advert: NodeAdvert) -> None:
        if advert.node_id in self.node_ids:
            with self._cond:
                self.found.append((time.monotonic(), advert))
                self._cond.notify_all()

    def on_lost(self, node_id: str) -> None:
        if node_id in self.node_ids:
            with self._cond:
                self.lost.append((time.monotonic(), node_id))
                self._cond.notify_all()

    def latest(self, node_id: str) -> NodeAdvert | None:
        with self._cond:
            matches = [a for _, a in self.found if a.node_id == node_id]
        return matches[-1] if matches else None

    def found_ids(self) -> set[str]:
        with self._cond:
            return {a.node_id for _, a in self.found}

    def lost_ids(self) -> set[str]:
        with self._cond:
            return {n for _, n in self.lost}

    def wait(self, predicate, timeout: float = FOUND_WITHIN) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)


@pytest.fixture
def discovery():
    """Start Discovery instances; all are closed after the test."""
    started: list[Discovery] = []

    def _start(seen: Seen, **kwargs) -> Discovery:
        d = Discovery(seen.on_found, seen.on_lost, **kwargs)
        started.append(d)
        assert d.start()
        return d

    yield _start
    for d in started:
        d.close()


@pytest.fixture
def advertiser():
    """Build Advertisers in this process; all are closed after the test."""
    made: list[Advertiser] = []

    def _make(advert: NodeAdvert, **kwargs) -> Advertiser:
        a = Advertiser(advert, **kwargs)
        made.append(a)
        return a

    yield _make
    for a in made:
        a.close()


@pytest.fixture
def node_process():
    """Run an Advertiser in its own Python process; terminated (then killed) after the test."""
    procs: list[subprocess.Popen] = []

    def _start(node_id: str, port: int) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", ADVERTISE_SCRIPT, node_id, str(port)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def wait_ready(proc: subprocess.Popen, timeout: float = 15.0) -> float:
    """Block until the node process prints its status line; returns its start() time."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert line and line[0].startswith("ready"), f"node process did not advertise: {line}"
    return float(line[0].split()[1])


# --- the TXT format -----------------------------------------------------------------------


def sample(**overrides) -> NodeAdvert:
    fields = dict(node_id="jetson-07", port=50051,
                  models={"mnist_edge": ["1", "2"], "mnist_cloud": ["1"]}, capacity=4)
    return NodeAdvert(**{**fields, **overrides})


def as_wire(txt: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in txt.items()}


def test_encode_is_compact_and_sorted():
    assert encode_txt(sample()) == {
        "id": "jetson-07", "port": "50051", "models": "mnist_cloud:1;mnist_edge:1,2",
        "cap": "4", "v": "1",
    }


def test_round_trip_fills_addresses_and_srv_port():
    advert = sample(addresses=("192.0.2.7",), version="1")
    decoded = decode_txt(as_wire(encode_txt(advert)), ["192.0.2.7"], 50051)
    assert decoded == advert
    assert decode_txt(as_wire(encode_txt(advert)), (), None).port == 50051  # TXT port fallback
    assert decode_txt(as_wire(encode_txt(advert)), (), 6000).port == 6000  # SRV wins


def test_round_trip_of_edge_cases():
    advert = sample(node_id="nœud 7", models={}, capacity=0, version="1")
    assert decode_txt(as_wire(encode_txt(advert))) == advert
    empty_versions = sample(models={"m": []}, version="1")
    assert decode_txt(as_wire(encode_txt(empty_versions))) == empty_versions


def test_too_many_models_are_truncated_with_more_flag():
    models = {f"model_{i:03d}": [str(v) for v in range(1, 6)] for i in range(40)}
    models["a_huge_one"] = [str(v) for v in range(200)]  # alone longer than a TXT string
    txt = encode_txt(sample(models=models))
    assert txt["more"] == "1"
    assert all(len(f"{k}={v}".encode()) <= MAX_TXT_STRING for k, v in txt.items())
    decoded = decode_txt(as_wire(txt))
    assert decoded.truncated
    assert "a_huge_one" not in decoded.models  # skipped, later entries still packed in
    assert len(decoded.models) >= 10
    # Whatever is kept is complete and correct, in name order.
    assert all(models[name] == versions for name, versions in decoded.models.items())
    assert list(decoded.models) == sorted(decoded.models)


def test_models_that_fit_exactly_are_not_flagged():
    room = MAX_TXT_STRING - len("models=") - len("m:")
    assert "more" not in encode_txt(sample(models={"m": ["9" * room]}))
    assert encode_txt(sample(models={"m": ["9" * (room + 1)]}))["more"] == "1"


def test_an_already_truncated_advert_keeps_its_flag():
    assert encode_txt(sample(truncated=True))["more"] == "1"


def test_unknown_keys_and_flag_keys_are_tolerated():
    props = {**as_wire(encode_txt(sample())), b"future": b"x", b"flag": None, b"ID": b"jetson-07"}
    assert decode_txt(props).node_id == "jetson-07"


@pytest.mark.parametrize("key,value", [
    ("id", None),
    ("id", ""),
    ("port", "http"),
    ("port", "0"),
    ("port", "70000"),
    ("cap", "-1"),
    ("cap", "four"),
    ("models", "mnist_edge"),
    ("models", "mnist_edge:1,,2"),
    ("models", "a:1;a:2"),
    ("models", ":1"),
    ("more", "yes"),
    ("v", "one"),
])
def test_malformed_values_name_the_key(key, value):
    props = as_wire(encode_txt(sample()))
    props[key.encode()] = None if value is None else value.encode()
    with pytest.raises(ValueError, match=f"^{key}:"):
        decode_txt(props)


@pytest.mark.parametrize("key", ["id", "cap", "models"])
def test_missing_required_keys_name_the_key(key):
    props = as_wire(encode_txt(sample()))
    del props[key.encode()]
    with pytest.raises(ValueError, match=f"^{key}: missing"):
        decode_txt(props, (), 50051)


def test_invalid_utf8_names_the_key():
    props = as_wire(encode_txt(sample()))
    props[b"id"] = b"\xff\xfe"
    with pytest.raises(ValueError, match="^id: not valid UTF-8"):
        decode_txt(props)


@pytest.mark.parametrize("bad", [
    dict(node_id=""), dict(port=0), dict(capacity=-1), dict(models={"a;b": ["1"]}),
    dict(models={"a": ["1,2"]}), dict(node_id="x" * 300),
])
def test_adverts_that_cannot_be_encoded_are_refused(bad):
    with pytest.raises(ValueError):
        sample(**bad)


def test_instance_names_are_valid_labels():
    assert instance_name("jetson-07") == "jetson-07." + SERVICE_TYPE
    assert host_name("jetson-07") == "jetson-07.local."
    for node_id in ("node.a", "node_a", "nœud 7", "x" * 200, "...", "日本"):
        label = instance_label(node_id)
        assert 0 < len(label.encode()) <= 63
        assert all(c.isascii() and (c.isalnum() or c == "-") for c in label), label
        assert not label.startswith("-") and not label.endswith("-")
    # Lossy cleaning must not make two node ids share one mDNS name.
    assert instance_label("node.a") != instance_label("node_a")
    assert instance_label("x" * 200) != instance_label("x" * 201)


def test_interface_choice():
    assert interface_choice(None) is InterfaceChoice.All
    assert interface_choice(["all"]) is InterfaceChoice.All
    assert interface_choice(["default"]) is InterfaceChoice.Default
    assert interface_choice(["127.0.0.1", "lo"]) == ["127.0.0.1"]
    with pytest.raises(ValueError, match="nosuch0"):
        interface_choice(["nosuch0"])
    with pytest.raises(ValueError):
        interface_choice(["all", "lo"])


# --- real zeroconf ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_nodes_in_other_processes_are_found_and_goodbye_is_reported(node_process, discovery):
    first, second = unique("proc-a"), unique("proc-b")
    procs = {first: node_process(first, 50061), second: node_process(second, 50062)}
    start_times = [wait_ready(p) for p in procs.values()]
    assert max(start_times) < 5  # registration (probing + announcing) blocks start() ~2 s

    # Discovery starts after the nodes announced: this is the query path.
    seen = Seen({first, second})
    began = time.monotonic()
    discovery(seen)
    assert seen.wait(lambda: seen.found_ids() == {first, second}), seen.found
    assert max(t for t, _ in seen.found) - began < FOUND_WITHIN
    advert = seen.latest(first)
    assert advert.port == 50061
    assert advert.models == {"mnist_edge": ["1", "2"], "mnist_cloud": ["1"]}
    assert advert.capacity == 4
    assert advert.addresses == ("127.0.0.1",)
    assert advert.version == "1" and not advert.truncated
    assert seen.latest(second).port == 50062

    # SIGTERM -> Advertiser.close() -> goodbye packets -> on_lost, well within a second here.
    procs[first].terminate()
    assert procs[first].wait(timeout=10) == 0
    assert seen.wait(lambda: first in seen.lost_ids(), timeout=5), "no goodbye seen"
    assert second not in seen.lost_ids()


@pytest.mark.timeout(60)
def test_a_crashed_node_is_not_reported_lost(node_process, discovery):
    """mDNS is no liveness signal: without a goodbye the records live on in the cache."""
    node_id = unique("crash")
    seen = Seen({node_id})
    discovery(seen)
    proc = node_process(node_id, 50063)
    wait_ready(proc)
    assert seen.wait(lambda: node_id in seen.found_ids())
    proc.kill()
    proc.wait()
    assert not seen.wait(lambda: node_id in seen.lost_ids(), timeout=3)


@pytest.mark.timeout(60)
def test_pairs_in_one_process_see_each_other_and_updates(advertiser, discovery):
    ids = {unique("inproc-a"), unique("inproc-b")}
    # Two Discovery instances started before the adverts: this is the announcement path.
    watchers = [Seen(ids), Seen(ids)]
    for seen in watchers:
        discovery(seen)
    nodes = {
        node_id: advertiser(sample(node_id=node_id, port=50070 + i))
        for i, node_id in enumerate(sorted(ids))
    }
    for a in nodes.values():
        assert a.start()
        assert a.registered
    for seen in watchers:
        assert seen.wait(lambda s=seen: s.found_ids() == ids), seen.found

    # Repeated announcements of an unchanged advert are reported once.
    time.sleep(1.5)
    for seen in watchers:
        assert sorted(a.node_id for _, a in seen.found) == sorted(ids)

    # A changed model list is published and reported; an identical update is not.
    node_id, node = sorted(nodes.items())[0]
    changed = sample(node_id=node_id, port=node.advert.port, models={"mnist_edge": ["3"]})
    node.update(changed)
    node.update(changed)
    for seen in watchers:
        assert seen.wait(lambda s=seen: s.latest(node_id).models == {"mnist_edge": ["3"]})
    time.sleep(1)
    assert [a.models for _, a in watchers[0].found if a.node_id == node_id] == [
        sample().models, {"mnist_edge": ["3"]}]

    # close() says goodbye; a second close() is a no-op.
    node.close()
    node.close()
    assert not node.registered
    for seen in watchers:
        assert seen.wait(lambda s=seen: s.lost_ids() == {node_id}, timeout=5)


@pytest.mark.timeout(60)
def test_malformed_adverts_and_failing_callbacks_do_not_stop_discovery(discovery, caplog):
    bad, raising, good = unique("bad"), unique("raising"), unique("good")

    class Flaky(Seen):
        def on_found(self, advert: NodeAdvert) -> None:
            super().on_found(advert)
            if advert.node_id == raising:
                raise RuntimeError("callback bug")

    seen = Flaky({bad, raising, good})
    caplog.set_level(logging.WARNING, logger="coordinator.fleet.discovery")
    discovery(seen)
    zc = Zeroconf(interfaces=InterfaceChoice.All)
    try:
        adverts = [
            (bad, {**encode_txt(sample(node_id=bad)), "cap": "lots"}),
            (raising, encode_txt(sample(node_id=raising))),
            (good, encode_txt(sample(node_id=good))),
        ]
        for node_id, txt in adverts:  # registered one after another: events in this order
            zc.register_service(ServiceInfo(SERVICE_TYPE, instance_name(node_id), port=50080,
                                            properties=txt, server=host_name(node_id),
                                            parsed_addresses=["127.0.0.1"]))
        assert seen.wait(lambda: seen.found_ids() == {raising, good}), seen.found
        messages = [r.getMessage() for r in caplog.records]
        assert any("malformed" in m and "cap:" in m for m in messages), messages
        assert any("failed" in m and instance_label(raising) in m for m in messages), messages
    finally:
        zc.close()


@pytest.mark.timeout(60)
def test_unavailable_mdns_does_not_raise(advertiser):
    for interfaces in (["203.0.113.7"], ["nosuch0"]):  # not on this host / no such interface
        a = advertiser(sample(node_id=unique("offline")), interfaces=interfaces)
        assert a.start() is False
        assert not a.registered
        a.update(sample(node_id=a.advert.node_id, models={}))  # kept for a later start()
        a.close()
        a.close()
    with pytest.raises(ValueError):
        Advertiser(sample(), host_address="not-an-ip")
    d = Discovery(lambda advert: None, interfaces=["nosuch0"])
    assert d.start() is False
    d.close()


@pytest.fixture
def bare_netns():
    """A network namespace with only loopback up and no default route (needs CAP_NET_ADMIN)."""
    name = unique("esdisc")
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.timeout(60)
def test_default_interfaces_work_without_a_default_route(bare_netns):
    """Why Advertiser defaults to InterfaceChoice.All: Default fails in such a namespace."""
    script = (
        "from protos.discovery import NodeAdvert\n"
        "from edge_node.advertise import Advertiser\n"
        "for interfaces in (None, ['default']):\n"
        "    a = Advertiser(NodeAdvert('ns-node', 5000, {}, 1), interfaces=interfaces)\n"
        "    print(a.start())\n"
        "    a.close()\n"
    )
    result = subprocess.run(
        ["ip", "netns", "exec", bare_netns, sys.executable, "-c", script],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
