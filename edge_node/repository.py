"""The model repository: ``<repo>/<model>/config.toml`` + ``<repo>/<model>/<version>/model.tflite``.

Loading is all-or-nothing per version and isolated per model: a version whose file is
missing, corrupt (sha256 differs from ``manifest.json``) or not a loadable TFLite model is
refused with a clear error, and every other model and version still serves. The newest
version that loaded is the default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_node.errors import ModelLoadError, ModelNotFoundError, ModelUnavailableError
from edge_node.runtime import TensorSpec, TFLiteModel

log = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
CALIBRATION_FILE = "calibration.json"


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
    def from_toml(cls, path: Path, dir_name: str) -> ModelSpec:
        """Parse and validate the model config at ``path`` for the model directory ``dir_name``.

        Raises ``ModelLoadError`` naming the file for a missing file, invalid TOML, a missing or
        mistyped key, a name that differs from the directory, or an unsupported value.
        """
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: missing model config") from None
        except tomllib.TOMLDecodeError as exc:
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

    @property
    def latest(self) -> ModelVersion | None:
        """The loaded version with the highest number; ``None`` when no version loaded."""
        if not self.versions:
            return None
        return self.versions[max(self.versions, key=int)]


def load_version(spec: ModelSpec, version_dir: Path) -> ModelVersion:
    """Read, verify and trial-load one version; raise ModelLoadError with the reason."""
    path = version_dir / MODEL_FILE
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: model file missing") from None
    digest = hashlib.sha256(content).hexdigest()
    manifest_path = version_dir / MANIFEST_FILE
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{manifest_path}: not valid JSON: {exc}") from None
        expected = manifest.get("sha256")
        if expected and expected != digest:
            raise ModelLoadError(
                f"{path}: sha256 {digest[:12]}… does not match manifest {str(expected)[:12]}… "
                "(file corrupt or replaced without updating manifest.json)"
            )
    trial = TFLiteModel(content, source=str(path))
    _check_tensors(spec, trial, path)
    return ModelVersion(
        spec, version_dir.name, path, content, trial.input, trial.output, digest,
        temperature=_load_temperature(version_dir / CALIBRATION_FILE),
    )


def _load_temperature(path: Path) -> float:
    """Softmax temperature fitted by calibration; 1.0 when the version has none."""
    if not path.exists():
        return 1.0
    try:
        temperature = float(json.loads(path.read_text())["temperature"])
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
    """All models under one directory, loaded once at start-up."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.models: dict[str, ModelEntry] = {}

    def load(self) -> None:
        """Load every model directory under ``root``, recording (not raising) what fails to load.

        Raises ``ModelLoadError`` only when ``root`` is not a directory.
        """
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a directory")
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            self.models[model_dir.name] = self._load_model(model_dir)

    def _load_model(self, model_dir: Path) -> ModelEntry:
        name = model_dir.name
        try:
            spec = ModelSpec.from_toml(model_dir / "config.toml", name)
        except ModelLoadError as exc:
            log.error("model %s refused: %s", name, exc)
            return ModelEntry(name, None, failures={"": str(exc)})
        entry = ModelEntry(name, spec)
        version_dirs = sorted(
            (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        if not version_dirs:
            entry.failures[""] = f"{model_dir}: no numeric version directories"
        for vdir in version_dirs:
            try:
                entry.versions[vdir.name] = load_version(spec, vdir)
                log.info("loaded %s version %s from %s", name, vdir.name, vdir)
            except ModelLoadError as exc:
                entry.failures[vdir.name] = str(exc)
                log.error("model %s version %s refused: %s", name, vdir.name, exc)
        return entry

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
                    f"model_version: {name} version {version} failed to load: "
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
