"""Clients of Open Inference Protocol servers (edge nodes, the cloud tier).

Every call has a deadline (``timeout=``). ``node_classifier``, ``cloud_transport`` and
``facts_asker`` adapt a ``ClientPool`` to the functions the transport-free domain
takes (``jobs.runner.Classify``, ``cascade.cloud.Transport``, ``fleet.catalog.AskFacts``).
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.fleet.catalog import CLASSIFICATION, AskFacts, ModelFacts, TensorSpec, TryItem
from coordinator.fleet.forwarder import NodeCall
from coordinator.fleet.registry import NodeRecord
from coordinator.jobs.runner import Classification, Classify, InferTensors, TensorAnswer
from edgeshard.rpc import peer_error
from edgeshard.transport import message_options, open_channel
from protos import codec, oip_pb2, parameters
from protos.oip_service import InferenceStub

DEFAULT_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_CONNECTIONS = 64  # to one node address


def connections_for(node: NodeRecord, per_process: int) -> int:
    """How many TCP connections to keep to ``node``: one, or ``per_process`` for each of
    its serving processes (the kernel gives each connection to one of them at random),
    at most ``MAX_CONNECTIONS``."""
    return 1 if node.processes <= 1 else min(MAX_CONNECTIONS, per_process * node.processes)


def next_turn(turns: dict[str, int], address: str, count: int) -> int:
    """Which of ``address``'s ``count`` connections the next call takes (round robin;
    ``turns`` keeps the last one per address)."""
    turn = turns[address] = (turns.get(address, -1) + 1) % count
    return turn


class OIPClient:
    """A channel to one OIP server, with the calls the coordinator needs; TLS with
    ``credentials`` (``edgeshard.tls.channel_credentials``), else plaintext. With
    ``server_name`` (TLS only) the server's certificate must name it instead of the host
    of ``address``. With ``token`` every call carries it as a bearer token."""

    def __init__(self, address: str, max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
                 credentials: grpc.ChannelCredentials | None = None,
                 server_name: str | None = None, token: str | None = None,
                 own_connection: bool = False):
        self.address = address
        options = message_options(max_message_bytes)
        if server_name:  # TLS: the server's certificate must be for this name
            options.append(("grpc.ssl_target_name_override", server_name))
        if own_connection:  # not the TCP connection other channels to the address share
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.channel = open_channel(address, credentials=credentials, options=options,
                                    token=token)
        self.stub = InferenceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._input_names: dict[str, str] = {}

    def input_name(self, model: str, timeout: float = 5.0) -> str:
        """The model's (single) input tensor name, from ModelMetadata, cached."""
        name = self._input_names.get(model)
        if name is None:
            meta = self.stub.ModelMetadata(oip_pb2.ModelMetadataRequest(name=model),
                                           timeout=timeout)
            name = self._input_names[model] = meta.inputs[0].name if meta.inputs else "input"
        return name

    def wait_ready(self, timeout: float) -> None:
        """Block until the channel connects; ``grpc.FutureTimeoutError`` after ``timeout`` s."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def server_ready(self, timeout: float = 2.0) -> bool:
        """The server's ServerReady answer (raises ``grpc.RpcError`` if unreachable)."""
        return self.stub.ServerReady(oip_pb2.ServerReadyRequest(), timeout=timeout).ready

    def model_ready(self, model: str, timeout: float = 2.0) -> bool:
        """The server's ModelReady answer for ``model`` (False for a model it does not
        know); raises ``grpc.RpcError`` when the server cannot be reached."""
        try:
            return self.stub.ModelReady(oip_pb2.ModelReadyRequest(name=model),
                                        timeout=timeout).ready
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise

    def model_config(self, model: str, timeout: float = 5.0):
        """The model's Triton ``ModelConfig``, or None when the server cannot give one
        (unreachable, unknown model, or no ModelConfig RPC, as MLServer)."""
        try:
            return self.stub.ModelConfig(oip_pb2.ModelConfigRequest(name=model),
                                         timeout=timeout).config
        except grpc.RpcError:
            return None

    def model_metadata(self, model: str, timeout: float = 5.0):
        """The model's ``ModelMetadataResponse``, or None when the server cannot give it."""
        try:
            return self.stub.ModelMetadata(oip_pb2.ModelMetadataRequest(name=model),
                                           timeout=timeout)
        except grpc.RpcError:
            return None

    def model_parameter(self, model: str, key: str, default: str = "",
                        timeout: float = 5.0) -> str:
        """A string parameter of the model's config (e.g. ``temperature``), or ``default``
        when the server has no ModelConfig (MLServer) or no such parameter."""
        return string_parameter(self.model_config(model, timeout), key, default)

    def infer_raw(self, model: str, items: np.ndarray, outputs: list[str], timeout: float,
                  version: str = ""):
        """One ModelInfer of ``items`` as the model's single input; the raw response."""
        deadline = time.monotonic() + timeout
        name = self.input_name(model, timeout)
        tensor, raw = codec.encode_input_tensor(name, items)
        request = oip_pb2.ModelInferRequest(
            model_name=model, model_version=version, inputs=[tensor], raw_input_contents=[raw],
            outputs=[oip_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n)
                     for n in outputs],
        )
        return self.stub.ModelInfer(request, timeout=max(0.001, deadline - time.monotonic()))

    def infer_tensors(self, model: str, items: np.ndarray, outputs: list[str],
                      version: str = "", timeout: float = 10.0) -> TensorAnswer:
        """Run ``items`` [N, ...] as the model's single input; the ``outputs`` asked for
        (every output when empty), decoded. Raises ``grpc.RpcError``."""
        response = self.infer_raw(model, items, outputs, timeout, version)
        return TensorAnswer(codec.decode_outputs(response), response.model_version,
                            str(parameters.get_param(response.parameters, "node", "")))

    def classify(self, model: str, images: np.ndarray, version: str = "",
                 timeout: float = 10.0, with_probabilities: bool = False) -> Classification:
        """Classify ``images`` [N, ...] with ``model``: label int64 [N], confidence
        float32 [N] and, when asked, probabilities float32 [N, K]. Raises ``grpc.RpcError``."""
        wanted = ["label", "confidence"] + (["probabilities"] if with_probabilities else [])
        response = self.infer_raw(model, images, wanted, timeout, version)
        return Classification(
            label=codec.decode_output(response, "label"),
            confidence=codec.decode_output(response, "confidence"),
            probabilities=(codec.decode_output(response, "probabilities")
                           if with_probabilities else None),
            model_version=response.model_version,
            node=str(parameters.get_param(response.parameters, "node", "")),
        )

    def probe(self, timeout: float) -> dict[str, tuple[str, ...]] | None:
        """Health check; returns the models and versions served, or None if not SERVING.

        Models come from ModelStatistics with an empty name (one entry per loaded
        version), which every Triton-compatible server answers.
        """
        try:
            status = self.health.Check(health_pb2.HealthCheckRequest(service=""),
                                       timeout=timeout)
            if status.status != health_pb2.HealthCheckResponse.SERVING:
                return None
            stats = self.stub.ModelStatistics(oip_pb2.ModelStatisticsRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
        models: dict[str, list[str]] = {}
        for s in stats.model_stats:
            models.setdefault(s.name, []).append(s.version)
        return {name: tuple(sorted(v, key=lambda x: (len(x), x))) for name, v in models.items()}

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def string_parameter(config, key: str, default: str = "") -> str:
    """A string parameter of a ``ModelConfig`` (None: no config), or ``default``."""
    param = config.parameters.get(key) if config is not None else None
    return param.string_value if param is not None and param.string_value else default


class ClientPool:
    """Channels to node addresses, created on first use, shared by all threads; every
    one TLS with ``credentials`` (health probes included), else plaintext. One channel
    per address, or several (each its own TCP connection) for a node of several serving
    processes: the kernel gives each connection to one of them at random, so
    ``connections_per_process`` per process (at most ``MAX_CONNECTIONS`` per node) reach
    them all with near-even shares."""

    def __init__(self, max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None, connections_per_process: int = 4):
        self._max = max_message_bytes
        self.connections_per_process = connections_per_process
        self._credentials = credentials
        self._token = token  # a bearer token for servers that want one (calibrate)
        self._clients: dict[str, list[OIPClient]] = {}
        self._turns: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, address: str, connections: int = 1) -> OIPClient:
        """The client for ``address`` (``host:port``), created on first use; with
        ``connections`` > 1, each call gets the next of that many clients, each on a TCP
        connection of its own."""
        with self._lock:
            clients = self._clients.setdefault(address, [])
            while len(clients) < max(1, connections):
                clients.append(OIPClient(address, self._max, self._credentials,
                                         token=self._token, own_connection=bool(clients)))
            if connections <= 1:
                return clients[0]
            return clients[next_turn(self._turns, address, connections)]

    def for_node(self, node: NodeRecord) -> OIPClient:
        """The client for a call to ``node``: with several serving processes, the next of
        its connections."""
        return self.get(node.address, connections_for(node, self.connections_per_process))

    def probe_as(self, address: str, node_id: str,
                 timeout: float) -> dict[str, tuple[str, ...]] | None:
        """``OIPClient.probe`` over a one-off TLS channel that accepts only a server
        certificate for ``node_id`` (signed by the CA of the pool's credentials); None
        when the node is not SERVING, or not ``node_id``, or the pool has no TLS."""
        if self._credentials is None:
            return None
        client = OIPClient(address, self._max, self._credentials, server_name=node_id)
        try:
            return client.probe(timeout)
        finally:
            client.close()

    def close(self) -> None:
        """Close every channel; the pool is empty afterwards."""
        with self._lock:
            clients = [c for per in self._clients.values() for c in per]
            self._clients, self._turns = {}, {}
        for c in clients:
            c.close()


def node_call(clients: ClientPool, method: str, request) -> NodeCall:
    """A ``fleet.forwarder.NodeCall`` that sends ``request`` as-is to a node's OIP
    ``method`` (``ModelInfer``, ``ModelMetadata``...), a node's error status raised as
    ``PeerStatusError``."""

    def call(node: NodeRecord, timeout: float):
        try:
            return getattr(clients.for_node(node).stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise peer_error(exc, f"node {node.node_id} failed") from None

    return call


def fleet_statistics(clients: ClientPool, nodes: list[NodeRecord], request,
                     timeout: float) -> list:
    """Each node's ModelStatistics answer to ``request``; a node that cannot answer in
    ``timeout`` seconds contributes nothing this time."""
    answers = []
    for node in nodes:
        try:
            answers.append(clients.get(node.address).stub.ModelStatistics(request,
                                                                          timeout=timeout))
        except grpc.RpcError:
            continue
    return answers


def node_classifier(clients: ClientPool) -> Classify:
    """A ``jobs.runner.Classify`` over ``clients``: one batched ModelInfer at the node,
    a node's error status raised as ``PeerStatusError``."""

    def classify(node: NodeRecord, model: str, items: np.ndarray, version: str,
                 with_probabilities: bool, timeout: float) -> Classification:
        try:
            return clients.for_node(node).classify(
                model, items, version=version, timeout=timeout,
                with_probabilities=with_probabilities)
        except grpc.RpcError as exc:
            raise peer_error(exc, f"node {node.node_id} failed") from None

    return classify


def node_tensors(clients: ClientPool) -> InferTensors:
    """A ``jobs.runner.InferTensors`` over ``clients``: one batched ModelInfer at the node,
    a node's error status raised as ``PeerStatusError``."""

    def infer(node: NodeRecord, model: str, items: np.ndarray, version: str,
              outputs: list[str], timeout: float) -> TensorAnswer:
        try:
            return clients.for_node(node).infer_tensors(model, items, outputs, version,
                                                        timeout)
        except grpc.RpcError as exc:
            raise peer_error(exc, f"node {node.node_id} failed") from None

    return infer


def facts_asker(clients: ClientPool, timeout: float = 5.0) -> AskFacts:
    """A ``fleet.catalog.AskFacts`` over ``clients``: the node's ModelConfig
    (``max_batch_size``, 0 meaning no batching; its ``task`` and ``labels`` parameters)
    and ModelMetadata (inputs, outputs), or None when the node cannot answer."""

    def ask(address: str, model: str) -> ModelFacts | None:
        client = clients.get(address)
        config = client.model_config(model, timeout)
        if config is None:
            return None
        meta = client.model_metadata(model, timeout)
        labels = string_parameter(config, "labels")

        def specs(tensors) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors)

        return ModelFacts(config.max_batch_size or None,
                          tuple(labels.split(",")) if labels else (),
                          task=string_parameter(config, "task", CLASSIFICATION),
                          inputs=specs(meta.inputs) if meta is not None else (),
                          outputs=specs(meta.outputs) if meta is not None else (),
                          batched=config.max_batch_size > 0)

    return ask


def item_trier(clients: ClientPool) -> TryItem:
    """A ``fleet.catalog.TryItem`` over ``clients``: one ModelInfer of the item at the
    node (every output), the answer's size in bytes; a node's error status raised as
    ``PeerStatusError``."""

    def try_item(address: str, model: str, version: str, items: np.ndarray,
                 timeout: float) -> int:
        try:
            return clients.get(address).infer_raw(model, items, [], timeout,
                                                  version).ByteSize()
        except grpc.RpcError as exc:
            raise peer_error(exc, f"node {address} failed") from None

    return try_item


def cloud_transport(clients: ClientPool, address: str, output: str = "probabilities"):
    """A ``CloudTier`` transport to any OIP server at ``address``.

    ``output="probabilities"`` takes argmax and max of the ``probabilities`` output;
    ``"label"`` reads ``label`` and ``confidence``. The input is the item as submitted.
    The cloud's error status is raised as ``PeerStatusError``.
    """

    def call(model: str, items: np.ndarray, timeout: float):
        client = clients.get(address)
        wanted = ["probabilities"] if output == "probabilities" else ["label", "confidence"]
        try:
            response = client.infer_raw(model, items, wanted, timeout)
        except grpc.RpcError as exc:
            raise peer_error(exc, f"cloud tier {address} failed") from None
        if output == "probabilities":
            probs = codec.decode_output(response, "probabilities")
            return probs.argmax(axis=1).astype(np.int64), probs.max(axis=1).astype(np.float32)
        return (codec.decode_output(response, "label").astype(np.int64).reshape(-1),
                codec.decode_output(response, "confidence").astype(np.float32).reshape(-1))

    return call


def check_cloud(clients: ClientPool, address: str, models: list[str],
                timeout: float) -> tuple[str | None, list[str]]:
    """Ask the cloud tier at ``address`` whether each of ``models`` is ready (the standard
    OIP ModelReady, which Triton, KServe and MLServer answer).

    Returns ``(error, missing)``: ``error`` is one line when the server cannot be reached
    (None otherwise); ``missing`` the models it does not report ready.
    """
    client = clients.get(address)
    missing = []
    try:
        for model in models:
            if not client.model_ready(model, timeout):
                missing.append(model)
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}", models
    return None, missing
