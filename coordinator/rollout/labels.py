"""Version labels per model, as TF Serving's ``stable`` / ``canary``: the rollout record
and the choice of a version for one request or job shard.

Pure: the caller draws the random numbers. A model without a rollout record is routed as
the request asks (the newest version a node serves when it pins none). With a record:

* a request that pins a version goes to that version; it counts as the canary's (or
  stable's) when it pins one of them;
* while the rollout is ``running``, an unpinned request goes to the canary with
  probability ``share`` and to stable otherwise; a stable request is also mirrored to
  the canary (``shadow``) with probability ``shadow``;
* once it is ``rolled_back`` or ``promoted``, every unpinned request goes to ``stable``
  (after a promotion that is the former canary): nodes keep the newest versions loaded,
  so without this pin they would serve the rolled back canary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from coordinator.rollout.verdict import Margins

RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled_back"
STATES = (RUNNING, PROMOTED, ROLLED_BACK)
STABLE, CANARY = "stable", "canary"  # the arms a request is counted in ("" for neither)


@dataclass(frozen=True)
class Rollout:
    """One model's labels and its canary comparison.

    ``share``: fraction of unpinned online requests and job shards sent to the canary;
    ``shadow``: fraction of stable's online requests mirrored to the canary (answers not
    used, only compared); ``state``: running, promoted or rolled_back; ``reason``: why it
    was decided (the verdict's reasons, or who decided); ``stats``: the verdict's
    statistics when it was decided; times in Unix seconds (``decided_at`` 0 while running).
    """

    model: str
    stable: str
    canary: str
    share: float
    shadow: float = 0.0
    margins: Margins = Margins()
    state: str = RUNNING
    reason: str = ""
    started_at: float = 0.0
    decided_at: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    def check(self) -> Rollout:
        """Raise ``ValueError`` naming the field that is wrong; return self."""
        if not self.model:
            raise ValueError("model: required")
        for name in ("stable", "canary"):
            value = getattr(self, name)
            if not value or not value.isdigit():
                raise ValueError(f"{name}: a model version number is required, got {value!r}")
        if self.canary == self.stable:
            raise ValueError(f"canary: must differ from the stable version ({self.stable})")
        for name in ("share", "shadow"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"{name}: a fraction from 0 to 1 is required, got {value!r}")
        if self.share == 0 and self.shadow == 0:
            raise ValueError("share: the canary needs some traffic: a share or a shadow above 0")
        if self.state not in STATES:
            raise ValueError(f"state: one of {', '.join(STATES)}, got {self.state!r}")
        self.margins.check()
        return self

    @property
    def running(self) -> bool:
        """True while the canary takes traffic and is compared."""
        return self.state == RUNNING

    def decided(self, state: str, reason: str, now: float,
                stats: dict[str, float] | None = None) -> Rollout:
        """The record after a promotion or a rollback: on promotion the canary becomes
        stable (the former stable is kept in ``canary`` for the record)."""
        if state == PROMOTED:
            return replace(self, stable=self.canary, canary=self.stable, state=state,
                           reason=reason, decided_at=now, stats=dict(stats or {}))
        return replace(self, state=state, reason=reason, decided_at=now,
                       stats=dict(stats or {}))


@dataclass(frozen=True)
class Route:
    """Where one request goes: the version to ask for ("" = any the node serves), the arm
    it is counted in ("" = none) and whether to mirror it to ``shadow_version``."""

    version: str
    arm: str = ""
    shadow_version: str = ""


def route(rollout: Rollout | None, pinned: str, draw: float, shadow_draw: float = 1.0,
          allow_shadow: bool = True) -> Route:
    """The version for a request that pins ``pinned`` ("" for none), given uniform draws
    in [0, 1): ``draw`` against ``share``, ``shadow_draw`` against ``shadow``."""
    if rollout is None:
        return Route(pinned)
    if not rollout.running:
        return Route(pinned or rollout.stable)
    if pinned:
        arm = CANARY if pinned == rollout.canary else STABLE if pinned == rollout.stable else ""
        return Route(pinned, arm)
    if draw < rollout.share:
        return Route(rollout.canary, CANARY)
    mirror = allow_shadow and shadow_draw < rollout.shadow
    return Route(rollout.stable, STABLE, rollout.canary if mirror else "")
