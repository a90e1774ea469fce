"""Compiled placement hooks named in a configuration: ``[stream.chunk] place``.

``place = "package.module:name"`` names a hook factory, as
``examples/place_hook`` builds one (``frequency_place:FrequencyPlacement``):
it is called with the chunk layout's keyword arguments (``timestamp_step``,
``heaps_per_chunk``, ``substreams``, ``heap_bytes``) and ``place_args``, and
returns an object with ``place`` (a PyCapsule of daqd's placement ABI,
``daqd/include/daqd_place.h``, or a tuple starting with one), ``items`` (the
immediate item ids it is given) and, for an ABI version 2 hook, ``counters``
(the names of its own counters).  `load_place_hook` checks all of that and
says in one line what is wrong (``daqd validate`` calls it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daqd import _spead
from daqd.user_code import import_object

#: The layout keys (``[stream.chunk]``) a hook factory is called with.
LAYOUT_KEYS = ("timestamp_step", "heaps_per_chunk", "substreams", "heap_bytes")


@dataclass(frozen=True)
class PlaceHook:
    """A loaded hook: the `ChunkGroup` arguments ``place``, ``place_items``, ``place_counters``."""

    place: Any
    items: tuple[int, ...]
    counters: tuple[str, ...]
    version: int

    def group_arguments(self) -> dict[str, Any]:
        """Return the hook as `ChunkGroup` keyword arguments."""
        return {"place": self.place, "place_items": list(self.items),
                "place_counters": list(self.counters)}


def load_place_hook(spec: str, layout: Mapping[str, Any],
                    args: Mapping[str, Any] | None = None) -> PlaceHook:
    """Load and check the hook `spec` names, made for `layout` with `args`.

    Parameters
    ----------
    spec : str
        ``"package.module:name"`` of a hook factory (or of a hook object).
    layout : mapping
        The chunk layout; its `LAYOUT_KEYS` are passed to the factory.
    args : mapping, optional
        More keyword arguments of the factory (``place_args``).

    Raises
    ------
    ValueError
        One line: not importable, the call failed, no capsule of a known ABI
        version, bad items or counter names.
    """
    target = import_object(spec)
    if isinstance(target, type) or not hasattr(target, "place"):   # a class: a factory
        if not callable(target):
            raise ValueError(f"{spec} is neither a hook factory nor a hook (no 'place')")
        kwargs = {key: layout[key] for key in LAYOUT_KEYS}
        kwargs.update(args or {})
        try:
            target = target(**kwargs)
        except Exception as exc:    # the user's code: one line, whatever it raised
            raise ValueError(f"{spec}(...) failed: {type(exc).__name__}: {exc}") from None
    elif args:
        raise ValueError(f"{spec} is a hook, not a factory: it takes no place_args")
    place = getattr(target, "place", None)
    try:
        version = _spead.place_hook_version(place)
    except TypeError as exc:
        raise ValueError(f"{spec}: its 'place' is not daqd's hook ({exc})") from None
    try:
        items = tuple(int(x) for x in getattr(target, "items", ()))
    except (TypeError, ValueError):
        raise ValueError(f"{spec}: its 'items' is not a list of item ids") from None
    extra = len(layout.get("extra_items", ()))
    if len(items) + extra > _spead.GROUP_MAX_ITEMS:
        raise ValueError(f"{spec}: {len(items)} items and {extra} extra_items, more than "
                         f"{_spead.GROUP_MAX_ITEMS} in all")
    try:
        counters = _spead.check_place_counters(getattr(target, "counters", ()), version)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{spec}: {exc}") from None
    return PlaceHook(place, items, counters, version)
