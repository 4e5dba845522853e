"""Architecture rules: who may import generated protobuf code, and which way imports point."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edgeshard", "edge_node", "coordinator", "ext", "protos")

# Modules (relative to their package) that may touch generated code or gRPC: the
# transport. Everything else sees NumPy arrays and dataclasses.
TRANSPORT = {
    "edge_node": ("servicer.py", "server.py", "clients.py"),
    "coordinator": ("api/", "server.py", "cli/"),
}
# The coordinator's domain subpackages and what of the coordinator each may import.
# api -> domain; domain never imports api, cli or server; no cycle among the domain.
COORDINATOR_ALLOWED = {
    "fleet": {"fleet", "errors"},
    "cascade": {"cascade", "monitoring", "errors"},  # monitoring: pure trackers
    "jobs": {"jobs", "fleet", "cascade", "errors"},
    "rollout": {"rollout", "errors"},
    "monitoring": {"monitoring", "errors"},
    "api": {"api", "dataplane", "fleet", "jobs", "cascade", "rollout", "monitoring", "errors",
            "config"},
    "cli": {"cli", "api", "fleet", "jobs", "cascade", "rollout", "monitoring", "errors",
            "config", "server"},
    # the top-level modules every package may use import (almost) nothing of ours
    "errors": {"errors"},
    "metrics": {"metrics"},
    "config": {"config", "cascade"},  # the cascade rules it parses
    "dataplane": {"dataplane", "fleet", "cascade", "errors"},
}


def imports(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def relative(path: Path, package: str) -> str:
    return path.relative_to(ROOT / package).as_posix()


def generated(name: str) -> bool:
    return name.endswith("_pb2") or "_pb2." in name or "_pb2_grpc" in name


@pytest.mark.parametrize("package", ["edge_node", "coordinator"])
def test_only_transport_modules_touch_generated_code(package):
    offenders = [
        relative(p, package) for p in modules(package)
        if not relative(p, package).startswith(TRANSPORT[package])
        and any(generated(n) or n.split(".")[0] == "grpc" for n in imports(p))
    ]
    assert offenders == []


@pytest.mark.parametrize("package,forbidden", [
    ("edgeshard", ("edge_node", "coordinator", "ext")),
    ("ext", ("edgeshard", "edge_node", "coordinator", "protos")),
    ("protos", ("edgeshard", "edge_node", "coordinator", "ext")),
    ("edge_node", ("coordinator",)),
    ("coordinator", ("edge_node",)),
])
def test_dependency_direction(package, forbidden):
    bad = [
        (relative(p, package), n) for p in modules(package) for n in imports(p)
        if n.split(".")[0] in forbidden
    ]
    assert bad == []


@pytest.mark.parametrize("subpackage", sorted(COORDINATOR_ALLOWED))
def test_coordinator_subpackages_import_one_way(subpackage):
    allowed = COORDINATOR_ALLOWED[subpackage]
    where = ROOT / "coordinator" / subpackage
    files = sorted(where.rglob("*.py")) if where.is_dir() else [where.with_suffix(".py")]
    assert files and files[0].exists(), f"coordinator/{subpackage} is missing"
    bad = []
    for p in files:
        for name in imports(p):
            parts = name.split(".")
            if parts[0] == "coordinator" and len(parts) > 1 and parts[1] not in allowed:
                bad.append((p.name, name))
    assert bad == []


def test_coordinator_top_level_holds_only_a_handful_of_modules():
    top = sorted(p.name for p in (ROOT / "coordinator").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "config.py", "dataplane.py", "errors.py",
                   "metrics.py", "server.py"]


def test_no_module_is_over_400_lines():
    long = {}
    for package in PACKAGES:
        for p in modules(package):
            if generated(p.stem) or p.name.endswith(".pyi"):
                continue
            lines = len(p.read_text().splitlines())
            if lines > 420:  # ~400: a sign to split by responsibility
                long[f"{package}/{relative(p, package)}"] = lines
    assert long == {}


def test_the_import_walker_sees_relative_imports():
    probe = ROOT / "coordinator" / "fleet" / "probe.py"
    assert "coordinator.api.convert" in imports(probe, "from ..api import convert\n")
    assert "coordinator.fleet.router.Router" in imports(probe, "from .router import Router\n")
