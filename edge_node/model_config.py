"""A model's ``config.toml``: its task, batching, labels, delegate and the task's tables.

Every key is optional (a model directory without the file serves with the defaults and
what the model file says); ``ModelSpec.from_toml`` refuses a bad file with a message that
names the file and the key.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edge_node.errors import ModelLoadError
from edge_node.runtime import CPU, DelegateSpec

CONFIG_FILE = "config.toml"


TOP_KEYS = ("name", "platform", "task", "max_batch_size", "description", "labels",
            "dequantize", "dynamic_batching", "delegate", "input", "output", "detection")
TASK_TABLES = {"input": "classification", "output": "classification",
               "detection": "detection"}  # a task's own tables
DEFAULT_MAX_BATCH_SIZE = 32  # for a batchable model whose config does not say


@dataclass(frozen=True)
class ModelSpec:
    """A model's ``config.toml`` (or the defaults, for a model directory without one).

    ``task`` names the task plug-in (``edge_node.tasks``); ``max_batch_size`` None lets
    the model decide (``DEFAULT_MAX_BATCH_SIZE`` when its batch can be resized, else 1),
    0 turns batching off; ``max_queue_delay_ms`` None uses the node's
    ``--max-batch-delay-ms``; ``options`` is the whole parsed file, from which the task
    reads its own tables; ``configured`` is False when there is no ``config.toml``.
    """

    name: str
    task: str = "tensor"
    max_batch_size: int | None = None
    description: str = ""
    labels: tuple[str, ...] = ()
    dequantize: bool = False
    max_queue_delay_ms: float | None = None
    options: dict = field(default_factory=dict)
    configured: bool = False
    delegate: DelegateSpec | None = None  # [delegate] of the config
    cpu_only: bool = False  # [delegate] library = "cpu": never the node's --delegate

    @classmethod
    def from_toml(cls, path: Path, dir_name: str, content: bytes | None = None) -> ModelSpec:
        """Parse and validate the model config at ``path`` for the model directory ``dir_name``
        (``content``: the file's bytes, when already read).

        Raises ``ModelLoadError`` naming the file for an unreadable file, invalid TOML, a
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

        def get(table: dict, key: str, kind: type | tuple, default, prefix: str = ""):
            value = table.get(key, default)
            if value is default:
                return value
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                name = kind.__name__ if isinstance(kind, type) else "a table"
                raise ModelLoadError(f"{where}: {prefix}{key} must be {name}, got {value!r}")
            return value

        task_name = data.get("task", "classification" if "output" in data else "tensor")
        check_keys(where, "", data, TOP_KEYS)
        for table, owner in TASK_TABLES.items():
            if table in data and task_name != owner:
                raise ModelLoadError(f"{where}: [{table}] applies to task {owner!r}, and this "
                                     f"model's task is {task_name!r}: remove it or set task = "
                                     f"\"{owner}\"")
        name = data.get("name", dir_name)
        if name != dir_name:
            raise ModelLoadError(f"{where}: name {name!r} must match its directory {dir_name!r}")
        platform = data.get("platform", "tflite")
        if platform != "tflite":
            raise ModelLoadError(f"{where}: platform must be 'tflite', got {platform!r}")
        output = get(data, "output", dict, {})
        # Configs written before tasks existed describe a classifier with [output].
        task = get(data, "task", str, "classification" if "output" in data else "tensor")
        labels = get(data, "labels", list, None)
        if labels is None:
            labels = get(output, "labels", list, [], "output.")
        batching = get(data, "dynamic_batching", dict, {})
        check_keys(where, "dynamic_batching.", batching, ("max_queue_delay_ms",))
        delay = get(batching, "max_queue_delay_ms", float, None, "dynamic_batching.")
        max_batch = get(data, "max_batch_size", int, None)
        delegate_table = get(data, "delegate", dict, {})
        check_keys(where, "delegate.", delegate_table, ("library", "options"))
        library = get(delegate_table, "library", str, None, "delegate.")
        options = get(delegate_table, "options", dict, {}, "delegate.")
        if delegate_table and not library:
            raise ModelLoadError(f"{where}: [delegate] needs library = \"<path or soname>\" "
                                 "(or \"cpu\" for the built-in CPU kernels)")
        problems = []
        if max_batch is not None and not 0 <= max_batch <= 4096:
            problems.append("max_batch_size must be in 0..4096 (0: no batching)")
        if delay is not None and not (math.isfinite(delay) and 0 <= delay <= 1000):
            problems.append("dynamic_batching.max_queue_delay_ms must be in 0..1000")
        if problems:
            raise ModelLoadError(f"{where}: " + "; ".join(problems))
        return cls(
            name=name,
            task=task,
            max_batch_size=max_batch,
            description=str(data.get("description", "")),
            labels=tuple(str(v) for v in labels),
            dequantize=get(data, "dequantize", bool, False),
            max_queue_delay_ms=delay,
            options=data,
            configured=True,
            delegate=(DelegateSpec(library, {str(k): str(v) for k, v in options.items()})
                      if library and library != CPU else None),
            cpu_only=library == CPU,
        )


def check_keys(where: str, prefix: str, table: dict, known) -> None:
    """Refuse keys of ``table`` not in ``known`` (a misspelled key would otherwise be
    ignored silently), naming the closest known key. Raises ``ModelLoadError``."""
    unknown = [k for k in table if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)"
                                              if close else ""))
        raise ModelLoadError(f"{where}: unknown key(s) {', '.join(hints)}; known: "
                             f"{', '.join(prefix + k for k in known)}")
