"""Process infrastructure shared by the edge node and the coordinator (no domain logic).

It imports nothing of ``edge_node`` or ``coordinator`` (only ``protos``, for the codec's
errors in the status table), so both daemons may use it without depending on each other.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    VERSION = _version("edgeshard")
except PackageNotFoundError:  # a source tree without install
    VERSION = "0+unknown"
