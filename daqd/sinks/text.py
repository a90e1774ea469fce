"""The ``text`` sink: one line per record, through a `str.format` template.

The ``template`` key of the sink names the fields; empty means the mode's
default.  Chunk mode (`ChunkRecord`) fields:

``chunk_id``, ``timestamp``
    the chunk's id and the timestamp of its first heap slot;
``fraction_present``
    fraction of heap slots (or packets, with packet presence) that arrived;
``heaps_present``, ``heaps``
    complete heap slots, and all heap slots (heaps_per_chunk * substreams);
``nbytes``
    data bytes;
``received``, ``time``
    when the record was made: Unix seconds (float), and UTC ISO 8601.

Default: ``{chunk_id} {timestamp} {fraction_present:.6f} {heaps_present}``.

Heap mode (`HeapRecord`) fields: ``cnt``, ``nbytes``, ``received``, ``time``,
``items`` (by item id: ``{items[5632]}`` is item 0x1600; immediate values are
integers, addressed values hex strings, a missing item is empty) and
``values`` (every item as ``0xID=VALUE``, by id).  Default: ``{cnt} {values}``.

With ``header = true`` (the default) each file starts with one line, ``#``
and the template with every field replaced by its name, e.g.
``# chunk_id timestamp fraction_present heaps_present``, so numpy.loadtxt
and pandas read the files directly.
"""

from __future__ import annotations

import datetime as dt
import string
from typing import Any

import numpy as np

from daqd.records import ChunkRecord, HeapRecord
from daqd.sinks.base import ByteSink, Piece
from daqd.sinks.paths import field_root, template_fields

CHUNK_FIELDS = ("chunk_id", "timestamp", "fraction_present", "heaps_present", "heaps",
                "nbytes", "received", "time")
HEAP_FIELDS = ("cnt", "nbytes", "received", "time", "items", "values")
CHUNK_TEMPLATE = "{chunk_id} {timestamp} {fraction_present:.6f} {heaps_present}"
HEAP_TEMPLATE = "{cnt} {values}"

_SAMPLE_CHUNK = {"chunk_id": 1, "timestamp": 8192, "fraction_present": 0.5,
                 "heaps_present": 1, "heaps": 2, "nbytes": 16, "received": 1.5,
                 "time": "2026-01-02T03:04:05.000000+00:00"}


def check_template(template: str, chunk_mode: bool) -> None:
    """Check a text sink template for the stream's mode.

    Raises
    ------
    ValueError
        An unknown field, a format spec the field's value cannot take, or a
        line break (one record is one line).
    """
    if "\n" in template or "\r" in template:
        raise ValueError("a line break (one record is one line)")
    allowed = CHUNK_FIELDS if chunk_mode else HEAP_FIELDS
    for name, _ in template_fields(template):
        if field_root(name) not in allowed:
            raise ValueError(f"unknown field {{{name}}}; "
                             f"{'chunk' if chunk_mode else 'heap'} mode has "
                             + ", ".join("{" + f + "}" for f in allowed))
    if chunk_mode:
        try:
            template.format(**_SAMPLE_CHUNK)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise ValueError(f"cannot be formatted: {exc}") from None


def header_line(template: str) -> str:
    """``# chunk_id timestamp`` for ``{chunk_id} {timestamp:x}``."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(name)
    return "# " + "".join(parts)


class _Items(dict):  # type: ignore[type-arg]
    """Item values by id; a missing item formats as an empty string."""

    def __missing__(self, key: Any) -> str:
        return ""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")


def chunk_fields(record: ChunkRecord) -> dict[str, Any]:
    """Return the template fields of a chunk record."""
    present = record.present
    # With packet presence the last axis is per packet: a slot is complete
    # when all of its packets arrived.
    complete = present.all(axis=-1) if present.ndim > 2 else present != 0
    return {
        "chunk_id": record.chunk_id, "timestamp": record.timestamp,
        "fraction_present": record.fraction_present,
        "heaps_present": int(np.count_nonzero(complete)), "heaps": int(complete.size),
        "nbytes": record.nbytes, "received": record.received, "time": _iso(record.received),
    }


def heap_fields(record: HeapRecord) -> dict[str, Any]:
    """Return the template fields of a heap record."""
    items = _Items((k, v.hex() if isinstance(v, bytes) else v)
                   for k, v in sorted(record.items.items()))
    return {
        "cnt": record.cnt, "nbytes": record.nbytes, "received": record.received,
        "time": _iso(record.received), "items": items,
        "values": " ".join(f"{k:#x}={v}" for k, v in items.items()),
    }


class TextSink(ByteSink):
    """One line per record through a template (see the module docstring)."""

    kind = "text"

    def __init__(self, context: Any):
        super().__init__(context)
        chunk_mode = context.chunk is not None
        self.accepts = (ChunkRecord,) if chunk_mode else (HeapRecord,)
        self.line_template = self.config.template or (
            CHUNK_TEMPLATE if chunk_mode else HEAP_TEMPLATE)
        check_template(self.line_template, chunk_mode)
        self._fields = chunk_fields if chunk_mode else heap_fields

    def _encode(self, record: Any) -> Piece:
        try:
            line = self.line_template.format(**self._fields(record))
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise ValueError(f"template {self.line_template!r}: {exc}") from None
        data = (line + "\n").encode()
        key = record.chunk_id if isinstance(record, ChunkRecord) else record.cnt
        return Piece(record, len(data), [data], key)

    def _header(self, first: Piece) -> bytes:
        return (header_line(self.line_template) + "\n").encode()
