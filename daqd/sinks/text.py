r"""The ``text`` sink: one line per record, through a `str.format` template.

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
    when the record was made: Unix seconds (float), and UTC ISO 8601;
``utc``
    the UTC of the chunk's first heap slot, from the stream's clock
    (``[stream.time]``; refused without one), a `datetime`, so
    ``{utc:%H:%M:%S.%f}`` works (to the microsecond); ``{utc}`` alone is
    ``2026-12-07 00:00:01.500000+00:00`` and ``{utc:%Y-%m-%dT%H:%M:%S.%fZ}``
    ISO 8601 with a ``T``;
``capture_block``
    the id of the record's capture block, ``none`` outside capture blocks
    (as the path field).

Default: ``{chunk_id} {timestamp} {fraction_present:.6f} {heaps_present}``.

Heap mode (`HeapRecord`) fields:

``cnt``, ``nbytes``, ``received``, ``time``
    the heap counter, the items' bytes, and when the record was made;
``complete``, ``payload_ranges``
    ``1`` for a complete heap, ``0`` for an incomplete one (a record only with
    the stream's ``contiguous_only = false``); an incomplete heap's received
    payload as JSON ``[[start,end],...]`` (sorted, adjacent ranges merged, as
    spead2's ``payload_ranges``), ``null`` for a complete heap;
``heap_length``, ``received_bytes``
    an incomplete heap's HEAP_SIZE (-1 when no packet carried it) and payload
    bytes received; ``-1`` for a complete heap;
``utc``, ``capture_block``
    as in chunk mode; a heap's UTC is that of its timestamp item
    (``[stream.time] timestamp_item``, which then needs the clock), else of
    its arrival;
``NAME`` (any other field name)
    the item of that name in the stream's descriptors, decoded as spead2's
    ``ItemGroup`` would (`daqd.pipeline.items`), e.g. ``{temperature:.2f}``;
    chunk-mode field names (``chunk_id``, ``timestamp``, ...) are refused
    here, as a chunk-mode template's most likely;
``item[NAME]``
    the same, for any name (``{item[cryo stage 2.temp]}``: names with spaces,
    dots or brackets, or the name of a field of either mode, such as
    ``{item[timestamp]}``); ``item[0x1600]`` (an id in hex or decimal) is the
    item of that id, decoded if it has a descriptor;
``items[ID]``
    the item's raw value by id, ``{items[0x1600]}`` or ``{items[5632]}``:
    an immediate value as an integer, an addressed one as the hex of its
    bytes; the key must be an integer (decimal or ``0x`` hex);
``values``
    every item, in id order, separated by spaces: ``NAME=VALUE`` for those
    with a descriptor, ``0xID=RAW`` (raw as in ``items``) for the others;
    strings are JSON-quoted there (an incomplete heap has no items: with
    ``contiguous_only = false`` put ``{complete}`` and ``{payload_ranges}`` in
    the template).

A decoded value formats as itself with the field's format spec: numbers as
numpy and Python print them (``{name:.3f}``, ``{name:#x}``); an array as
``[v,v,...]`` (nested for more dimensions, no spaces), the spec applied to
each element (``{readings:.4g}``); records of several fields as ``(a,b)``; a
``c`` string as its text.  Indexing works on arrays (``{readings[0]}``).  An
item the heap lacks, or a name no descriptor has given (yet: descriptors come
from the sender), formats as empty text (padded to a given width).  An item
whose value does not fit its descriptor keeps its raw value (counted by the
stream in ``records_undecoded_items``).  A line break inside a value is
written as ``\n``, so one record stays one line.  Default: ``{cnt} {values}``.

With ``header = true`` (the default) each file starts with one line, ``#``
and the template with every field replaced by its name, e.g.
``# chunk_id timestamp fraction_present heaps_present``, so numpy.loadtxt
and pandas read the files directly.  When the stream has a clock
(``[stream.time]``) a line before it gives it, e.g.
``# sync_time=1796601600.0 timestamp_rate=1712000000.0`` (Unix seconds,
ticks per second).
"""

from __future__ import annotations

# typeshed has no stub for CPython's _string module; mypy cannot see it exists
import _string  # type: ignore[import-not-found]  # str.format's field-name parser
import datetime as dt
import json
import string
from typing import Any

import numpy as np

from daqd.pipeline.datatime import Timeline
from daqd.pipeline.records import ChunkRecord, HeapRecord
from daqd.sinks.base import ByteSink, Piece
from daqd.sinks.paths import block_name, field_root, template_fields

CHUNK_FIELDS = ("chunk_id", "timestamp", "fraction_present", "heaps_present", "heaps",
                "nbytes", "received", "time", "utc", "capture_block")
HEAP_FIELDS = ("cnt", "nbytes", "received", "time", "utc", "capture_block", "items", "item",
               "values", "complete", "payload_ranges", "heap_length", "received_bytes")
#: Fields that need the stream's clock.
UTC_FIELDS = ("utc",)
CHUNK_TEMPLATE = "{chunk_id} {timestamp} {fraction_present:.6f} {heaps_present}"
HEAP_TEMPLATE = "{cnt} {values}"

_SAMPLE_CHUNK: dict[str, Any] = {
    "chunk_id": 1, "timestamp": 8192, "fraction_present": 0.5,
    "heaps_present": 1, "heaps": 2, "nbytes": 16, "received": 1.5,
    "time": "2026-01-02T03:04:05.000000+00:00",
    "utc": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    "capture_block": "cb0"}
_FORMAT_ERRORS = (ValueError, KeyError, IndexError, AttributeError, TypeError)


def _int_key(key: Any) -> int | None:
    """Return the item id a ``[key]`` names (str.format passes digits as int), or None."""
    if isinstance(key, int):
        return key
    try:
        return int(key, 0)
    except (TypeError, ValueError):
        return None


def _check_heap_field(name: str) -> None:
    root, rest = _string.formatter_field_name_split(name)
    if not isinstance(root, str):
        raise ValueError("positional fields ({}) are not allowed; name the field")
    if root in CHUNK_FIELDS and root not in HEAP_FIELDS:
        # Chunk-mode fields are reserved: most likely a chunk-mode template.
        raise ValueError(f"unknown field {{{name}}}: a chunk-mode field; heap mode has "
                         + ", ".join("{" + f + "}" for f in HEAP_FIELDS)
                         + f" and item names (an item named {root}: {{item[{root}]}})")
    if root not in ("items", "item"):
        return
    index = list(rest)
    if len(index) != 1 or index[0][0]:
        raise ValueError(f"{{{name}}}: {root} takes one [key], e.g. {{{root}[0x1600]}}")
    if root == "items" and _int_key(index[0][1]) is None:
        raise ValueError(f"{{{name}}}: items are indexed by item id, decimal or hex "
                         "({items[5632]} or {items[0x1600]}); by name: {item[NAME]}")


def check_template(template: str, chunk_mode: bool, has_utc: bool = False) -> None:
    """Check a text sink template for the stream's mode (`has_utc`: its records have UTC).

    Raises
    ------
    ValueError
        An unknown field (chunk mode), ``{utc}`` without a clock, an
        ``items[KEY]`` whose key is not an item id, a format spec the field's
        value cannot take, or a line break (one record is one line).
    """
    if "\n" in template or "\r" in template:
        raise ValueError("a line break (one record is one line)")
    fields = template_fields(template)
    if not has_utc:
        for name, _ in fields:
            if field_root(name) in UTC_FIELDS:
                raise ValueError(f"{{{name}}} needs the stream's clock ([stream.time] "
                                 "sync_time and timestamp_rate)")
    if chunk_mode:
        for name, _ in fields:
            if field_root(name) not in CHUNK_FIELDS:
                raise ValueError(f"unknown field {{{name}}}; chunk mode has "
                                 + ", ".join("{" + f + "}" for f in CHUNK_FIELDS))
        try:
            template.format(**_SAMPLE_CHUNK)
        except _FORMAT_ERRORS as exc:
            raise ValueError(f"cannot be formatted: {exc}") from None
        return
    for name, _ in fields:
        _check_heap_field(name)
    try:
        _HEAP_FORMATTER.vformat(template, (), _HeapFields(HeapRecord(1, {}, received=1.5),
                                                           _SAMPLE_CHUNK["utc"]))
    except _FORMAT_ERRORS as exc:
        raise ValueError(f"cannot be formatted: {exc}") from None


def header_line(template: str) -> str:
    """``# chunk_id timestamp`` for ``{chunk_id} {timestamp:x}``."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(name)
    return "# " + "".join(parts)


class _Missing:
    """An item a record lacks: formats as empty text, whatever is asked of it."""

    def __getattr__(self, name: str) -> _Missing:
        return self

    def __getitem__(self, key: Any) -> _Missing:
        return self

    def __format__(self, spec: str) -> str:
        try:
            return format("", spec)
        except ValueError:
            return ""

    def __str__(self) -> str:
        return ""

    __repr__ = __str__


MISSING = _Missing()


def format_value(value: Any, spec: str = "") -> str:
    """Format a decoded (or raw) item value on one line (see the module docstring)."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return format_value(value[()], spec)
        return "[" + ",".join(format_value(v, spec) for v in value) + "]"
    if isinstance(value, np.void):
        if value.dtype.names is None:
            return format(value.tobytes().hex(), spec)
        return "(" + ",".join(format_value(value[i], spec)
                              for i in range(len(value.dtype.names))) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(format_value(v, spec) for v in value) + ")"
    if isinstance(value, np.bytes_):            # a "c" field of a record
        return format(value.decode("latin-1"), spec)
    if isinstance(value, bytes):                # raw: an addressed item not decoded
        return format(value.hex(), spec)
    if not spec:
        return str(value)                       # numpy scalars: their shortest repr
    return format(value, spec)


class _HeapFormatter(string.Formatter):
    """`str.format` with `format_value` for every field."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return format_value(value, format_spec)


_HEAP_FORMATTER = _HeapFormatter()


class _Items(dict):  # type: ignore[type-arg]
    """Raw item values by id (int, or decimal/hex text); a missing item is `MISSING`."""

    def __missing__(self, key: Any) -> Any:
        item_id = _int_key(key)
        if item_id is None or isinstance(key, int):
            return MISSING
        return self.get(item_id, MISSING)


class _ByName:
    """Decoded item values by name, or by id (int or decimal/hex text)."""

    def __init__(self, record: HeapRecord):
        self.decoded = record.decode()

    def __getitem__(self, key: Any) -> Any:
        decoded = self.decoded
        item_id = decoded.ids.get(key) if isinstance(key, str) else None
        if item_id is None:
            item_id = _int_key(key)
        return decoded.values.get(item_id, MISSING) if item_id is not None else MISSING


def _listed(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) \
        else format_value(value)


class _HeapFields(dict):  # type: ignore[type-arg]
    """A heap record's template fields; the costly ones, and item names, on demand."""

    def __init__(self, record: HeapRecord, utc: dt.datetime | None = None):
        inc = record.incomplete
        super().__init__(cnt=record.cnt, nbytes=record.nbytes, received=record.received,
                         time=_iso(record.received), utc=utc,
                         capture_block=block_name(record.capture_block),
                         complete=int(inc is None),
                         heap_length=inc.heap_length if inc is not None else -1,
                         received_bytes=inc.received_bytes if inc is not None else -1)
        self.record = record

    def __missing__(self, key: str) -> Any:
        record = self.record
        if key == "items":
            value: Any = _Items((k, v.hex() if isinstance(v, bytes) else v)
                                for k, v in sorted(record.items.items()))
        elif key == "item":
            value = _ByName(record)
        elif key == "payload_ranges":
            inc = record.incomplete
            value = (json.dumps([list(r) for r in inc.payload_ranges], separators=(",", ":"))
                     if inc is not None else "null")
        elif key == "values":
            decoded = record.decode()
            value = " ".join(
                f"{decoded.names[k]}={_listed(v)}" if k in decoded.names
                else f"{k:#x}={v.hex() if isinstance(v, bytes) else v}"
                for k, v in decoded.values.items())
        else:
            decoded = record.decode()
            item_id = decoded.ids.get(key)
            return MISSING if item_id is None else decoded.values[item_id]
        self[key] = value
        return value


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")


def _datetime(utc: float | None) -> dt.datetime | None:
    return None if utc is None else dt.datetime.fromtimestamp(utc, dt.UTC)


def chunk_fields(record: ChunkRecord, timeline: Timeline | None = None) -> dict[str, Any]:
    """Return the template fields of a chunk record (``utc`` from `timeline`'s clock)."""
    return {
        "chunk_id": record.chunk_id, "timestamp": record.timestamp,
        "fraction_present": record.fraction_present,
        "heaps_present": record.heaps_present, "heaps": record.heaps,
        "nbytes": record.nbytes, "received": record.received, "time": _iso(record.received),
        "utc": _datetime(timeline.utc(record.timestamp)) if timeline is not None else None,
        "capture_block": block_name(record.capture_block),
    }


def heap_fields(record: HeapRecord, timeline: Timeline | None = None) -> dict[str, Any]:
    """Return the template fields of a heap record (a mapping filled on demand)."""
    utc = timeline.utc(timeline.span(record)[0]) if timeline is not None else None
    return _HeapFields(record, _datetime(utc))


def format_heap(template: str, record: HeapRecord, timeline: Timeline | None = None) -> str:
    """Format one heap record through `template` (no line break added).

    Raises
    ------
    ValueError, KeyError, IndexError, AttributeError, TypeError
        A field the record's values cannot format as asked.
    """
    return _HEAP_FORMATTER.vformat(template, (), heap_fields(record, timeline))


def _one_line(line: str) -> str:
    if "\n" in line or "\r" in line:
        line = line.replace("\r", "\\r").replace("\n", "\\n")
    return line


class TextSink(ByteSink):
    """One line per record through a template (see the module docstring)."""

    kind = "text"

    def __init__(self, context: Any):
        super().__init__(context)
        chunk_mode = context.chunk is not None
        self.accepts = (ChunkRecord,) if chunk_mode else (HeapRecord,)
        self.line_template = self.config.template or (
            CHUNK_TEMPLATE if chunk_mode else HEAP_TEMPLATE)
        self.timeline = context.timeline if context.timeline.has_utc else None
        check_template(self.line_template, chunk_mode, self.timeline is not None)
        self._chunk_mode = chunk_mode

    def _encode(self, record: Any) -> Piece:
        try:
            if self._chunk_mode:
                line = self.line_template.format(**chunk_fields(record, self.timeline))
            else:
                line = format_heap(self.line_template, record, self.timeline)
        except _FORMAT_ERRORS as exc:
            raise ValueError(f"template {self.line_template!r}: {exc}") from None
        data = (_one_line(line) + "\n").encode()
        key = record.chunk_id if isinstance(record, ChunkRecord) else record.cnt
        return Piece(record, len(data), [data], key)

    def _header(self, first: Piece) -> bytes:
        clock = self.file_metadata(block=None)
        lines = [header_line(self.line_template)]
        if "sync_time" in clock:
            lines.insert(0, f"# sync_time={clock['sync_time']!r} "
                            f"timestamp_rate={clock['timestamp_rate']!r}")
        return "".join(line + "\n" for line in lines).encode()
