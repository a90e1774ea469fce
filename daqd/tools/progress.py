"""Progress of a long job (``daqd simulate``, ``daqd dump``): a bar or periodic log lines.

On a terminal, a `tqdm` bar (bytes, rate, and an ETA when the size is known;
heaps beside it); otherwise one line every `interval` seconds on the same
stream, the first after `interval` seconds, so a short job prints none::

    daqd: simulate: 1.21GB of 3.44GB (35%), 147688 heaps, 812MB/s, ETA 00:02

The job runs on in the calling thread (compiled code that releases the GIL
per batch); a helper thread asks `probe` how far it has got.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

#: ``--progress`` choices: ``auto`` is a bar on a terminal, log lines otherwise.
MODES = ("auto", "bar", "log", "off")
#: Seconds between two refreshes of a bar.
BAR_REFRESH = 0.25


def size(n: float) -> str:
    """Bytes as tqdm writes them (SI prefixes)."""
    from tqdm import tqdm

    return str(tqdm.format_sizeof(n, "B"))


def log_line(what: str, done: int, total: int, heaps: int, rate: float) -> str:
    """One progress line: bytes (of the total), heaps, rate, and an ETA when the total is known."""
    from tqdm import tqdm

    line = f"daqd: {what}: {size(done)}"
    if total:
        line += f" of {size(total)} ({100 * done / total:.0f}%)"
    line += f", {heaps} heaps, {size(rate)}/s"
    if total and rate > 0 and done < total:
        line += f", ETA {tqdm.format_interval((total - done) / rate)}"
    return line


class Progress:
    """Report a job's progress until `close` (or the end of a ``with`` block).

    Parameters
    ----------
    what : str
        The job's name in the report (``simulate``, ``dump``).
    probe : callable
        Returns (bytes done, bytes in all; 0 when unknown); called from the
        helper thread.
    heaps : callable
        Returns the heaps done so far.
    mode : str
        One of `MODES`.
    interval : float
        Seconds between log lines.
    stream : file, optional
        Where the report goes (default: standard error).
    """

    def __init__(self, what: str, probe: Callable[[], tuple[int, int]],
                 heaps: Callable[[], int], *, mode: str = "auto", interval: float = 10.0,
                 stream: TextIO | None = None):
        self.what, self.probe, self.heaps = what, probe, heaps
        self.stream = stream or sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "log"
        self.mode, self.interval = mode, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        if mode != "off":
            self._thread = threading.Thread(target=self._run, name=f"progress-{what}",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        if self.mode == "bar":
            self._run_bar()
        else:
            self._run_log()

    def _run_bar(self) -> None:
        from tqdm import tqdm

        done, total = self.probe()
        self._bar = bar = tqdm(total=total or None, unit="B", unit_scale=True,
                               desc=self.what, file=self.stream, dynamic_ncols=True)
        while True:
            stopping = self._stop.wait(BAR_REFRESH)
            done, total = self.probe()
            bar.n = done
            bar.set_postfix_str(f"{self.heaps()} heaps", refresh=False)
            bar.refresh()
            if stopping:
                return

    def _run_log(self) -> None:
        last_done, last_time = self.probe()[0], time.monotonic()
        while not self._stop.wait(self.interval):
            done, total = self.probe()
            now = time.monotonic()
            rate = (done - last_done) / (now - last_time) if now > last_time else 0.0
            last_done, last_time = done, now
            print(log_line(self.what, done, total, self.heaps(), rate), file=self.stream,
                  flush=True)

    def close(self) -> None:
        """Stop reporting (a bar is drawn once more, at the end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--progress`` and ``--progress-interval`` to a click command."""
    import click

    command = click.option(
        "--progress-interval", type=click.FloatRange(min=0.05), default=10.0,
        show_default=True, help="Seconds between progress log lines.")(command)
    return click.option(
        "--progress", "progress", type=click.Choice(MODES), default="auto", show_default=True,
        help="A bar (bytes, heaps, rate, ETA) on a terminal, a log line every "
             "--progress-interval seconds otherwise.")(command)
