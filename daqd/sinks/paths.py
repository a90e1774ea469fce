"""Output file names: path templates, free names, and publishing a finished file.

A sink's ``path`` is a `str.format` template with these fields:

``{stream}``
    the stream's name;
``{start:STRFTIME}``
    when the file was started, UTC (a `datetime`, so any strftime format);
``{seq}``
    the file's sequence number in this run (0, 1, ...; e.g. ``{seq:04d}``);
``{chunk_id}``
    the first record's chunk id (chunk mode) or heap counter (heap mode);
``{capture_block}``
    the id of the capture block whose records the file holds (`block_name`):
    ``none`` outside capture blocks.  A record of another block than the
    file's (or of a block after none, or none after a block) starts a new
    file (`daqd.sinks.base`), so a file never mixes two blocks.

An event file's ``path`` (``[stream.trigger]``) has its own fields,
`EVENT_PATH_FIELDS`: ``{stream}``, ``{label}`` (the trigger's label),
``{event}`` (its number in the stream, e.g. ``{event:05d}``) and
``{start:STRFTIME}`` (the UTC of the window's start with a clock, else of the
request); `event_path` fills them in.

A file is written as ``FINAL.tmp`` in its final directory and published by
`publish`, which never replaces an existing file: the name moves on (the next
``{seq}``, or ``.1``, ``.2``, ... before the extension when the template has
no ``{seq}``).
"""

from __future__ import annotations

import datetime as dt
import errno
import glob
import os
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
PATH_FIELDS = ("stream", "start", "seq", "chunk_id", "capture_block")
#: Kinds with fewer fields: pcap records have no chunk id or heap counter, nor a
#: capture block; a zarr store is one per stream, written for good: no file fields.
PATH_FIELDS_BY_KIND = {"pcap": ("stream", "start", "seq"), "zarr": ("stream",)}
#: Fields of an event file's path (``[stream.trigger] path``).
EVENT_PATH_FIELDS = ("stream", "label", "event", "start")
#: What ``{capture_block}`` renders to for records outside any capture block.
NO_CAPTURE_BLOCK = "none"

# A sample of every field, to check a template's format specs once, at load time.
_SAMPLE = {"stream": "adc0", "start": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
           "seq": 0, "chunk_id": 0, "capture_block": "cb0", "label": "frb", "event": 1}


def block_name(block: Any) -> str:
    """``{capture_block}``: a capture block's id, `NO_CAPTURE_BLOCK` for None.

    A path separator or NUL in an id becomes ``_``, so an id names one file,
    never a directory.
    """
    if block is None:
        return NO_CAPTURE_BLOCK
    name = str(block.id)
    for bad in {"/", os.sep, "\0"}:
        name = name.replace(bad, "_")
    return name


def template_fields(template: str) -> list[tuple[str, str]]:
    """List the (field name, format spec) pairs of a `str.format` template, in order.

    Raises
    ------
    ValueError
        The template is not valid `str.format` syntax, or has a positional field.
    """
    fields = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError("positional fields ({}) are not allowed; name the field")
        fields.append((name, spec or ""))
    return fields


def field_root(name: str) -> str:
    """``items`` for ``items[0x1600]``, ``start`` for ``start.year``."""
    for i, ch in enumerate(name):
        if ch in ".[":
            return name[:i]
    return name


class PathTemplate:
    """A checked sink path template.

    Parameters
    ----------
    template : str
        The ``path`` key of a ``[[stream.sinks]]`` table.
    allowed : tuple of str
        Field names this sink kind can fill (a pcap sink has no ``chunk_id``).

    Raises
    ------
    ValueError
        An unknown field, a bad format spec, or a template naming a directory.
    """

    def __init__(self, template: str, allowed: tuple[str, ...] = PATH_FIELDS):
        self.template = template
        fields = template_fields(template)
        for name, _ in fields:
            if field_root(name) not in allowed:
                raise ValueError(f"unknown field {{{name}}}; the fields are "
                                 + ", ".join("{" + f + "}" for f in allowed))
        try:
            sample = template.format(**_SAMPLE)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise ValueError(f"cannot be formatted: {exc}") from None
        if not sample or sample.endswith(("/", os.sep)):
            raise ValueError("names a directory, not a file")
        self.uses_seq = any(field_root(name) == "seq" for name, _ in fields)

    @property
    def static_directory(self) -> Path:
        """The longest leading directory that holds no field (created at load time)."""
        head = self.template.split("{", 1)[0]
        if "{" in self.template:
            return Path(head).parent if not head.endswith(("/", os.sep)) else Path(head)
        return Path(self.template).parent

    def render(self, stream: str, start: float, seq: int, chunk_id: int,
               capture_block: Any = None) -> str:
        """Return the final name for a file started at Unix time `start`.

        `capture_block` is the first record's `CaptureBlock` (or None).
        """
        when = dt.datetime.fromtimestamp(start, dt.UTC)
        return self.template.format(stream=stream, start=when, seq=seq, chunk_id=chunk_id,
                                    capture_block=block_name(capture_block))


def event_path(template: str, stream: str, label: str, event: int, start: float) -> str:
    """Return a free name for an event file: `template` filled in, numbered if taken.

    `start` is Unix seconds (``{start:STRFTIME}``).  A name already used (by a
    file, or its ``.tmp``) gets ``.1``, ``.2``, ... before the extension.
    """
    when = dt.datetime.fromtimestamp(start, dt.UTC)
    name = template.format(stream=stream, label=label, event=event, start=when)
    for n in range(100000):
        candidate = with_suffix_number(name, n)
        if is_free(candidate):
            return candidate
    raise OSError(errno.EEXIST, "no free file name", name)


def template_glob(template: str, stream: str | None = None) -> str:
    """Return a glob pattern matching every name `template` can produce.

    With `stream`, a plain ``{stream}`` field (any format spec) is filled in,
    so the pattern matches that stream's files only; every other field
    matches anything.
    """
    parts = []
    converters: dict[str, Callable[[object], str]] = {"r": repr, "s": str, "a": ascii}
    for literal, name, spec, conversion in string.Formatter().parse(template):
        parts.append(glob.escape(literal))
        if name is None:
            continue
        if stream is not None and name == "stream" and "{" not in (spec or ""):
            value = converters[conversion](stream) if conversion else stream
            parts.append(glob.escape(format(value, spec or "")))
        else:
            parts.append("*")
    return "".join(parts)


def with_suffix_number(path: str, n: int) -> str:
    """``data/x.h5`` -> ``data/x.1.h5`` (n = 1); unchanged for n = 0."""
    if n == 0:
        return path
    p = Path(path)
    if p.suffix and p.stem:
        return str(p.with_name(f"{p.stem}.{n}{p.suffix}"))
    return f"{path}.{n}"


def is_free(path: str, reserved: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether neither `path` nor its temporary name exists or is reserved."""
    return (path not in reserved and not os.path.lexists(path)
            and not os.path.lexists(path + TMP_SUFFIX))


def publish(tmp: str, final: str) -> str:
    """Give the finished file `tmp` its final name without replacing any file.

    The name is `final` if free, else `final` numbered with `with_suffix_number`.
    A hard link is made first (it fails rather than replace), then `tmp` is
    removed; where hard links are not supported, a checked rename is used.

    Returns
    -------
    str
        The name the file now has.

    Raises
    ------
    OSError
        The file could not be renamed (it is still `tmp`).
    """
    if os.path.lexists(final) and _same_file(tmp, final):
        os.unlink(tmp)              # a link made before a crash: only the temp name remains
        return final
    base = final
    for n in range(1, 100000):
        try:
            os.link(tmp, final)
        except FileExistsError:
            final = with_suffix_number(base, n)
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # No hard links here (e.g. vfat, some FUSE file systems); EPERM is also
            # an immutable directory, which the rename then reports.
            if os.path.lexists(final):
                final = with_suffix_number(base, n)
                continue
            os.rename(tmp, final)
            return final
        os.unlink(tmp)
        return final
    raise OSError(errno.EEXIST, "no free file name", base)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
