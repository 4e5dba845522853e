"""deploy/ansible against a real local fleet: lint, check mode, converge, idempotence,
rollouts (a good release, a model-only change, a broken release), rollbacks.

The fleet is a coordinator and three edge nodes on this machine (inventories/local, with
free ports and a temporary root), run by edgeshard-supervise as `nobody`. The tests run
in order and build on each other, as an operator's day would: each step checks what the
playbook reports, what is on the hosts (release directories, `current`, running pids),
and that the fleet answers real inference, directly and through the coordinator.

Run alone with `python -m pytest -m ansible`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from coordinator.cli.launcher import start_node
from edgeshard.certs import write_fleet_pki
from tests.deploy.fleet import (
    ANSIBLE_DIR,
    COORDINATOR,
    FLEET_PYTHON,
    NODES,
    REPO,
    VENV_BIN,
    LocalFleet,
    build_release,
    cache_dir,
    clean_env,
    reversion_wheel,
    sdist_version,
    wheelhouse,
)

pytestmark = [
    pytest.mark.ansible,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.environ.get("EDGESHARD_PUREPYTHON") == "1",
                       reason="deployment does not depend on the kernel implementation: "
                              "these tests run once, on the compiled kernels"),
]
SETUP_MISSING = "{} is missing: run bash scripts/setup_ansible.sh"


def missing(what: str) -> None:
    """Skip for lack of ``what``, but fail under CI, which runs the setup script."""
    message = SETUP_MISSING.format(what)
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message + " (CI is set: the setup script must have run)", pytrace=False)
    pytest.skip(message)

PLAYBOOKS = ("site.yml", "rollout.yml", "rollback.yml")
CLOUD_MODEL = REPO / "models" / "repository" / "mnist_cloud" / "1" / "model.tflite"
CLOUD_SHA256 = "970a59573ce55733e0146219fdd3f56db51d32be58c9b8624491a1fd44d10c63"


def tool(name: str) -> str:
    return str(VENV_BIN / name)


class Releases:
    """The edgeshard versions the tests roll out: the checkout's own version, the same
    code as a new release, and a broken release."""

    def __init__(self, fleet: LocalFleet, wheel: Path, sdist: Path) -> None:
        self.first = sdist_version(sdist)
        self.second = f"{self.first}.post1"
        self.broken = f"{self.first}.post2"
        reversion_wheel(wheel, self.second, fleet.dist)
        # A packaging mistake: the node's inference engine is missing from the wheel.
        # It installs, its config still parses, and edge-node dies at start with an
        # ImportError: the canary can never turn SERVING.
        reversion_wheel(wheel, self.broken, fleet.dist, drop=("edge_node/engine.py",))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    probe = subprocess.run([str(FLEET_PYTHON), "-c", "import ensurepip, pkg_resources"],
                           capture_output=True, check=False) if FLEET_PYTHON.exists() else None
    if probe is None or probe.returncode != 0:
        missing(f"{FLEET_PYTHON} with venv and setuptools")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    sdist, wheel = build_release(cache)
    wheels = wheelhouse(cache)
    # Not under pytest's tmp dir (0700 for root): nobody must reach its directories.
    root = Path(tempfile.mkdtemp(prefix="edgeshard-fleet-"))
    root.chmod(0o755)
    fleet = LocalFleet(root, [sdist, wheel], wheels)
    fleet.releases_ = Releases(fleet, wheel, sdist)
    fleet.set_vars("group_vars/all.yml", edgeshard_version=fleet.releases_.first)
    fleet.passed = set()
    fleet.model_version = "1"  # the newest version of mnist_edge the nodes serve
    try:
        yield fleet
    finally:
        fleet.stop()
        leftover = fleet._own_pids()
        # Every playbook's output, kept with pytest's temporary directories for a post-mortem.
        if fleet.log.exists():
            shutil.copy(fleet.log, tmp_path_factory.getbasetemp() / "ansible-runs.log")
        shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"processes left running: {leftover}"


def needs(fleet, step: str) -> None:
    """Tests build on each other: skip what cannot run because an earlier step failed."""
    if step not in fleet.passed:
        pytest.skip(f"needs the {step} step, which did not pass")


def infer(address: str, holdout, count: int = 64) -> dict:
    """A real inference of hold-out digits at ``address`` (a node or the coordinator)."""
    images, labels = holdout
    pick = np.random.default_rng(1).permutation(len(images))[:count]
    client = tc.InferenceServerClient(address)
    try:
        image = tc.InferInput("image", [count, 28, 28], "UINT8")
        image.set_data_from_numpy(images[pick])
        result = client.infer("mnist_edge", [image], client_timeout=30)
        response = result.get_response()
        return {
            "accuracy": float(np.mean(result.as_numpy("label") == labels[pick])),
            "model_version": response.model_version,
            "node": response.parameters["node"].string_param,
            "release": client.get_server_metadata(client_timeout=10).version,
        }
    finally:
        client.close()


def assert_fleet_serves(fleet, holdout, release: str, model_version: str = "1") -> None:
    """Every node runs ``release`` and answers correctly, and so does the coordinator."""
    for node, port in fleet.node_ports.items():
        answer = infer(f"127.0.0.1:{port}", holdout)
        assert answer["accuracy"] >= 0.9, (node, answer)
        assert (answer["release"], answer["model_version"], answer["node"]) == (
            release, model_version, node)
    states = fleet.wait_nodes_live()
    assert states == dict.fromkeys(NODES, "live"), states
    answer = infer(f"127.0.0.1:{fleet.coordinator_port}", holdout)
    assert answer["accuracy"] >= 0.9 and answer["node"] in NODES, answer


def daemon_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


# -- static checks ----------------------------------------------------------------------------


def test_yamllint_passes():
    proc = subprocess.run([tool("yamllint"), "--strict", "."], cwd=ANSIBLE_DIR,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile_passes():
    proc = subprocess.run(
        [tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=300,
        env=clean_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                      ANSIBLE_HOME=tempfile.mkdtemp(prefix="ansible-lint-home-")),
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@pytest.mark.parametrize("role", ["edge_node", "coordinator", "edgeshard_release"])
def test_every_role_default_is_documented_in_the_role_readme(role):
    import re

    import yaml

    defaults = yaml.safe_load((ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml").read_text())
    readme = (ANSIBLE_DIR / "roles" / role / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*?) \|", readme, flags=re.MULTILINE))
    assert sorted(defaults) == sorted(k for k in rows if k.startswith(role)), (
        "variables in defaults/main.yml and the README's tables differ")
    for name, value in defaults.items():
        shown = rows[name].strip("`").replace("\\|", "|")
        if isinstance(value, str) and "{{" not in value:
            assert shown in (value, f'"{value}"'), (name, value, shown)
        elif isinstance(value, bool | int):
            assert shown == json.dumps(value), (name, value, shown)


def test_playbooks_pass_syntax_check(fleet):
    result = fleet.playbook("--syntax-check", *PLAYBOOKS)
    assert result.rc == 0, result.output[-3000:]
    production = ANSIBLE_DIR / "inventories" / "production"
    result = fleet.playbook("--syntax-check", *PLAYBOOKS, inventory=production)
    assert result.rc == 0, result.output[-3000:]
    hosts = subprocess.run([tool("ansible-inventory"), "-i", str(production), "--graph"],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert "@edge_nodes_arm64:" in hosts and "|--cam-200.fleet.example" in hosts


# -- the fleet's day --------------------------------------------------------------------------


def test_check_mode_on_a_fresh_fleet_changes_nothing(fleet):
    result = fleet.playbook("--check", "site.yml")
    assert result.rc == 0, result.output[-5000:]
    assert set(result.recap) == {*NODES, COORDINATOR}
    assert all(counts["failed"] == 0 for counts in result.recap.values()), result.recap
    # It reports what it would do, and does none of it.
    assert all(changed > 0 for changed in result.changed().values()), result.recap
    assert not any(fleet.host_dir(host).exists() for host in (*NODES, COORDINATOR))
    fleet.passed.add("check")


def test_converge_installs_and_starts_the_fleet(fleet, holdout):
    first = fleet.releases_.first
    result = fleet.playbook("site.yml")
    assert result.rc == 0, result.output[-5000:]
    for host in (*NODES, COORDINATOR):
        assert fleet.current_release(host) == first
        assert daemon_uid(fleet.pid(host)) == 65534  # nobody: the service user
    # node-c has no wheel for its "architecture": it built the sdist, Cython included.
    node_c = fleet.host_dir("node-c") / "opt"
    assert [p.name for p in (node_c / "dist" / first).iterdir()] == [f"edgeshard-{first}.tar.gz"]
    implementation = subprocess.run(
        [node_c / "releases" / first / "bin" / "python", "-c",
         "import ext; print(ext.IMPLEMENTATION)"],
        capture_output=True, text=True, env=clean_env(), cwd="/", check=True).stdout.strip()
    assert implementation == "cython"
    assert_fleet_serves(fleet, holdout, first)
    fleet.passed.add("converge")


def test_second_converge_changes_nothing(fleet):
    needs(fleet, "converge")
    pids = {host: fleet.pid(host) for host in (*NODES, COORDINATOR)}
    result = fleet.playbook("site.yml")
    assert result.rc == 0, result.output[-5000:]
    assert result.changed() == dict.fromkeys((*NODES, COORDINATOR), 0), result.recap
    assert {host: fleet.pid(host) for host in pids} == pids


def test_check_mode_on_a_converged_fleet_reports_no_changes(fleet):
    """--check --diff on a converged fleet is an operator's dry run: it must not claim
    changes it would not make (the release install did, through pip's check mode)."""
    needs(fleet, "converge")
    result = fleet.playbook("--check", "--diff", "site.yml")
    assert result.rc == 0, result.output[-5000:]
    assert result.changed() == dict.fromkeys((*NODES, COORDINATOR), 0), (
        result.recap, [line for line in result.output.splitlines() if line.startswith("changed")])


def test_systemd_units_render_hardened_and_verify(fleet, tmp_path):
    """The systemd path cannot run here (systemd is not PID 1): render each role's unit
    with the inventory's values (and the default service user) and have systemd-analyze
    check it."""
    needs(fleet, "converge")  # ExecStart must exist for systemd-analyze verify
    playbook = tmp_path / "render_units.yml"
    playbook.write_text(RENDER_UNITS.format(out=tmp_path, roles=ANSIBLE_DIR / "roles"))
    pids = {host: fleet.pid(host) for host in ("node-a", COORDINATOR)}
    result = fleet.playbook(str(playbook))
    assert result.rc == 0, result.output[-3000:]
    assert {host: fleet.pid(host) for host in pids} == pids  # nothing was restarted
    node, coordinator = tmp_path / "edge-node.service", tmp_path / "edge-coordinator.service"
    for unit, dirs in ((node, "node-a/state"), (coordinator, "coord-1/state")):
        text = unit.read_text()
        for line in ("User=edgeshard", "Restart=on-failure", "ProtectSystem=strict",
                     "NoNewPrivileges=true", "MemoryMax=", "CPUQuota=",
                     f"ReadWritePaths={fleet.root}/{dirs}", "RestartPreventExitStatus=2"):
            assert line in text, (unit.name, line)
    assert "CPUQuota=150%" in node.read_text()  # as set
    # By default the cap leaves a tenth of the host's processors to everything else.
    assert f"CPUQuota={len(os.sched_getaffinity(0)) * 90}%" in coordinator.read_text()
    # TimeoutStopSec covers the drain grace (3 s in the local inventory) and a margin.
    assert "TimeoutStopSec=8" in node.read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze (the units rendered but were not verified)")
    for unit in (node, coordinator):
        proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
        proc = subprocess.run([analyze, "security", "--offline=true", "--threshold=30",
                               str(unit)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr


RENDER_UNITS = """\
- name: Render the systemd units of the roles
  hosts: node-a:coord-1
  gather_facts: false
  tasks:
    - name: Render the edge node unit
      ansible.builtin.include_role:
        name: {roles}/edge_node
        tasks_from: systemd-unit
      vars:
        edge_node_systemd_unit_dir: {out}
        edge_node_user: edgeshard
        edge_node_group: edgeshard
        edge_node_cpu_quota: 150%
        # Rendering notifies the restart handler: the running daemons are not for it.
        edge_node_service_enabled: false
      when: inventory_hostname == 'node-a'
    - name: Render the coordinator unit
      ansible.builtin.include_role:
        name: {roles}/coordinator
        tasks_from: systemd-unit
      vars:
        coordinator_systemd_unit_dir: {out}
        coordinator_user: edgeshard
        coordinator_group: edgeshard
        coordinator_service_enabled: false
      when: inventory_hostname == 'coord-1'
"""


def test_rollout_moves_every_node_to_the_new_release(fleet, holdout):
    needs(fleet, "converge")
    releases = fleet.releases_
    # The board behind node-c now has a published wheel too (no build on the device).
    fleet.set_host_var("node-c", "edge_node_wheels", remove=True)
    fleet.set_vars("group_vars/all.yml", edgeshard_version=releases.second)
    before = {node: fleet.pid(node) for node in NODES}
    coordinator_pid = fleet.pid(COORDINATOR)
    result = fleet.playbook("rollout.yml")
    assert result.rc == 0, result.output[-5000:]
    assert set(result.recap) == set(NODES)
    for node in NODES:
        assert fleet.current_release(node) == releases.second
        assert fleet.releases(node) == sorted([releases.first, releases.second])
        assert fleet.pid(node) != before[node]  # restarted, on the new release
    assert fleet.pid(COORDINATOR) == coordinator_pid  # rollout.yml touches nodes only
    # The canary went alone, then the others: one batch per host here (10% of 3 is 1).
    assert result.output.count("PLAY [Roll out edgeshard to the edge nodes") == 3
    assert_fleet_serves(fleet, holdout, releases.second)
    fleet.passed.add("rollout")


def test_model_only_rollout_serves_the_new_model_version(fleet, holdout):
    needs(fleet, "rollout")
    models = fleet._load("group_vars/edge_nodes.yml")["edge_node_models"]
    models[0]["versions"].append({"version": 2, "src": str(CLOUD_MODEL),
                                  "sha256": CLOUD_SHA256})
    fleet.set_vars("group_vars/edge_nodes.yml", edge_node_models=models)
    before = {node: fleet.pid(node) for node in NODES}
    # The gates are those of every rollout; one batch of all nodes keeps the test short
    # (the canary batches are exercised by the release rollouts).
    result = fleet.playbook("rollout.yml", "-e", _json({"rollout_batches": ["100%"]}))
    assert result.rc == 0, result.output[-5000:]
    for node in NODES:
        assert fleet.current_release(node) == fleet.releases_.second  # same code
        assert fleet.pid(node) != before[node]
    fleet.model_version = "2"
    assert_fleet_serves(fleet, holdout, fleet.releases_.second, fleet.model_version)
    fleet.passed.add("models")


def test_a_model_file_with_the_wrong_sha256_is_refused_before_the_switch(fleet, holdout):
    """Only node-a gets the bad file, and all nodes go in one batch: node-a fails before
    anything is switched, and the others finish the batch, undrained, before the rollout
    stops."""
    needs(fleet, "rollout")
    models = fleet._load("group_vars/edge_nodes.yml")["edge_node_models"]
    bad = [dict(models[0], versions=[*models[0]["versions"],
                                     {"version": 9, "src": str(CLOUD_MODEL),
                                      "sha256": "0" * 64}])]
    fleet.set_host_var("node-a", "edge_node_models", bad)
    before = {node: fleet.pid(node) for node in NODES}
    try:
        result = fleet.playbook("rollout.yml", "-e", _json({"rollout_batches": ["100%"]}))
    finally:
        fleet.set_host_var("node-a", "edge_node_models", remove=True)
    assert result.rc != 0
    assert f"has sha256 {CLOUD_SHA256}, not {'0' * 64}" in result.text
    assert "Rollout failed on node-a" in result.text
    assert result.recap["node-a"]["failed"] == 1
    assert all(result.recap[node]["failed"] == 0 for node in ("node-b", "node-c"))
    # Nothing was switched on node-a, so nothing restarted anywhere, and every node is
    # back in service.
    assert {node: fleet.pid(node) for node in NODES} == before
    assert not list((fleet.host_dir("node-a") / "opt" / "models" / "store").glob("0000*"))
    assert fleet.wait_nodes_live() == dict.fromkeys(NODES, "live")
    assert_fleet_serves(fleet, holdout, fleet.releases_.second, fleet.model_version)


def test_a_broken_release_fails_the_canary_and_is_rolled_back(fleet, holdout):
    needs(fleet, "rollout")
    releases = fleet.releases_
    fleet.set_vars("group_vars/all.yml", edgeshard_version=releases.broken)
    before = {node: fleet.pid(node) for node in NODES}
    result = fleet.playbook("rollout.yml")
    assert result.rc != 0
    assert "Rollout failed on node-a" in result.text
    assert f"rolled back to release {releases.second}" in result.text
    assert "did not report SERVING" in result.text  # the gate said why,
    # and the node's own log why (YAML doubles the quotes around the module name).
    assert "ModuleNotFoundError: No module named ''edge_node.engine''" in result.text
    assert result.recap["node-a"]["rescued"] == 1 and result.recap["node-a"]["failed"] == 1
    # The other hosts were never touched: not in the run at all, same release, same pid.
    assert set(result.recap) == {"node-a"}
    for node in ("node-b", "node-c"):
        assert fleet.current_release(node) == releases.second
        assert releases.broken not in fleet.releases(node)
        assert fleet.pid(node) == before[node]
    # The canary runs the previous release again (the broken one stays installed, unused).
    assert fleet.current_release("node-a") == releases.second
    assert releases.broken in fleet.releases("node-a")
    assert_fleet_serves(fleet, holdout, releases.second, fleet.model_version)
    fleet.set_vars("group_vars/all.yml", edgeshard_version=releases.second)
    fleet.passed.add("broken")


def test_rollback_to_a_release_that_is_not_installed_fails_before_draining(fleet, holdout):
    needs(fleet, "rollout")
    before = {node: fleet.pid(node) for node in NODES}
    result = fleet.playbook("rollback.yml", "-e", "rollback_release=9.9.9")
    assert result.rc != 0
    installed = ", ".join(fleet.releases("node-a"))
    assert (f"Release 9.9.9 is not installed on node-a under {fleet.root}/node-a/opt/releases."
            f" Installed: {installed}.") in result.text
    assert {node: fleet.pid(node) for node in NODES} == before
    assert fleet.wait_nodes_live() == dict.fromkeys(NODES, "live")  # nothing left drained


def test_rollback_without_a_release_name_says_how_to_give_one(fleet):
    result = fleet.playbook("rollback.yml")
    assert result.rc != 0
    assert "Name the release to return to: -e rollback_release=VERSION" in result.text


def test_rollback_returns_the_fleet_to_a_named_release(fleet, holdout):
    needs(fleet, "rollout")
    first = fleet.releases_.first
    result = fleet.playbook("rollback.yml", "-e", f"rollback_release={first}",
                            "-e", _json({"rollout_batches": ["100%"]}))
    assert result.rc == 0, result.output[-5000:]
    for node in NODES:
        assert fleet.current_release(node) == first
    assert_fleet_serves(fleet, holdout, first, fleet.model_version)


def _json(value) -> str:
    return json.dumps(value)


# -- a secured fleet: API and join tokens, mutual TLS, signed models --------------------------


def secure_infer(address: str, holdout, pki: Path, token: str | None, count: int = 32) -> dict:
    """A real inference over mutual TLS, with ``token`` as the bearer token (None: none)."""
    images, labels = holdout
    pick = np.random.default_rng(2).permutation(len(images))[:count]
    client = tc.InferenceServerClient(
        address, ssl=True, root_certificates=str(pki / "ca.pem"),
        private_key=str(pki / "client.key"), certificate_chain=str(pki / "client.pem"))
    headers = {"authorization": f"Bearer {token}"} if token else None
    try:
        image = tc.InferInput("image", [count, 28, 28], "UINT8")
        image.set_data_from_numpy(images[pick])
        result = client.infer("mnist_edge", [image], headers=headers, client_timeout=30)
        response = result.get_response()
        return {"accuracy": float(np.mean(result.as_numpy("label") == labels[pick])),
                "model_version": response.model_version,
                "node": response.parameters["node"].string_param}
    finally:
        client.close()


def sign_models(fleet, models: list[dict]) -> tuple[Path, list[dict]]:
    """What an operator does on the control node: a signing key, each shipped version
    signed in a repository laid out as the node's; returns the public key and
    edge_node_models naming each version's signed manifest."""
    keys, repo = fleet.root / "signing", fleet.root / "signed-models"
    subprocess.run([tool("edge-coordinator"), "signing-key", "--out", keys], check=True,
                   capture_output=True, env=clean_env(), timeout=60)
    signed = []
    for model in models:
        (repo / model["name"]).mkdir(parents=True)
        shutil.copy(model["config"].replace("{{ local_fleet_models }}", str(
            REPO / "models" / "repository")), repo / model["name"] / "config.toml")
        versions = []
        for version in model["versions"]:
            where = repo / model["name"] / str(version["version"])
            where.mkdir()
            src = version["src"].replace("{{ local_fleet_models }}",
                                         str(REPO / "models" / "repository"))
            shutil.copy(src, where / "model.tflite")
            versions.append(dict(version, src=str(where / "model.tflite"),
                                 manifest=str(where / "manifest.json")))
        subprocess.run([tool("edge-coordinator"), "sign-model", "--key",
                        keys / "model-signing.key",
                        *(repo / model["name"] / str(v["version"]) for v in versions)],
                       check=True, capture_output=True, env=clean_env(), timeout=60)
        signed.append(dict(model, config=str(repo / model["name"] / "config.toml"),
                           versions=versions))
    return keys / "model-signing.pub", signed


def test_a_secured_fleet_converges_and_rolls_out(fleet, holdout):
    """Tokens, mutual TLS and signed models turned on for a serving fleet with site.yml,
    then a rollout through the secured coordinator: drain, gates and the fleet's check
    all carry the admin token over mutual TLS, and no secret reaches the run's output,
    a command line or a world-readable file. A node without its join token is refused."""
    needs(fleet, "rollout")
    pki = fleet.root / "pki"
    write_fleet_pki(pki, [*NODES, "node-x"])
    admin_token = secrets.token_urlsafe(32)
    join_tokens = {node: secrets.token_urlsafe(32) for node in NODES}
    public_key, models = sign_models(
        fleet, fleet._load("group_vars/edge_nodes.yml")["edge_node_models"])
    tls = "{{ local_fleet_root }}/{{ inventory_hostname }}/etc/tls/"
    fleet.set_vars(
        "group_vars/all.yml", local_fleet_pki=str(pki), local_fleet_admin_token=admin_token,
        local_fleet_join_tokens=join_tokens)
    fleet.set_vars(
        "group_vars/coordinators.yml",
        coordinator_tls_cert=tls + "coordinator.pem", coordinator_tls_key=tls + "coordinator.key",
        coordinator_tls_ca=tls + "ca.pem",
        coordinator_tls_cert_src=str(pki / "coordinator.pem"),
        coordinator_tls_key_src=str(pki / "coordinator.key"),
        coordinator_tls_ca_src=str(pki / "ca.pem"),
        # The admin command and the gate present the coordinator's own certificate.
        coordinator_admin_tls_cert=tls + "coordinator.pem",
        coordinator_admin_tls_key=tls + "coordinator.key", coordinator_admin_tls_ca=tls + "ca.pem",
        coordinator_auth_tokens=[{"name": "ops", "roles": ["admin"],
                                  "secret": "{{ local_fleet_admin_token }}"}] + [
            {"name": node, "roles": "node",
             "secret": f"{{{{ local_fleet_join_tokens['{node}'] }}}}"} for node in NODES],
        coordinator_admin_token="{{ local_fleet_admin_token }}",
        coordinator_max_followers=64)
    fleet.set_vars(
        "group_vars/edge_nodes.yml",
        edge_node_tls_cert=tls + "node.pem", edge_node_tls_key=tls + "node.key",
        edge_node_tls_ca=tls + "ca.pem",
        edge_node_tls_cert_src="{{ local_fleet_pki }}/{{ inventory_hostname }}.pem",
        edge_node_tls_key_src="{{ local_fleet_pki }}/{{ inventory_hostname }}.key",
        edge_node_tls_ca_src="{{ local_fleet_pki }}/ca.pem",
        edge_node_join_token="{{ local_fleet_join_tokens[inventory_hostname] }}",
        edge_node_coordinator_token="{{ local_fleet_admin_token }}",
        edge_node_require_signed=True, edge_node_trust_keys=[str(public_key)],
        edge_node_models=models)
    before = {host: fleet.pid(host) for host in (*NODES, COORDINATOR)}
    result = fleet.playbook("site.yml")
    assert result.rc == 0, result.output[-5000:]
    secrets_given = [admin_token, *join_tokens.values()]
    assert not [t for t in secrets_given if t in fleet.log.read_text()]
    for host in (*NODES, COORDINATOR):
        assert fleet.pid(host) != before[host]  # restarted with the new settings

    # The token file: digests only, 0600, the service user's (nobody).
    tokens_file = fleet.host_dir(COORDINATOR) / "etc" / "edge-coordinator.tokens.toml"
    info = tokens_file.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, 65534)
    assert not [t for t in secrets_given if t in tokens_file.read_text()]
    # The join token reaches the node's environment, not its argv or a readable file.
    node_a = fleet.pid("node-a")
    assert join_tokens["node-a"].encode() not in Path(f"/proc/{node_a}/cmdline").read_bytes()
    assert (f"EDGESHARD_JOIN_TOKEN={join_tokens['node-a']}".encode()
            in Path(f"/proc/{node_a}/environ").read_bytes())
    env_file = fleet.host_dir("node-a") / "etc" / "edge-node.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    for host in NODES:
        for path in (fleet.host_dir(host) / "etc").glob("*.*"):
            if path.stat().st_mode & 0o004:
                assert join_tokens[host] not in path.read_text(errors="replace"), path
    # The nodes serve the signed versions (the per-node gates checked the newest).
    manifest = json.loads((fleet.host_dir("node-b") / "opt" / "models" / "current" / "mnist_edge"
                           / fleet.model_version / "manifest.json").read_text())
    assert manifest["signature"] and manifest["version"] == fleet.model_version

    coordinator = f"127.0.0.1:{fleet.coordinator_port}"
    assert fleet.wait_nodes_live() == dict.fromkeys(NODES, "live")  # admin: token + mTLS
    answer = secure_infer(coordinator, holdout, pki, admin_token)
    assert answer["accuracy"] >= 0.9 and answer["node"] in NODES, answer
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        secure_infer(coordinator, holdout, pki, None)

    # A node with a certificate from the fleet's CA but no join token is refused.
    intruder = start_node(
        "node-x", REPO / "models" / "repository",
        fleet.root / "node-x", extra_args=[
            "--coordinator", coordinator, "--metrics-port", "0", "--workers", "1",
            "--tls-cert", str(pki / "node-x.pem"), "--tls-key", str(pki / "node-x.key"),
            "--tls-ca", str(pki / "ca.pem")])
    try:
        log = fleet.host_dir(COORDINATOR) / "log" / "edge-coordinator.log"
        deadline = time.monotonic() + 20
        while "refused Register of node 'node-x'" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert "node-x" not in fleet.node_states()
    finally:
        intruder.stop(grace=5)

    # A rollout through the secured coordinator: drain and undrain (admin token over
    # mutual TLS), the gates, the fleet's check. Nothing changed, so nothing restarts.
    pids = {node: fleet.pid(node) for node in NODES}
    result = fleet.playbook("rollout.yml", "-e", _json({"rollout_batches": ["100%"]}))
    assert result.rc == 0, result.output[-5000:]
    assert "Drain or undrain the node at its coordinators, drain=True" in result.output
    assert all(result.changed()[node] == 2 for node in NODES), result.recap  # drain, undrain
    assert {node: fleet.pid(node) for node in NODES} == pids
    assert not [t for t in secrets_given if t in result.output]
    assert fleet.wait_nodes_live() == dict.fromkeys(NODES, "live")
    answer = secure_infer(coordinator, holdout, pki, admin_token)
    assert answer["accuracy"] >= 0.9 and answer["model_version"] == fleet.model_version
