"""Tasks: how a model's tensors are presented to clients.

``TASKS`` maps a config's ``task`` to its class; adding a task is one module here and
one entry in ``TASKS``, and touches no servicer.
"""

from __future__ import annotations

from edge_node.tasks.base import Signature, Task, TaskContext, TensorInfo, load_error
from edge_node.tasks.classification import ClassificationTask
from edge_node.tasks.detection import DetectionTask
from edge_node.tasks.tensor import TensorTask

TASKS: dict[str, type[Task]] = {
    TensorTask.kind: TensorTask,
    ClassificationTask.kind: ClassificationTask,
    DetectionTask.kind: DetectionTask,
}

__all__ = ["TASKS", "Signature", "Task", "TaskContext", "TensorInfo", "make_task"]


def make_task(kind: str, context: TaskContext) -> Task:
    """Build the task ``kind`` for a loaded model; ``ModelLoadError`` for an unknown kind
    or options that do not fit the model."""
    cls = TASKS.get(kind)
    if cls is None:
        raise load_error(context, f"task must be one of {sorted(TASKS)}, got {kind!r}")
    return cls(context)
