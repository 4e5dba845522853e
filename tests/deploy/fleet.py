"""A local fleet for the Ansible tests: release artifacts, a wheelhouse, an inventory, runs.

The fleet is deploy/ansible/inventories/local (a coordinator and three edge nodes on this
machine, each "host" with its own directories and ports), copied into a temporary root
with free ports. Releases are built once from this checkout: an sdist, a wheel built from
it, and copies of that wheel under other version numbers (the same code, so a rollout
really moves every host to another release directory and process). The dependencies go
into a wheelhouse cached between sessions, so that every install is offline.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
VENV_BIN = Path(sys.executable).parent
# The release venvs must be made from a Python that `nobody` (the service user of the
# local inventory) may execute: Debian's, not one under /root.
FLEET_PYTHON = Path("/usr/bin/python3.11")
BUILD_REQUIREMENTS = ["setuptools>=69", "wheel", "Cython==3.3.1"]
NODES = ("node-a", "node-b", "node-c")
COORDINATOR = "coord-1"
RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def cache_dir() -> Path:
    """Where artifacts that outlive a session go (EDGESHARD_TEST_CACHE overrides)."""
    env = os.environ.get("EDGESHARD_TEST_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeshard-tests"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without EDGESHARD_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHARD_")}
    env.update(extra)
    return env


def run(cmd: list, cwd: Path | None = None, timeout: float = 600, **kwargs):
    """Run ``cmd``; raise with its output when it fails."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (bound at once, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _publish(tmp: Path, final: Path) -> Path:
    """Move a finished ``tmp`` directory to ``final`` atomically (another session may have
    done it first: then ``tmp`` is dropped)."""
    try:
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- release artifacts ----------------------------------------------------------------------


# What a release is built from; tests, docs and deploy files change no installed byte, so
# editing them does not rebuild the cached packages.
NOT_PACKAGED = ("tests/", "docs/", "deploy/", "bench/", "scripts/", ".ci/")


def _tracked_files() -> list[str]:
    """The checkout's files that go into a release."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout
        return sorted(p for p in out.decode().split("\0")
                      if p and (REPO / p).is_file() and not p.startswith(NOT_PACKAGED))
    except (OSError, subprocess.CalledProcessError):  # no git: everything but build output
        skip = {".git", ".venv", "build", "dist", ".pytest_cache", "__pycache__"}
        return sorted(str(p.relative_to(REPO)) for p in REPO.rglob("*")
                      if p.is_file() and not skip & set(p.relative_to(REPO).parts)
                      and p.suffix not in (".so", ".c") and ".egg-info" not in str(p)
                      and not str(p.relative_to(REPO)).startswith(NOT_PACKAGED))


def build_release(cache: Path) -> tuple[Path, Path]:
    """The sdist of this checkout and a wheel built from it, cached by the content of what
    goes into them (building the Cython extension takes a while)."""
    files = _tracked_files()
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes())
    final = cache / f"release-{digest.hexdigest()[:16]}"
    if not (final / "ok").exists():
        tmp = cache / f".release-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        src = tmp / "src"
        for name in files:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
        env = clean_env()
        run([sys.executable, "-m", "build", "--sdist", "--outdir", tmp / "dist", src], env=env)
        (sdist,) = (tmp / "dist").glob("edgeshard-*.tar.gz")
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp / "dist", sdist],
            env=env)
        shutil.rmtree(src)
        (tmp / "ok").touch()
        _publish(tmp, final)
        # Keep the last few builds (other checkouts may share the cache), not every one.
        builds = sorted(cache.glob("release-*"), key=lambda p: p.stat().st_mtime)
        for old in builds[:-3]:
            shutil.rmtree(old, ignore_errors=True)
    (sdist,) = (final / "dist").glob("edgeshard-*.tar.gz")
    (wheel,) = (final / "dist").glob("edgeshard-*.whl")
    return sdist, wheel


def wheelhouse(cache: Path) -> Path:
    """A directory of wheels of edgeshard's dependencies (and of its build requirements,
    for hosts that build the sdist), downloaded once per set of requirements."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + BUILD_REQUIREMENTS
    key = hashlib.sha256(json.dumps([requirements, sys.version_info[:2], sys.platform,
                                     os.uname().machine]).encode()).hexdigest()[:16]
    final = cache / f"wheelhouse-{key}"
    if not (final / "ok").exists():
        tmp = cache / f".wheelhouse-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "-d", tmp,
             *requirements], env=clean_env())
        (tmp / "ok").touch()
        _publish(tmp, final)
    return final


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
        b"=").decode()


def reversion_wheel(wheel: Path, version: str, dest: Path,
                    drop: tuple[str, ...] = ()) -> Path:
    """A copy of ``wheel`` that installs as edgeshard ``version`` (its metadata, dist-info
    directory and RECORD rewritten), without the files in ``drop``."""
    old_version = wheel.name.split("-")[1]
    old_info, new_info = f"edgeshard-{old_version}.dist-info", f"edgeshard-{version}.dist-info"
    out = dest / wheel.name.replace(f"edgeshard-{old_version}-", f"edgeshard-{version}-")
    entries = {}
    with zipfile.ZipFile(wheel) as zin:
        for info in zin.infolist():
            if info.filename in drop or info.filename == f"{old_info}/RECORD":
                continue
            data = zin.read(info)
            name = info.filename.replace(old_info + "/", new_info + "/", 1)
            if name == f"{new_info}/METADATA":
                data = re.sub(rb"(?m)^Version: .*$", f"Version: {version}".encode(), data,
                              count=1)
            entries[name] = data
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in entries.items():
        writer.writerow([name, _record_hash(data), len(data)])
    writer.writerow([f"{new_info}/RECORD", "", ""])
    entries[f"{new_info}/RECORD"] = record.getvalue().encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
    return out


def sdist_version(sdist: Path) -> str:
    """The version in an sdist's PKG-INFO."""
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    return re.search(r"(?m)^Version: (.*)$", info).group(1).strip()


# -- the fleet --------------------------------------------------------------------------------


@dataclass
class Result:
    """One ansible-playbook run: exit status, output, and the PLAY RECAP per host."""

    rc: int
    output: str
    recap: dict[str, dict[str, int]]

    @property
    def text(self) -> str:
        """The output with all whitespace runs made one space (messages wrap)."""
        return " ".join(self.output.split())

    def changed(self) -> dict[str, int]:
        """Changed tasks per host."""
        return {host: counts["changed"] for host, counts in self.recap.items()}


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP lines of ansible-playbook's output, as counts per host."""
    recap: dict[str, dict[str, int]] = {}
    lines = output.splitlines()
    if "PLAY RECAP" not in output:
        return recap
    start = max(i for i, line in enumerate(lines) if line.startswith("PLAY RECAP"))
    for line in lines[start + 1:]:
        match = RECAP.match(line.strip())
        if match:
            recap[match.group(1)] = {k: int(v) for k, v in
                                     (kv.split("=") for kv in match.group(2).split())}
    return recap


class LocalFleet:
    """The local inventory copied under ``root`` with its own ports, and its processes."""

    def __init__(self, root: Path, dist: list[Path], wheels: Path) -> None:
        self.root = root
        self.inventory = root / "inventory"
        self.log = root / "ansible-runs.log"
        shutil.copytree(ANSIBLE_DIR / "inventories" / "local", self.inventory)
        self.dist = root / "dist"
        self.dist.mkdir()
        for artifact in dist:
            (self.dist / artifact.name).symlink_to(artifact)
        (root / "wheelhouse").symlink_to(wheels)
        ports = free_ports(1 + len(NODES))
        self.coordinator_port = ports[0]
        self.node_ports = dict(zip(NODES, ports[1:], strict=True))
        hosts = self._load("hosts.yml")
        hosts["all"]["children"]["coordinators"]["hosts"][COORDINATOR]["coordinator_port"] = \
            self.coordinator_port
        for node, port in self.node_ports.items():
            hosts["all"]["children"]["edge_nodes"]["hosts"][node]["edge_node_port"] = port
        self._dump("hosts.yml", hosts)
        self.set_vars("group_vars/all.yml", local_fleet_root=str(root),
                      local_fleet_python=str(FLEET_PYTHON))

    # inventory edits, as an operator would make them

    def _load(self, name: str):
        return yaml.safe_load((self.inventory / name).read_text())

    def _dump(self, name: str, data) -> None:
        (self.inventory / name).write_text(yaml.safe_dump(data, sort_keys=False))

    def set_vars(self, name: str, **values) -> None:
        """Set variables in the inventory file ``name`` (e.g. group_vars/all.yml)."""
        data = self._load(name)
        data.update(values)
        self._dump(name, data)

    def set_host_var(self, host: str, name: str, value=None, remove: bool = False) -> None:
        """Set (or remove) a host variable in hosts.yml."""
        hosts = self._load("hosts.yml")
        group = "coordinators" if host == COORDINATOR else "edge_nodes"
        entry = hosts["all"]["children"][group]["hosts"][host]
        if remove:
            entry.pop(name, None)
        else:
            entry[name] = value
        self._dump("hosts.yml", hosts)

    # playbooks

    def playbook(self, *args: str, inventory: Path | None = None,
                 timeout: float = 580) -> Result:
        """Run ansible-playbook in deploy/ansible against this inventory (or another)."""
        env = clean_env(
            ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
            ANSIBLE_HOME=str(self.root / ".ansible"),
            ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory or self.inventory), *args]
        proc = subprocess.run(cmd, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True,
                              timeout=timeout)
        output = proc.stdout + proc.stderr
        with open(self.log, "a") as fh:
            fh.write(f"\n===== {' '.join(args)} (rc {proc.returncode})\n{output}")
        return Result(proc.returncode, output, parse_recap(output))

    # the hosts

    def host_dir(self, host: str) -> Path:
        return self.root / host

    def current_release(self, host: str) -> str:
        """The release ``current`` points at on ``host``."""
        return os.readlink(self.host_dir(host) / "opt" / "current").split("/")[-1]

    def releases(self, host: str) -> list[str]:
        return sorted(p.name for p in (self.host_dir(host) / "opt" / "releases").iterdir())

    def ready(self, host: str) -> dict:
        """The daemon's ready file: its ports and pid."""
        return json.loads((self.host_dir(host) / "state" / "ready.json").read_text())

    def pid(self, host: str) -> int:
        """The pid of the daemon running on ``host`` (it must be alive)."""
        pid = self.ready(host)["pid"]
        os.kill(pid, 0)
        return pid

    def service_file(self, host: str) -> Path:
        name = "edge-coordinator" if host == COORDINATOR else "edge-node"
        return self.host_dir(host) / "etc" / f"{name}.supervise.json"

    def admin(self, *args: str) -> str:
        """Run the coordinator's admin command (edgeshard-admin) and return its output."""
        cmd = [self.host_dir(COORDINATOR) / "opt" / "bin" / "edgeshard-admin", *args]
        return run(cmd, env=clean_env(), timeout=60).stdout

    def node_states(self) -> dict[str, str]:
        """Each node's state at the coordinator (live, draining, ...)."""
        return {n["node_id"]: n["state"] for n in json.loads(self.admin("nodes", "--json"))}

    def wait_nodes_live(self, timeout: float = 30) -> dict[str, str]:
        """Wait until the coordinator sees every node live; returns the last states."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.node_states()
            if all(states.get(n) == "live" for n in NODES) or time.monotonic() > deadline:
                return states
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop every daemon of the fleet: through edgeshard-supervise, then by pid."""
        for host in (*NODES, COORDINATOR):
            service = self.service_file(host)
            script = self.host_dir(host) / "opt" / "bin" / "edgeshard-supervise"
            if service.exists() and script.exists():
                subprocess.run([str(FLEET_PYTHON), str(script), str(service), "stop"],
                               capture_output=True, timeout=60, check=False)
        for pid in self._own_pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _own_pids(self) -> list[int]:
        """Processes still running from this fleet's directories (its daemons and their
        supervisors: every path they run from is under the fleet's unique root)."""
        pids = []
        marker = str(self.root).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids
