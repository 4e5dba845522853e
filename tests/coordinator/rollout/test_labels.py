"""Version labels: which version a request gets, and what a rollout record accepts."""

from __future__ import annotations

import pytest

from coordinator.rollout.labels import (
    CANARY,
    PROMOTED,
    ROLLED_BACK,
    STABLE,
    Rollout,
    Route,
    route,
)
from coordinator.rollout.verdict import Margins

R = Rollout("m", "1", "2", share=0.2, shadow=0.5)


def test_without_a_rollout_the_request_goes_where_it_asks():
    assert route(None, "", 0.0) == Route("")
    assert route(None, "3", 0.0) == Route("3")


def test_the_share_goes_to_the_canary_and_shadow_copies_come_from_stable():
    assert route(R, "", 0.1) == Route("2", CANARY)
    assert route(R, "", 0.5, shadow_draw=0.9) == Route("1", STABLE)
    assert route(R, "", 0.5, shadow_draw=0.1) == Route("1", STABLE, shadow_version="2")
    assert route(R, "", 0.5, shadow_draw=0.1, allow_shadow=False) == Route("1", STABLE)
    draws = [k / 1000 for k in range(1000)]
    assert sum(route(R, "", d).arm == CANARY for d in draws) == 200


def test_pinned_requests_go_where_they_ask_and_count_in_their_arm():
    assert route(R, "2", 0.9) == Route("2", CANARY)
    assert route(R, "1", 0.0) == Route("1", STABLE)
    assert route(R, "7", 0.0) == Route("7")


def test_a_decided_rollout_pins_unpinned_requests_to_stable():
    back = R.decided(ROLLED_BACK, "worse", 5.0)
    assert route(back, "", 0.0) == Route("1")
    assert route(back, "2", 0.0) == Route("2")  # pinned: still where it asks
    promoted = R.decided(PROMOTED, "good", 5.0)
    assert (promoted.stable, promoted.canary) == ("2", "1")
    assert route(promoted, "", 0.99) == Route("2")


@pytest.mark.parametrize("changes,field", [
    ({"canary": "1"}, "canary"), ({"stable": ""}, "stable"), ({"canary": "x"}, "canary"),
    ({"share": 1.5}, "share"), ({"shadow": -0.1}, "shadow"),
    ({"share": 0.0, "shadow": 0.0}, "share"), ({"share": float("nan")}, "share"),
    ({"margins": Margins(min_requests=0)}, "min_requests"), ({"model": ""}, "model"),
])
def test_a_bad_rollout_names_its_field(changes, field):
    from dataclasses import replace

    with pytest.raises(ValueError, match=f"^{field}:"):
        replace(R, **changes).check()
