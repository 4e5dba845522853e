"""The model repository: ``<repo>/<model>/<version>/model.tflite``, ``<repo>/<model>/config.toml``.

A model directory without ``config.toml`` serves with a configuration derived from the
model file (task ``tensor``: its own tensors, batched when its batch can be resized);
``config.toml`` adds or overrides (task, labels, preprocessing, batching).

Loading is all-or-nothing per version and isolated per model: a version whose file is
missing, corrupt (size or sha256 differs from ``manifest.json``), not signed as the
``SigningPolicy`` demands (``edgeshard.signing``) or not a loadable TFLite model is
refused with a clear error, and every other model and version still serves. The newest
version that loaded is the default, so when the newest is refused the one before it
serves. Each file is read once: the bytes checked against the manifest are the bytes
served.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_node.errors import ModelLoadError, ModelNotFoundError, ModelUnavailableError
from edge_node.model_config import CONFIG_FILE, DEFAULT_MAX_BATCH_SIZE, ModelSpec
from edge_node.runtime import (
    CPU,
    DelegateError,
    DelegateSpec,
    TFLiteModel,
    batch_resizable,
    check_delegate,
)
from edge_node.tasks import Signature, Task, TaskContext, make_task
from edgeshard.manifest import (
    CALIBRATION_FILE,
    CONFIG_ENTRY,
    MODEL_FILE,
    PROFILE_FILE,
    FileDigest,
    ManifestError,
)
from edgeshard.profile import DriftProfile, ProfileError, parse_profile
from edgeshard.signing import SigningPolicy, verify_version

log = logging.getLogger(__name__)

@dataclass
class ModelVersion:
    """One loaded version: its bytes (for per-thread interpreters), tensors and task."""

    spec: ModelSpec
    version: str
    path: Path
    content: bytes
    signature: Signature
    task: Task
    sha256: str
    temperature: float = 1.0  # softmax temperature from calibration.json (1.0 without one)
    signed_by: str = ""  # key id of the trusted key that verified the manifest ("": none)
    delegate: DelegateSpec | None = None  # the external delegate in use (None: the CPU)
    delegate_fallback: str = ""  # why a configured delegate is not in use ("": it is)
    profile: DriftProfile | None = None  # drift reference from profile.json (None: none)

    @property
    def runs_on(self) -> str:
        """``"cpu"`` (built-in kernels, XNNPACK) or the external delegate's library."""
        return self.delegate.library if self.delegate is not None else CPU

    @property
    def key(self) -> tuple[str, str]:
        """``(model name, version)``: the version's key in tasks, batches and statistics."""
        return (self.spec.name, self.version)

    @property
    def max_batch_size(self) -> int:
        """The most rows one invocation of this version takes (1: not batched)."""
        return self.signature.max_batch_size

    def new_interpreter(self, num_threads: int = 1) -> TFLiteModel:
        """A new TFLite interpreter for this version, using ``num_threads`` threads."""
        return TFLiteModel(self.content, num_threads=num_threads, source=str(self.path),
                           delegate=self.delegate)


@dataclass
class ModelEntry:
    """A model directory: its spec, the versions that loaded and those that did not."""

    name: str
    spec: ModelSpec | None
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # version ("" = model) -> reason
    reasons: dict[str, str] = field(default_factory=dict)  # version ("" = model) -> code
    # version ("" = the config) -> the files last tried, so a refusal is not retried as is
    fingerprints: dict[str, object] = field(default_factory=dict)

    @property
    def latest(self) -> ModelVersion | None:
        """The loaded version with the highest number; ``None`` when no version loaded."""
        versions = list(self.versions)  # a copy: a hot swap may add or remove one meanwhile
        if not versions:
            return None
        return self.versions.get(max(versions, key=int))


def load_version(spec: ModelSpec, version_dir: Path, policy: SigningPolicy | None = None,
                 config: bytes | None = None,
                 default_delegate: DelegateSpec | None = None) -> ModelVersion:
    """Read, verify and trial-load one version; raise ModelLoadError with the reason.

    ``policy`` says which signatures to check and whether one is required (none:
    sha256 checked when a manifest lists it, as it always is); ``config`` is the bytes of
    the model's ``config.toml`` that ``spec`` was parsed from, so that a signature covers
    them. Files are verified before the model reaches the interpreter.
    ``default_delegate`` (the node's ``--delegate``) applies unless the config names its own
    ``[delegate]``; a delegate that cannot run the model leaves it on the CPU, logged once.
    """
    policy = policy or SigningPolicy()
    path = version_dir / MODEL_FILE
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: model file missing", "file_missing") from None
    read = {MODEL_FILE: content}
    if config is not None:
        read[CONFIG_ENTRY] = config
    calibration = _read_optional(version_dir / CALIBRATION_FILE)
    if calibration is not None:
        read[CALIBRATION_FILE] = calibration
    profile_bytes = _read_optional(version_dir / PROFILE_FILE)
    if profile_bytes is not None:
        read[PROFILE_FILE] = profile_bytes
    try:
        manifest = verify_version(version_dir, spec.name, read, policy)
    except ManifestError as exc:
        raise ModelLoadError(str(exc), exc.reason) from None
    signed_by = manifest.key_id if manifest and manifest.signed and policy.trust.keys else ""
    trial = TFLiteModel(content, source=str(path))
    temperature = _parse_temperature(calibration, version_dir / CALIBRATION_FILE)
    profile = None
    if profile_bytes is not None:
        try:
            profile = parse_profile(profile_bytes, str(version_dir / PROFILE_FILE))
        except ProfileError as exc:
            raise ModelLoadError(str(exc)) from None
        if profile.confidence is not None and abs(profile.temperature - temperature) > 1e-6:
            log.warning("model %s version %s: %s holds confidences at temperature %g but the "
                        "version serves %g: confidence drift is measured against another "
                        "scale (remake it: edge-coordinator profile --model %s)", spec.name,
                        version_dir.name, PROFILE_FILE, profile.temperature, temperature,
                        spec.name)
    signature = _signature(spec, content, trial, path)
    task = make_task(spec.task, TaskContext(
        name=spec.name, signature=signature, options=spec.options,
        where=str(version_dir.parent / CONFIG_FILE) if spec.configured else str(path),
        labels=spec.labels, temperature=temperature, dequantize=spec.dequantize))
    delegate = None if spec.cpu_only else spec.delegate or default_delegate
    fallback = ""
    if delegate is not None:
        try:
            check_delegate(delegate)
            TFLiteModel(content, source=str(path), delegate=delegate)
        except DelegateError as exc:
            fallback = str(exc)
            log.warning("model %s version %s: delegate %s not used (%s); running on the CPU "
                        "(XNNPACK)", spec.name, version_dir.name, delegate.library, fallback)
            delegate = None
    return ModelVersion(
        spec, version_dir.name, path, content, signature, task,
        FileDigest.of(content).sha256, temperature=temperature, signed_by=signed_by,
        delegate=delegate, delegate_fallback=fallback, profile=profile,
    )


def _signature(spec: ModelSpec, content: bytes, model: TFLiteModel, path: Path) -> Signature:
    """The model's tensors and batching, with the config's ``max_batch_size`` checked."""
    wanted = spec.max_batch_size
    batched = wanted != 0 and batch_resizable(content, model)
    if not batched:
        if wanted not in (None, 0, 1):
            raise ModelLoadError(
                f"{path}: max_batch_size {wanted}: this model's batch cannot be resized (its "
                "first dimension is not a batch the interpreter can grow), so it serves one "
                "item per call; remove max_batch_size or set it to 1")
        return Signature(model.inputs, model.outputs, False, 1)
    return Signature(model.inputs, model.outputs, True, wanted or DEFAULT_MAX_BATCH_SIZE)


def _files_state(version_dir: Path) -> tuple:
    """Names, sizes and modification times of a version directory's files."""
    try:
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns)
                            for p in version_dir.iterdir() if (st := p.stat())))
    except OSError:
        return ()


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _parse_temperature(content: bytes | None, path: Path) -> float:
    """Softmax temperature fitted by calibration (``content`` of ``path``); 1.0 without one."""
    if content is None:
        return 1.0
    try:
        temperature = float(json.loads(content)["temperature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: needs a numeric 'temperature': {exc}") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise ModelLoadError(f"{path}: temperature must be a finite number > 0")
    return temperature


class ModelRepository:
    """All models under one directory, loaded once at start-up.

    ``policy`` decides which versions' signatures are checked and required (default:
    none required, sha256 checked where a manifest lists it); ``on_refused(model,
    version, reason)`` is called for each refusal (``version`` "" when the whole model
    is), ``reason`` being a ``ModelLoadError.reason`` code; ``delegate`` is the external
    delegate for models whose config names none (the node's ``--delegate``).
    """

    def __init__(self, root: Path, policy: SigningPolicy | None = None,
                 on_refused: Callable[[str, str, str], None] | None = None,
                 delegate: DelegateSpec | None = None):
        self.root = Path(root)
        self.policy = policy or SigningPolicy()
        self.on_refused = on_refused
        self.delegate = delegate
        self.models: dict[str, ModelEntry] = {}

    def load(self) -> None:
        """Load every model directory under ``root``, recording (not raising) what fails to load.

        Raises ``ModelLoadError`` only when ``root`` is not a directory.
        """
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a directory")
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            self.models[model_dir.name] = self._load_model(model_dir)

    def refuse(self, entry: ModelEntry, version: str, exc: ModelLoadError) -> None:
        """Record, log and report that ``version`` of ``entry`` ("": the model) is refused."""
        entry.failures[version] = str(exc)
        entry.reasons[version] = exc.reason
        if version:
            log.error("model %s version %s refused (%s): %s", entry.name, version, exc.reason,
                      exc)
        else:
            log.error("model %s refused (%s): %s", entry.name, exc.reason, exc)
        if self.on_refused is not None:
            self.on_refused(entry.name, version, exc.reason)

    def _load_model(self, model_dir: Path) -> ModelEntry:
        entry = ModelEntry(model_dir.name, None)
        for mv in self.load_new(entry, model_dir):
            entry.versions[mv.version] = mv
        self._log_outcome(entry)
        return entry

    def load_new(self, entry: ModelEntry, model_dir: Path | None = None,
                 accept: Callable[[ModelVersion], None] | None = None,
                 retry: bool = False, refused: list[str] | None = None) -> list[ModelVersion]:
        """Read the model's config and load every version directory of ``entry`` that is
        not loaded yet, oldest first; returns them without publishing them.

        A version refused before is tried again only when its files changed (or with
        ``retry``, for an explicit load). ``accept(mv)``
        may refuse a loaded version by raising ``ModelLoadError`` (e.g. an incompatible
        signature). Refusals are recorded in ``entry``, reported like at start-up, and
        appended to ``refused`` (``"model:version: reason"``) when given.
        """
        model_dir = model_dir or self.root / entry.name
        config_path = model_dir / CONFIG_FILE
        try:
            config = config_path.read_bytes()
        except FileNotFoundError:
            config = None  # no config: everything comes from the model file
        except OSError:
            config = b""  # from_toml says why
        try:
            spec = (ModelSpec(entry.name) if config is None else
                    ModelSpec.from_toml(config_path, entry.name, config or None))
        except ModelLoadError as exc:
            if retry or entry.fingerprints.get("") != config:
                entry.fingerprints[""] = config
                self.refuse(entry, "", exc)
                if refused is not None:
                    refused.append(f"{entry.name} (config): {exc}")
            return []
        entry.failures.pop("", None)
        entry.reasons.pop("", None)
        entry.spec = spec
        try:
            version_dirs = sorted(
                (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                key=lambda p: int(p.name),
            )
        except OSError:
            version_dirs = []
        if not version_dirs and not entry.versions:
            entry.failures[""] = f"{model_dir}: no numeric version directories"
        loaded = []
        for vdir in version_dirs:
            if vdir.name in entry.versions:
                continue
            fingerprint = (config, _files_state(vdir))
            if not retry and entry.fingerprints.get(vdir.name) == fingerprint:
                continue  # refused before, and nothing changed since
            entry.fingerprints[vdir.name] = fingerprint
            try:
                mv = load_version(spec, vdir, self.policy, config, self.delegate)
                if accept is not None:
                    accept(mv)
            except ModelLoadError as exc:
                self.refuse(entry, vdir.name, exc)
                if refused is not None:
                    refused.append(f"{entry.name}:{vdir.name}: {exc}")
                continue
            entry.failures.pop(vdir.name, None)
            entry.reasons.pop(vdir.name, None)
            signature = (f" (signed by key {mv.signed_by})" if mv.signed_by
                         else " (unsigned)" if self.policy.trust.keys else "")
            batching = (f"batches up to {mv.max_batch_size}" if mv.signature.batched
                        else "one item per call (max_batch_size = 0 in its config)"
                        if spec.max_batch_size == 0
                        else "one item per call (its batch cannot be resized)")
            log.info("loaded %s version %s from %s: task %s, %s, on %s%s", entry.name,
                     vdir.name, vdir, mv.task.kind, batching, mv.runs_on, signature)
            loaded.append(mv)
        return loaded

    @staticmethod
    def _log_outcome(entry: ModelEntry) -> None:
        """Say which version serves when a newer one was refused, or that none serves."""
        refused = sorted((v for v in entry.failures if v), key=int)
        if not refused:
            return
        listed = ", ".join(f"{v} ({entry.reasons[v]})" for v in refused)
        latest = entry.latest
        if latest is None:
            log.error("model %s is not served: every version was refused: %s", entry.name,
                      listed)
        elif int(refused[-1]) > int(latest.version):
            log.warning("model %s: serving version %s; newer version(s) refused: %s",
                        entry.name, latest.version, listed)

    def ready_versions(self) -> list[ModelVersion]:
        """Every version that loaded, over all models."""
        return [v for e in list(self.models.values()) for v in list(e.versions.values())]

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve for a request; raises NotFound/Unavailable with the reason."""
        entry = self.models.get(name)
        if entry is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFoundError(f"model_name: unknown model {name!r} (available: {known})")
        if version:
            if version in entry.versions:
                return entry.versions[version]
            if version in entry.failures:
                raise ModelUnavailableError(
                    f"model_version: {name} version {version} failed to load "
                    f"({entry.reasons.get(version, 'invalid_model')}): "
                    f"{entry.failures[version]}"
                )
            raise ModelNotFoundError(
                f"model_version: {name} has no version {version!r} "
                f"(ready: {', '.join(sorted(entry.versions, key=int)) or 'none'})"
            )
        latest = entry.latest
        if latest is None:
            reasons = "; ".join(entry.failures.values()) or "no versions"
            raise ModelUnavailableError(f"model_name: {name} is not available: {reasons}")
        return latest
