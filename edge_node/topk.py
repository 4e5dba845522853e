"""Triton's classification extension: a requested output with ``classification = k``
(tritonclient's ``InferRequestedOutput(name, class_count=k)``) comes back as the top-k
entries of each batch item as BYTES ``"<value>:<index>[:<label>]"``.

Format as Triton documents it (docs/protocol/extension_classification.md): the value is
printed like C++ ``std::to_string`` (six decimals), the index is the position in the
item's flattened tensor, the label is added when the model has labels. Ties keep the
lower index first. The result has shape ``[N, min(k, entries)]`` for a batched model and
``[min(k, entries)]`` for one without a batch dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PARAMETER = "classification"  # the requested output's parameter carrying k


def top_k(values: np.ndarray, k: int, labels: Sequence[str] = (),
          batched: bool = True) -> np.ndarray:
    """The top ``k`` of ``values`` per batch item as an object array of ``bytes``.

    ``values``: any numeric array (a batch when ``batched``); ``k`` >= 1; ``labels``
    indexed by the flattened position (empty: no labels).
    """
    rows = values.reshape(values.shape[0] if batched else 1, -1)
    count = min(k, rows.shape[1])
    # Stable sort of the negated values: descending, lower index first among equals.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    out = np.empty((rows.shape[0], count), dtype=object)
    for r in range(rows.shape[0]):
        for c, index in enumerate(order[r]):
            text = f"{float(rows[r, index]):f}:{int(index)}"
            if labels and index < len(labels):
                text += f":{labels[index]}"
            out[r, c] = text.encode()
    return out if batched else out[0]
