"""``edgeshard.v1.Rollouts``: the admin door to version labels and canary rollouts."""

from __future__ import annotations

import logging
from dataclasses import asdict, fields

from coordinator.errors import InvalidRequestError, RolloutNotFoundError
from coordinator.fleet.registry import Registry
from coordinator.rollout.controller import Rollouts
from coordinator.rollout.labels import Rollout
from coordinator.rollout.verdict import Margins, Verdict
from edgeshard.rpc import guarded
from protos import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

guard = guarded("coordinator", log)

# RolloutMargins field: the Margins field of the same name; its CLI flag names it in errors.
MARGIN_FLAGS = {f.name: "--" + f.name.replace("_", "-") for f in fields(Margins)}


def margins_of(message: fleet_pb2.RolloutMargins) -> Margins:
    """The margins a request asks for (unset or 0 fields keep the default), checked:
    ``InvalidRequestError`` names the flag of a value out of range."""
    given = {}
    for f in fields(Margins):
        if f.type == "int":  # uint32 in the message: 0 = unset
            if getattr(message, f.name):
                given[f.name] = getattr(message, f.name)
        elif message.HasField(f.name):
            given[f.name] = getattr(message, f.name)
    try:
        return Margins(**given).check()
    except ValueError as exc:
        name = str(exc).split(":", 1)[0]
        raise InvalidRequestError(f"{MARGIN_FLAGS.get(name, name)}: "
                                  f"{str(exc).split(':', 1)[-1].strip()}") from None


def rollout_info(r: Rollout, verdict: Verdict | None) -> fleet_pb2.RolloutInfo:
    """The message of ``r``; ``verdict``: the comparison now (running rollouts)."""
    stats = verdict.stats if verdict is not None else r.stats
    return fleet_pb2.RolloutInfo(
        model=r.model, stable=r.stable, canary=r.canary, share=r.share, shadow=r.shadow,
        state=r.state, reason=r.reason, started_at=r.started_at, decided_at=r.decided_at,
        margins=fleet_pb2.RolloutMargins(**asdict(r.margins)),
        verdict=verdict.decision if verdict is not None else "",
        reasons=list(verdict.reasons) if verdict is not None else [],
        stats={k: float(v) for k, v in stats.items()})


class RolloutsServicer(fleet_pb2_grpc.RolloutsServicer):
    """Status, Start, Promote and Rollback over ``Rollouts``; the registry says which
    versions the live nodes serve (a canary must be served by one)."""

    def __init__(self, rollouts: Rollouts, registry: Registry):
        self.rollouts = rollouts
        self.registry = registry

    def _info(self, r: Rollout) -> fleet_pb2.RolloutInfo:
        return rollout_info(r, self.rollouts.verdict(r) if r.running else None)

    @guard
    def Status(self, request, context):
        records = self.rollouts.records()
        if request.model:
            records = [r for r in records if r.model == request.model]
            if not records:
                raise RolloutNotFoundError(f"model {request.model}: no rollout (start one "
                                           "with `edge-coordinator rollout start`)")
        return fleet_pb2.RolloutList(rollouts=[self._info(r) for r in records])

    @guard
    def Start(self, request, context):
        if not request.model:
            raise InvalidRequestError("model: required")
        served = sorted({v for n in self.registry.snapshot() if n.routable
                         for v in n.models.get(request.model, ())}, key=_number)
        if not request.canary:
            raise InvalidRequestError("--canary: the version to try is required")
        if request.canary not in served:
            raise InvalidRequestError(
                f"--canary: no live node serves {request.model} version {request.canary} "
                f"(served: {', '.join(served) or 'none'}); load it on the nodes first")
        stable = request.stable or self._default_stable(request.model, request.canary, served)
        if stable not in served:
            raise InvalidRequestError(
                f"--stable: no live node serves {request.model} version {stable} "
                f"(served: {', '.join(served)})")
        try:
            rollout = Rollout(request.model, stable, request.canary, request.share,
                              request.shadow, margins_of(request.margins)).check()
        except ValueError as exc:
            raise InvalidRequestError(f"--{exc}") from None
        return self._info(self.rollouts.begin(rollout))

    def _default_stable(self, model: str, canary: str, served: list[str]) -> str:
        last = self.rollouts.get(model)
        if last is not None and last.stable != canary:
            return last.stable
        older = [v for v in served if _number(v) < _number(canary)]
        if not older:
            raise InvalidRequestError(f"--stable: no version of {model} older than "
                                      f"{canary} is served; name the stable version")
        return older[-1]

    @guard
    def Promote(self, request, context):
        return self._info(self.rollouts.promote(
            request.model, request.reason or "promoted by an operator"))

    @guard
    def Rollback(self, request, context):
        return self._info(self.rollouts.rollback(
            request.model, request.reason or "rolled back by an operator"))


def _number(version: str) -> int:
    return int(version) if version.isdigit() else -1
