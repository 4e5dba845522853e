"""Make a fresh store look like one written by an older schema version, for upgrade tests:
the tables each later version added are dropped (add a line here with each new version)."""

from __future__ import annotations

from coordinator.jobs.schema import SCHEMA_VERSION

TABLES_ADDED = {6: "rollouts", 7: "hard_examples", 8: "fleet_members"}


def drops_after(version: int) -> list[str]:
    """``DROP TABLE`` statements for the tables versions after ``version`` added."""
    assert max(TABLES_ADDED) == SCHEMA_VERSION, "list the new version's tables above"
    return [f"DROP TABLE {table}" for v, table in sorted(TABLES_ADDED.items()) if v > version]
