"""The processing step: user code between the completed chunks and the buffer.

``[stream.process] call = "package.module:name"`` names the step (Python or
compiled).  A class is made once, ``name(**options)`` (``options``: the
section's table of keyword arguments); anything else callable is the step
itself (no options).  The step

- is called as ``step(record)`` with each completed `ChunkRecord`, in the
  stream's chunk consumer thread (never a receive thread), and returns a
  `ChunkRecord` for the buffer, or None when it keeps what it needs for a
  later one (an integrator between outputs).  The record's arrays are views
  of a pool chunk, released (given back to the pool) as soon as the step
  returns, unless the step returned that very record: a step that keeps data
  copies it (an integrator adds it into an array of its own);
- may have ``layout(chunk)``: given the stream's ``[stream.chunk]`` section,
  it returns the layout of the records it makes, a section of the same type
  (``dataclasses.replace(chunk, dtype=..., heap_bytes=..., timestamp_step=...)``).
  The sinks, files and buffer limits follow that layout: records of shape
  ``(heaps_per_chunk, substreams, heap_bytes // itemsize)``, one record
  spanning ``heaps_per_chunk * timestamp_step`` ticks of data time.  Without
  it the layout stays the stream's;
- may have ``finish()``: called at each capture boundary (stop heaps) and
  when the stream has ended, it returns a last record (what an integrator
  held) or None.

A record the step returns that does not fit its layout (the shapes of
``data``, ``present`` and ``extra``, the dtype) is dropped, counted under
``records_process_bad_layout``; an exception drops the record given, counted
under ``records_process_error`` and in ``process_errors`` (logged once, then
summarised), and the stream goes on.
``process_seconds`` adds up the time spent in the step.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np
import structlog

from daqd.logs import RepeatedErrors
from daqd.pipeline.records import ChunkRecord
from daqd.user_code import import_object

#: Why a record given to the step was not used: ``records_<reason>``.
REASONS = ("process_error", "process_bad_layout")

log = structlog.get_logger("daqd.process")


def resolve(spec: str, options: dict[str, Any] | None = None) -> Any:
    """Import the step ``"package.module:name"`` names and make it (a class: with `options`).

    Raises
    ------
    ValueError
        One line saying why `spec` gives no step.
    """
    target: Any = import_object(spec)
    options = dict(options or {})
    if isinstance(target, type):
        try:
            target = target(**options)
        except Exception as exc:    # the user's constructor: its message, one line
            raise ValueError(f"{spec}(**options) failed ({type(exc).__name__}: {exc})") from None
    elif options:
        raise ValueError(f"{spec} is not a class, so it takes no options")
    if not callable(target):
        raise ValueError(f"{spec} gives {type(target).__name__}, which is not callable")
    return target


def output_layout(step: Any, chunk: Any) -> Any:
    """Return the layout of the records `step` makes from chunks of layout `chunk`.

    Raises
    ------
    ValueError
        ``layout()`` failed or returned something that is not a layout.
    """
    method = getattr(step, "layout", None)
    if method is None:
        return chunk
    try:
        out = method(chunk)
    except Exception as exc:    # the user's code
        raise ValueError(f"layout() failed ({type(exc).__name__}: {exc})") from None
    if type(out) is not type(chunk):
        raise ValueError(f"layout() returned {type(out).__name__}, not {type(chunk).__name__} "
                         "(dataclasses.replace the chunk section it is given)")
    try:
        itemsize = np.dtype(out.dtype).itemsize
    except TypeError as exc:
        raise ValueError(f"layout() dtype {out.dtype!r}: {exc}") from None
    if out.heap_bytes % itemsize:
        raise ValueError(f"layout() heap_bytes {out.heap_bytes} is not a multiple of "
                         f"{out.dtype}'s {itemsize} bytes")
    return out


class Processor:
    """A stream's processing step, run on each completed chunk record, with its counters.

    Parameters
    ----------
    step
        The step (see the module docstring), as `resolve` made it.
    chunk
        The stream's ``[stream.chunk]`` section (the input layout).
    name : str
        The stream's name (log lines).
    error_interval : float
        Seconds between summaries of repeated errors.
    """

    def __init__(self, step: Any, chunk: Any, name: str = "", error_interval: float = 10.0):
        self.step = step
        self.name = name
        self.input = chunk
        self.layout = output_layout(step, chunk)
        dtype = np.dtype(self.layout.dtype)
        self.dtype = dtype
        self.shape = (self.layout.heaps_per_chunk, self.layout.substreams,
                      self.layout.heap_bytes // dtype.itemsize)
        self.errors = RepeatedErrors(log, error_interval)
        self._lock = threading.Lock()
        self._counts = {"process_records": 0, "process_outputs": 0, "process_errors": 0,
                        **{f"records_{reason}": 0 for reason in REASONS}}
        self._seconds = 0.0

    def stream(self, stream: Any) -> Any:
        """Return `stream` (a ``[[stream]]`` section) as its records are written: the new layout."""
        return dataclasses.replace(stream, chunk=self.layout)

    def __call__(self, record: ChunkRecord) -> ChunkRecord | None:
        """Run the step on `record`; return the record to buffer, or None (never raises)."""
        start = time.perf_counter()
        try:
            out = self.step(record)
        except Exception as exc:    # the user's code: the record is dropped, never the stream
            out = None
            self._count("process_errors", "records_process_error")
            self.errors.error("process", "processing step failed", stream=self.name,
                              chunk_id=record.chunk_id, error=f"{type(exc).__name__}: {exc}")
        finally:
            elapsed = time.perf_counter() - start
            if out is not record:
                record.release()            # the pool chunk goes back as soon as it is used
        with self._lock:
            self._counts["process_records"] += 1
            self._seconds += elapsed
        return self._checked(out)

    def finish(self) -> ChunkRecord | None:
        """Ask the step for what it holds (``finish()``): a capture boundary, the stream's end."""
        method = getattr(self.step, "finish", None)
        if method is None:
            return None
        try:
            out = method()
        except Exception as exc:    # the user's code
            self._count("process_errors")
            self.errors.error("process", "processing step failed", stream=self.name,
                              error=f"finish: {type(exc).__name__}: {exc}")
            return None
        return self._checked(out)

    def _checked(self, out: Any) -> ChunkRecord | None:
        if out is None:
            return None
        if not isinstance(out, ChunkRecord) or not self._fits(out):
            got = (f"{out.data.dtype}{list(out.data.shape)}, present {list(out.present.shape)}"
                   if isinstance(out, ChunkRecord) else type(out).__name__)
            self._count("records_process_bad_layout")
            self.errors.error("layout", "processing step output does not fit its layout",
                              stream=self.name, expected=f"{self.dtype}{list(self.shape)}",
                              got=got)
            if isinstance(out, ChunkRecord):
                out.release()
            return None
        self._count("process_outputs")
        return out

    def _fits(self, out: ChunkRecord) -> bool:
        """Tell whether `out`'s arrays have the layout's shapes and dtype (the sinks' needs)."""
        layout = self.layout
        slots = self.shape[:2]
        packets = (layout.heap_bytes // layout.packet_presence,) \
            if getattr(layout, "packet_presence", 0) else ()
        extra = len(getattr(layout, "extra_items", ()))
        return (out.data.shape == self.shape and out.data.dtype == self.dtype
                and out.present.shape == slots + packets
                and (out.extra is None or out.extra.shape == (*slots, extra)))

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def counters(self) -> dict[str, Any]:
        """Return the step's counters.

        ``process_records`` (chunks given), ``process_outputs`` (records
        made), ``process_errors``, ``process_seconds`` (time in the step) and
        ``records_<reason>`` for each of `REASONS`.
        """
        with self._lock:
            return {**self._counts, "process_seconds": round(self._seconds, 6)}


def build_process(stream: Any, error_interval: float = 10.0) -> Processor | None:
    """Build a ``[[stream]]`` section's processing step from its ``[stream.process]``.

    Returns None when the stream has none.  Raises ValueError (one line) when
    the step cannot be made (``daqd.config`` reports it at load time already).
    """
    section = stream.process
    if section is None:
        return None
    step = resolve(section.call, section.options)
    return Processor(step, stream.chunk, stream.name, error_interval)


__all__ = ["REASONS", "Processor", "build_process", "output_layout",
           "resolve"]
