"""A custom flush predicate that raises in a stream's own threads (tests only).

``flush_custom = ["failing_flush:raise_in_stream_threads"]`` (with ``tests/`` on
the daemon's PYTHONPATH): the first record a receive or chunk thread puts asks
the predicate, which raises, and that thread fails for real, as a bug in user
code or in daqd would make it.
"""

from __future__ import annotations

import threading
from typing import Any

SPEC = "failing_flush:raise_in_stream_threads"


def raise_in_stream_threads(buffer: Any) -> bool:
    """Raise in a stream's thread (named ``stream:...``); elsewhere no flush is due."""
    if ":" in threading.current_thread().name:
        raise RuntimeError("a predicate that fails")
    return False
