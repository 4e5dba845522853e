"""Architecture rules: who may import generated protobuf code, and package directions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRANSPORT = {"servicer.py", "server.py", "convert.py", "clients.py"}
PACKAGES = ("edgeshard", "edge_node", "coordinator", "ext", "protos")


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def modules(package: str):
    return sorted((ROOT / package).glob("*.py"))


@pytest.mark.parametrize("package", ["edge_node", "coordinator"])
def test_only_transport_modules_touch_generated_code(package):
    def transport(name: str) -> bool:
        return name in TRANSPORT or name.endswith(("_servicer.py", "_clients.py"))

    def generated(name: str) -> bool:
        return name.endswith("_pb2") or "_pb2." in name or "_pb2_grpc" in name

    offenders = [
        p.name for p in modules(package)
        if not transport(p.name) and any(generated(n) for n in imports(p))
    ]
    assert offenders == []


@pytest.mark.parametrize("package,forbidden", [
    ("edgeshard", ("edge_node", "coordinator", "ext", "protos")),
    ("ext", ("edgeshard", "edge_node", "coordinator", "protos")),
    ("protos", ("edgeshard", "edge_node", "coordinator", "ext")),
    ("edge_node", ("coordinator",)),
    ("coordinator", ("edge_node",)),
])
def test_dependency_direction(package, forbidden):
    bad = [
        (p.name, n) for p in modules(package) for n in imports(p)
        if n.split(".")[0] in forbidden
    ]
    assert bad == []
