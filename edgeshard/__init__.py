"""Process infrastructure shared by the edge node and the coordinator (no domain logic).

Imports nothing else of edgeshard, so ``edge_node`` and ``coordinator`` may both use it
without depending on each other.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    VERSION = _version("edgeshard")
except PackageNotFoundError:  # a source tree without install
    VERSION = "0+unknown"
