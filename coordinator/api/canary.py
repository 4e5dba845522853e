"""The online front's part in canary rollouts: pin the version, count, mirror.

``CanaryFront.infer`` wraps one ``DataPlane.infer`` call: the rollout's route pins the
request's version (stable or canary: nodes keep both loaded, and would serve the newest
to an unpinned request), the outcome is counted in the route's arm (latency, error,
the ``confidence`` output when the answer has it, the cascade's escalations), and a
stable request drawn for shadowing is mirrored to the canary by ``Shadow``: in the
background, at most ``max_in_flight`` at once (more are dropped, never queued), its
answer compared with stable's top-1 label and never returned to anyone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from coordinator import errors
from coordinator.api import convert
from coordinator.api.clients import ClientPool, node_call
from coordinator.dataplane import DataPlane, OnlineAnswer
from coordinator.rollout.controller import Rollouts
from coordinator.rollout.labels import Route
from edgeshard.errors import PeerStatusError
from protos import codec, oip_pb2

log = logging.getLogger(__name__)

# Failures that say something about the version (a node's error, no node serving it);
# a saturated fleet or a stopping coordinator do not.
VERSION_FAILURES = (PeerStatusError, errors.ModelNotServedError, errors.NoNodeAvailableError)


def output_or_none(response: oip_pb2.ModelInferResponse, name: str) -> np.ndarray | None:
    """The response's output ``name``, or None when it has none."""
    if not any(t.name == name for t in response.outputs):
        return None
    return codec.decode_output(response, name)


def top1_labels(response: oip_pb2.ModelInferResponse) -> np.ndarray | None:
    """Each item's top-1 class: the ``label`` output, else the argmax of
    ``probabilities``; None for a model with neither (not a classifier)."""
    labels = output_or_none(response, "label")
    if labels is not None:
        return np.asarray(labels).reshape(-1)
    probabilities = output_or_none(response, "probabilities")
    if probabilities is not None and probabilities.ndim == 2:
        return np.argmax(probabilities, axis=1)
    return None


class Shadow:
    """Mirrors requests to a canary off the caller's path, ``max_in_flight`` at once.

    ``on_outcome(model, outcome)``: agreed, disagreed, failed or dropped (metrics)."""

    def __init__(self, max_in_flight: int = 4,
                 on_outcome: Callable[[str, str], None] = lambda model, outcome: None):
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="shadow")
        self.on_outcome = on_outcome

    def mirror(self, model: str, run: Callable[[], None]) -> bool:
        """Run ``run`` in the background if a slot is free; False (dropped) otherwise."""
        if not self._slots.acquire(blocking=False):
            self.on_outcome(model, "dropped")
            return False

        def task() -> None:
            try:
                run()
            except Exception:
                log.exception("shadow request for %s failed unexpectedly", model)
            finally:
                self._slots.release()
        try:
            self._pool.submit(task)
        except RuntimeError:  # shut down
            self._slots.release()
            return False
        return True

    def close(self) -> None:
        """Stop taking mirrors; those running finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class CanaryFront:
    """Rollout routing and counting around ``plane.infer``; see the module docstring."""

    def __init__(self, rollouts: Rollouts, plane: DataPlane, clients: ClientPool,
                 shadow: Shadow, shadow_timeout_s: float):
        self.rollouts = rollouts
        self.plane = plane
        self.clients = clients
        self.shadow = shadow
        self.shadow_timeout_s = shadow_timeout_s

    def infer(self, request: oip_pb2.ModelInferRequest,
              run: Callable[[oip_pb2.ModelInferRequest], OnlineAnswer]) -> OnlineAnswer:
        """Pin ``request``'s version as the rollout says (in place), then ``run`` it and
        count the outcome; mirror it to the canary when drawn for shadowing."""
        model = request.model_name
        route = self.rollouts.route(model, request.model_version)
        request.model_version = route.version
        started = time.monotonic()
        try:
            answer = run(request)
        except VERSION_FAILURES:
            self.rollouts.failed(model, route)
            raise
        seconds = time.monotonic() - started
        if route.arm:
            self._count(model, route, answer, seconds)
        if route.shadow_version:
            stable_labels = top1_labels(answer.response)
            # The copy is made in the background (and not at all when the mirror is
            # dropped): nothing changes ``request`` once this call has returned.
            self.shadow.mirror(model, lambda: self._shadow(request, route.shadow_version,
                                                           stable_labels))
        return answer

    def unrouted(self, request: oip_pb2.ModelInferRequest) -> bool:
        """True when no rollout arm counts ``request`` (its model has no running rollout,
        or it pins a version outside one): its version is pinned as the rollout says (in
        place) and it needs nothing else from here. False: it goes through ``infer``."""
        route = self.rollouts.route(request.model_name, request.model_version,
                                    allow_shadow=False)
        if route.arm:
            return False
        request.model_version = route.version
        return True

    def _count(self, model: str, route: Route, answer: OnlineAnswer, seconds: float) -> None:
        confidences = output_or_none(answer.response, "confidence")
        confidences = () if confidences is None else np.asarray(confidences).reshape(-1)
        items, escalated = len(confidences), 0
        if answer.decision is not None:
            items, escalated = len(answer.decision.escalated), int(answer.decision.escalated.sum())
            confidences = answer.decision.edge_confidences
        self.rollouts.answered(model, route, seconds, confidences, items, escalated)

    def _shadow(self, original: oip_pb2.ModelInferRequest, version: str,
                stable_labels: np.ndarray | None) -> None:
        """A copy of ``original`` on a node serving the canary ``version``: counted in
        the canary's arm, its top-1 labels compared with stable's."""
        request = convert.without_outputs(original)
        request.model_version = version
        model = request.model_name
        route = Route(version, "canary")
        started = time.monotonic()
        try:
            done = self.plane.forwarder.forward(model, version, convert.routing_key(request),
                                                self.shadow_timeout_s,
                                                node_call(self.clients, "ModelInfer", request))
        except VERSION_FAILURES as exc:
            self.rollouts.failed(model, route)
            self.shadow.on_outcome(model, "failed")
            log.debug("shadow request for %s version %s failed: %s", model, version, exc)
            return
        except errors.CoordinatorError:  # saturated or stopping: not the canary's fault
            self.shadow.on_outcome(model, "dropped")
            return
        seconds = time.monotonic() - started
        confidences = output_or_none(done.answer, "confidence")
        confidences = () if confidences is None else np.asarray(confidences).reshape(-1)
        self.rollouts.answered(model, route, seconds, confidences, len(confidences))
        labels = top1_labels(done.answer)
        if labels is None or stable_labels is None or len(labels) != len(stable_labels):
            return
        agreed = int(np.sum(labels == stable_labels))
        self.rollouts.compared(model, agreed, len(labels))
        self.shadow.on_outcome(model, "agreed" if agreed == len(labels) else "disagreed")
