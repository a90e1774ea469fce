"""daqd.recv.place_hooks: what a ``place`` name must lead to, without building a hook.

The example hook itself (a real capsule) is built and loaded by
tests/service/test_place_hook_daemon.py and tests/test_config_keys.py.
"""

from __future__ import annotations

import types

import pytest

from daqd.recv.place_hooks import load_place_hook
from daqd.user_code import import_object

LAYOUT = {"timestamp_step": 256, "heaps_per_chunk": 4, "substreams": 1, "heap_bytes": 256,
          "extra_items": []}


def test_resolve_needs_module_and_name():
    with pytest.raises(ValueError, match='not of the form "package.module:name"'):
        import_object("json.dumps")
    assert import_object("json:JSONDecoder.decode").__name__ == "decode"


def test_a_factory_returning_no_capsule_is_refused():
    with pytest.raises(ValueError, match="its 'place' is not daqd's hook"):
        load_place_hook("types:SimpleNamespace", LAYOUT, {"place": "x", "items": [1]})


def test_a_spead2_capsule_is_refused():
    """daqd._spead2compat's placement is a spead2 place callback, not daqd's ABI."""
    with pytest.raises(ValueError, match="not daqd's hook"):
        load_place_hook("daqd._spead2compat:Spead2Placement", LAYOUT)


def test_place_args_need_a_factory(monkeypatch):
    hook = types.SimpleNamespace(place=None, items=[])
    monkeypatch.setattr(types, "a_ready_hook", hook, raising=False)
    with pytest.raises(ValueError, match="is a hook, not a factory"):
        load_place_hook("types:a_ready_hook", LAYOUT, {"x": 1})
