"""The model repository: ``<repo>/<model>/config.toml`` + ``<repo>/<model>/<version>/model.tflite``.

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
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_node.errors import ModelLoadError, ModelNotFoundError, ModelUnavailableError
from edge_node.runtime import TensorSpec, TFLiteModel
from edgeshard.manifest import CALIBRATION_FILE, CONFIG_ENTRY, MODEL_FILE, FileDigest, ManifestError
from edgeshard.signing import SigningPolicy, verify_version

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class ModelSpec:
    """A model's ``config.toml``: how to turn client inputs into model inputs and back."""

    name: str
    platform: str
    max_batch_size: int
    description: str
    input_name: str
    layout: str
    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output_name: str
    output_kind: str  # "logits" (the node applies softmax) or "probabilities"
    labels: tuple[str, ...]

    @classmethod
    def from_toml(cls, path: Path, dir_name: str, content: bytes | None = None) -> ModelSpec:
        """Parse and validate the model config at ``path`` for the model directory ``dir_name``
        (``content``: the file's bytes, when already read).

        Raises ``ModelLoadError`` naming the file for a missing file, invalid TOML, a missing or
        mistyped key, a name that differs from the directory, or an unsupported value.
        """
        try:
            if content is None:
                content = path.read_bytes()
            data = tomllib.loads(content.decode("utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: missing model config", "file_missing") from None
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}",
                                 "file_missing") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path}: not valid TOML: {exc}") from None
        where = str(path)

        def need(table: dict, key: str, kind: type, prefix: str = ""):
            if key not in table:
                raise ModelLoadError(f"{where}: missing key {prefix}{key}")
            value = table[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise ModelLoadError(
                    f"{where}: {prefix}{key} must be {kind.__name__}, got {value!r}"
                )
            return value

        inp = need(data, "input", dict)
        out = need(data, "output", dict)
        name = data.get("name", dir_name)
        if name != dir_name:
            raise ModelLoadError(f"{where}: name {name!r} must match its directory {dir_name!r}")
        channels = need(inp, "channels", int, "input.")
        mean = tuple(float(v) for v in need(inp, "mean", list, "input."))
        std = tuple(float(v) for v in need(inp, "std", list, "input."))
        spec = cls(
            name=name,
            platform=data.get("platform", "tflite"),
            max_batch_size=need(data, "max_batch_size", int),
            description=str(data.get("description", "")),
            input_name=need(inp, "name", str, "input."),
            layout=inp.get("layout", "NHWC"),
            height=need(inp, "height", int, "input."),
            width=need(inp, "width", int, "input."),
            channels=channels,
            mean=mean,
            std=std,
            output_name=need(out, "name", str, "output."),
            output_kind=out.get("kind", "logits"),
            labels=tuple(str(v) for v in out.get("labels", [])),
        )
        spec._validate(where)
        return spec

    def _validate(self, where: str) -> None:
        problems = []
        if self.platform != "tflite":
            problems.append(f"platform must be 'tflite', got {self.platform!r}")
        if self.layout != "NHWC":
            problems.append(f"input.layout must be 'NHWC', got {self.layout!r}")
        if not 1 <= self.max_batch_size <= 4096:
            problems.append("max_batch_size must be in 1..4096")
        if min(self.height, self.width, self.channels) < 1:
            problems.append("input.height, input.width and input.channels must be >= 1")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            problems.append("input.mean and input.std need 1 or `channels` values")
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            problems.append("input.std values must be > 0")
        if self.output_kind not in ("logits", "probabilities"):
            problems.append("output.kind must be 'logits' or 'probabilities'")
        if problems:
            raise ModelLoadError(f"{where}: " + "; ".join(problems))


@dataclass
class ModelVersion:
    """One loaded version: its bytes (for per-thread interpreters) and tensor specs."""

    spec: ModelSpec
    version: str
    path: Path
    content: bytes
    input: TensorSpec
    output: TensorSpec
    sha256: str
    temperature: float = 1.0  # softmax temperature from calibration.json (1.0 without one)
    signed_by: str = ""  # key id of the trusted key that verified the manifest ("": none)

    @property
    def key(self) -> tuple[str, str]:
        """``(model name, version)``: the version's key in pipelines, batches and statistics."""
        return (self.spec.name, self.version)

    @property
    def num_classes(self) -> int:
        """Number of output classes K (the last dimension of the output tensor)."""
        return int(self.output.shape[-1])

    def new_interpreter(self, num_threads: int = 1) -> TFLiteModel:
        """A new TFLite interpreter for this version, using ``num_threads`` threads."""
        return TFLiteModel(self.content, num_threads=num_threads, source=str(self.path))


@dataclass
class ModelEntry:
    """A model directory: its spec, the versions that loaded and those that did not."""

    name: str
    spec: ModelSpec | None
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # version ("" = model) -> reason
    reasons: dict[str, str] = field(default_factory=dict)  # version ("" = model) -> code

    @property
    def latest(self) -> ModelVersion | None:
        """The loaded version with the highest number; ``None`` when no version loaded."""
        if not self.versions:
            return None
        return self.versions[max(self.versions, key=int)]


def load_version(spec: ModelSpec, version_dir: Path, policy: SigningPolicy | None = None,
                 config: bytes | None = None) -> ModelVersion:
    """Read, verify and trial-load one version; raise ModelLoadError with the reason.

    ``policy`` says which signatures to check and whether one is required (none:
    sha256 checked when a manifest lists it, as it always is); ``config`` is the bytes of
    the model's ``config.toml`` that ``spec`` was parsed from, so that a signature covers
    them. Files are verified before the model reaches the interpreter.
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
    try:
        manifest = verify_version(version_dir, spec.name, read, policy)
    except ManifestError as exc:
        raise ModelLoadError(str(exc), exc.reason) from None
    signed_by = manifest.key_id if manifest and manifest.signed and policy.trust.keys else ""
    trial = TFLiteModel(content, source=str(path))
    _check_tensors(spec, trial, path)
    return ModelVersion(
        spec, version_dir.name, path, content, trial.input, trial.output,
        FileDigest.of(content).sha256,
        temperature=_parse_temperature(calibration, version_dir / CALIBRATION_FILE),
        signed_by=signed_by,
    )


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


def _check_tensors(spec: ModelSpec, model: TFLiteModel, path: Path) -> None:
    expected = (spec.height, spec.width, spec.channels)
    if tuple(model.input.shape[1:]) != expected:
        raise ModelLoadError(
            f"{path}: input tensor shape {model.input.shape} does not match config "
            f"[N,{spec.height},{spec.width},{spec.channels}]"
        )
    if model.input.dtype not in (np.int8, np.uint8, np.float32):
        raise ModelLoadError(f"{path}: unsupported input dtype {model.input.dtype}")
    if len(model.output.shape) != 2:
        raise ModelLoadError(f"{path}: output must be [N, classes], got {model.output.shape}")
    if spec.labels and len(spec.labels) != model.output.shape[-1]:
        raise ModelLoadError(
            f"{path}: {len(spec.labels)} labels in config but the model has "
            f"{model.output.shape[-1]} classes"
        )


class ModelRepository:
    """All models under one directory, loaded once at start-up.

    ``policy`` decides which versions' signatures are checked and required (default:
    none required, sha256 checked where a manifest lists it); ``on_refused(model,
    version, reason)`` is called for each refusal (``version`` "" when the whole model
    is), ``reason`` being a ``ModelLoadError.reason`` code.
    """

    def __init__(self, root: Path, policy: SigningPolicy | None = None,
                 on_refused: Callable[[str, str, str], None] | None = None):
        self.root = Path(root)
        self.policy = policy or SigningPolicy()
        self.on_refused = on_refused
        self.models: dict[str, ModelEntry] = {}

    def load(self) -> None:
        """Load every model directory under ``root``, recording (not raising) what fails to load.

        Raises ``ModelLoadError`` only when ``root`` is not a directory.
        """
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a directory")
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            self.models[model_dir.name] = self._load_model(model_dir)

    def _refuse(self, entry: ModelEntry, version: str, exc: ModelLoadError) -> None:
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
        name = model_dir.name
        entry = ModelEntry(name, None)
        config_path = model_dir / CONFIG_FILE
        try:
            config = config_path.read_bytes()
        except OSError:
            config = None  # from_toml says why
        try:
            entry.spec = spec = ModelSpec.from_toml(config_path, name, config)
        except ModelLoadError as exc:
            self._refuse(entry, "", exc)
            return entry
        version_dirs = sorted(
            (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        if not version_dirs:
            entry.failures[""] = f"{model_dir}: no numeric version directories"
        for vdir in version_dirs:
            try:
                mv = entry.versions[vdir.name] = load_version(spec, vdir, self.policy, config)
                signature = (f" (signed by key {mv.signed_by})" if mv.signed_by
                             else " (unsigned)" if self.policy.trust.keys else "")
                log.info("loaded %s version %s from %s%s", name, vdir.name, vdir, signature)
            except ModelLoadError as exc:
                self._refuse(entry, vdir.name, exc)
        self._log_outcome(entry)
        return entry

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
        return [v for e in self.models.values() for v in e.versions.values()]

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
