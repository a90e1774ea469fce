"""Arguments of control requests, checked: one line naming what is wrong.

A control request's arguments come from a person (`daqd capture`, a script);
a wrong one gets ``{"ok": false, "error": "..."}`` (`daqd.service.control`
turns the `RequestArgumentError` into that reply) and the daemon goes on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from daqd.errors import UsageProblem


class RequestArgumentError(UsageProblem):
    """A control request's argument that cannot be used (one line)."""


class _Named(Protocol):
    name: str


Stream = TypeVar("Stream", bound=_Named)


def check_names(args: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse argument names a command does not take, naming those it does."""
    allowed = tuple(allowed)
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "no arguments"
        raise RequestArgumentError(f"unknown argument{'s' if len(unknown) > 1 else ''} "
                                   f"{', '.join(map(repr, unknown))}; it takes {takes}")


def pick_streams(streams: Sequence[Stream], name: Any) -> list[Stream]:
    """Return the stream called `name` (a string), or every stream when `name` is None."""
    if name is None:
        return list(streams)
    known = [s.name for s in streams]
    if not isinstance(name, str):
        raise RequestArgumentError(f"stream: expected a stream's name (a string), got {name!r}")
    for stream in streams:
        if stream.name == name:
            return [stream]
    raise RequestArgumentError(f"stream: unknown stream {name!r}; streams: {', '.join(known)}")
