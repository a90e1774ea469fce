"""What owns one thread of its own between ``start()`` and ``stop()``.

The daemon's helpers (the control and statistics sockets, the Prometheus
server, the systemd watchdog) share this: a context manager, and a join that
never waits forever.
"""

from __future__ import annotations

import threading
from typing import Any, Self


class ThreadOwner:
    """Base of an object that runs one thread between `start` and `stop`."""

    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and release what it used."""
        raise NotImplementedError

    def _join_thread(self, timeout: float) -> bool:
        """Wait up to `timeout` for the thread to end; False if it is still running."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
