"""Model versions that come and go while the node serves: load, warm, switch, unload.

``ModelManager.reload()`` (from the repository poller, or Triton's RepositoryModelLoad)
loads every version directory not loaded yet, checks it like at start-up (manifest,
signature, the task's fit) and that its inputs and outputs match the version now serving
(unless forced), warms one interpreter per worker, and only then publishes it: new
requests go to the newest published version from that moment; requests already running
finish on theirs. Versions beyond the newest ``keep_versions`` are unpublished at once
and freed once no request for them is in flight. A version that fails any step never
serves, is not retried until its files change, and shows in the log, the
``edgeshard_node_versions_refused_total`` metric and ``index()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_node.engine import InferenceEngine
from edge_node.errors import ModelLoadError, ModelNotFoundError
from edge_node.repository import ModelEntry, ModelRepository, ModelVersion

log = logging.getLogger(__name__)

READY, UNAVAILABLE, UNLOADING = "READY", "UNAVAILABLE", "UNLOADING"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a model version, its state and why."""

    name: str
    version: str
    state: str
    reason: str = ""


def signature_of(mv: ModelVersion) -> tuple:
    """What clients depend on: the task's input and output names, dtypes and shapes."""
    return (mv.task.kind,
            tuple((t.name, str(t.dtype), t.shape) for t in mv.task.inputs),
            tuple((t.name, str(t.dtype), t.shape) for t in mv.task.outputs))


class ModelManager:
    """Hot swap of the versions of every model in one repository, for one engine.

    ``keep_versions`` is how many of each model's newest loaded versions stay loaded
    (for pinned requests and instant rollback). Coordinators learn the new set of
    versions from the node's next heartbeat.
    """

    def __init__(self, repository: ModelRepository, engine: InferenceEngine,
                 keep_versions: int = 2):
        self.repository = repository
        self.engine = engine
        self.keep_versions = max(1, keep_versions)
        self._lock = threading.RLock()  # one swap at a time
        self._retiring: dict[tuple[str, str], ModelVersion] = {}
        self._unloaded: set[str] = set()  # models unloaded by request: polls leave them
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- threads ---------------------------------------------------------------------------
    def start(self, poll_s: float) -> None:
        """Trim every model to its newest ``keep_versions``, free retired versions as their
        requests end, and poll the repository every ``poll_s`` seconds (0: never)."""
        with self._lock:
            for entry in self.repository.models.values():
                for version in sorted(entry.versions, key=int)[:-self.keep_versions]:
                    self._retire(entry, version, f"older than the {self.keep_versions} "
                                 "newest (--keep-versions)")
            self._free_retired()
        targets = [("model-unload", self._reap, ())]
        if poll_s > 0:
            targets.append(("model-poller", self._poll, (poll_s,)))
        for name, target, args in targets:
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop polling and freeing (waits for a swap in progress)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _reap(self) -> None:
        while not self._stop.wait(0.05 if self._retiring else 0.5):
            with self._lock:
                self._free_retired()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reload(None)
            except Exception:  # noqa: BLE001 - the poller must survive anything
                log.exception("repository poll failed; trying again in %.1fs", interval)

    # -- the swap --------------------------------------------------------------------------
    def reload(self, name: str | None, force: bool = False) -> tuple[list[str], list[str]]:
        """Load what is new in the repository for model ``name`` (None: every model not
        unloaded by request); returns ``(added, refused)``: ``"model:version"`` for each
        version now serving, and ``"model:version: reason"`` for each refused this time.

        Raises ``ModelNotFoundError`` when ``name`` has no directory in the repository.
        A version that fails is recorded and returned, not raised.
        """
        with self._lock:
            if name is not None:
                self.check_loadable(name)
                self._unloaded.discard(name)
                names = [name]
            else:
                names = sorted({p.name for p in _model_dirs(self.repository.root)}
                               | set(self.repository.models))
            added: list[str] = []
            refused: list[str] = []
            for model in names:
                if model in self._unloaded:
                    continue
                added += self._reload_model(model, force, name is not None, refused)
            self._free_retired()
        return added, refused

    def _reload_model(self, name: str, force: bool, explicit: bool,
                      refused: list[str]) -> list[str]:
        model_dir = self.repository.root / name
        entry = self.repository.models.get(name)
        if not model_dir.is_dir():  # the directory went away: so does the model
            if entry is None or not entry.versions:
                return []
            for version in list(entry.versions):
                self._retire(entry, version, "its model directory was removed")
            entry.failures[""] = f"{model_dir}: directory removed"
            entry.reasons[""] = "file_missing"
            return []
        if entry is None:
            entry = self.repository.models[name] = ModelEntry(name, None)
        added = []
        for mv in self.repository.load_new(entry, model_dir, self._acceptor(entry, force),
                                           retry=explicit, refused=refused):
            try:
                self.engine.add_version(mv)
            except Exception as exc:  # noqa: BLE001 - any failure keeps it from serving
                failure = ModelLoadError(f"{mv.path}: warm-up failed: {exc}", "warmup_failed")
                self.repository.refuse(entry, mv.version, failure)
                refused.append(f"{name}:{mv.version}: {failure}")
                continue
            previous = entry.latest
            entry.versions[mv.version] = mv  # the switch: new requests resolve to it
            added.append(f"{name}:{mv.version}")
            latest = entry.latest
            if latest is mv:
                log.info("model %s: now serving version %s%s", name, mv.version,
                         f" (was {previous.version})" if previous is not None else "")
        for version in [v for v in entry.failures if v and not (model_dir / v).is_dir()]:
            entry.failures.pop(version)
            entry.reasons.pop(version, None)
            entry.fingerprints.pop(version, None)
        for version in list(entry.versions):
            if not (model_dir / version).is_dir():
                self._retire(entry, version, "its directory was removed")
        for version in sorted(entry.versions, key=int)[:-self.keep_versions]:
            self._retire(entry, version, f"older than the {self.keep_versions} newest "
                         "(--keep-versions)")
        return added

    def _acceptor(self, entry: ModelEntry, force: bool) -> Callable[[ModelVersion], None]:
        """Refuse a new version whose inputs/outputs differ from the one serving."""
        def accept(mv: ModelVersion) -> None:
            current = entry.latest
            if force or current is None or signature_of(mv) == signature_of(current):
                return
            raise ModelLoadError(
                f"{mv.path}: its task, inputs or outputs differ from version "
                f"{current.version}, which clients use now (version {current.version}: "
                f"{_describe(current)}; version {mv.version}: {_describe(mv)}); load it with "
                "the parameter force=true to switch anyway (tritonclient's load_model cannot "
                "send it: use HTTP or a raw RepositoryModelLoad)",
                "incompatible")
        return accept

    def check_loadable(self, name: str) -> None:
        """``ModelNotFoundError`` unless ``name`` has a directory in the repository."""
        if not (self.repository.root / name).is_dir():
            raise ModelNotFoundError(f"model_name: no directory {name!r} in the model "
                                     f"repository {self.repository.root}")

    def check_known(self, name: str) -> None:
        """``ModelNotFoundError`` unless ``name`` is a model this node has seen."""
        if name not in self.repository.models:
            known = ", ".join(sorted(self.repository.models)) or "none"
            raise ModelNotFoundError(f"model_name: unknown model {name!r} "
                                     f"(available: {known})")

    def unload(self, name: str) -> None:
        """Unload every version of ``name``; polls leave it alone until it is loaded again.

        Raises ``ModelNotFoundError`` for an unknown model.
        """
        with self._lock:
            self.check_known(name)
            entry = self.repository.models[name]
            for version in list(entry.versions):
                self._retire(entry, version, "unloaded by request")
            entry.failures[""] = "unloaded by request (RepositoryModelLoad loads it again)"
            entry.reasons[""] = "unloaded"
            self._unloaded.add(name)
            self._free_retired()

    def _retire(self, entry: ModelEntry, version: str, why: str) -> None:
        mv = entry.versions.pop(version)  # unpublished: no new request resolves to it
        self._retiring[mv.key] = mv
        log.info("model %s: unloading version %s (%s)", entry.name, version, why)

    def _free_retired(self) -> None:
        """Free the retired versions that have no request in flight (the others: later)."""
        for key in [k for k in self._retiring if not self.engine.busy(k)]:
            self.engine.remove_version(key)
            del self._retiring[key]
            log.info("model %s: version %s unloaded", *key)

    # -- the index -------------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model version the repository holds or the node serves, with its state."""
        rows: list[IndexEntry] = []
        with self._lock:
            retiring = set(self._retiring)
            for name, entry in sorted(self.repository.models.items()):
                for version in sorted(entry.versions, key=int):
                    rows.append(IndexEntry(name, version, READY))
                if ready_only:
                    continue
                for key in sorted(k for k in retiring if k[0] == name):
                    rows.append(IndexEntry(name, key[1], UNLOADING, "requests in flight"))
                for version, reason in sorted(entry.failures.items()):
                    rows.append(IndexEntry(name, version, UNAVAILABLE, reason))
        return rows


def _describe(mv: ModelVersion) -> str:
    ins = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in mv.task.inputs)
    outs = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in mv.task.outputs)
    return f"task {mv.task.kind}, inputs {ins}, outputs {outs}"


def _model_dirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return []
