"""A custom flush predicate that wedges the flusher thread for real (tests only).

The daemon imports it from ``flush_custom = ["stall_flusher:stall_while_marked"]``
(with ``tests/`` on its PYTHONPATH).  While the file named by
``$DAQD_TEST_STALL`` exists, the predicate never returns in the flusher thread:
the thread is stuck as it would be in a write to a hung disk, so no flush
happens, the buffer fills, and the flusher's loop stops advancing.  It touches
``$DAQD_TEST_STALL.entered`` first, so a test knows the thread is stuck.  In
any other thread (a producer asking whether a flush is due), and while the
file is absent, it returns False at once: count, bytes and age decide.

``stall_receiver:stall_while_marked`` (`RECEIVER_SPEC`) wedges the first
*receive* thread that asks instead (a producer asks at its first record,
before count can decide): the source stops being read where it was, at once,
whatever the flusher's timing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

ENVIRONMENT = "DAQD_TEST_STALL"
FLUSHER_THREAD = "daqd-flusher"
SPEC = "stall_flusher:stall_while_marked"
RECEIVER_SPEC = "stall_flusher:stall_receiver_while_marked"


def stall_while_marked(buffer: Any) -> bool:
    """Block the flusher thread while the marker file exists; never ask for a flush."""
    return _stall_if(threading.current_thread().name == FLUSHER_THREAD)


def stall_receiver_while_marked(buffer: Any) -> bool:
    """Block a receive thread (named ``stream:uri``) while the marker file exists."""
    return _stall_if(":" in threading.current_thread().name
                     and not threading.current_thread().name.endswith(":chunks"))


def _stall_if(this_thread: bool) -> bool:
    marker = os.environ.get(ENVIRONMENT, "")
    if marker and this_thread and os.path.exists(marker):
        Path(marker + ".entered").touch()
        while os.path.exists(marker):
            time.sleep(0.05)
    return False


def daemon_import_environment() -> dict[str, str]:
    """The environment a daemon needs to import a module of ``tests/`` (a predicate)."""
    here = str(Path(__file__).resolve().parent)
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{here}:{path}" if path else here}


def stall_environment(marker: Path) -> dict[str, str]:
    """The environment a daemon needs to import this module and watch `marker`."""
    return {ENVIRONMENT: str(marker), **daemon_import_environment()}
