"""User code named in a configuration: ``"package.module:name"`` strings.

Flush predicates (``flush_custom``), processing steps (``[stream.process]``)
and placement hooks (``[stream.chunk] place``) are all named this way; this
is the one place such a name is imported.
"""

from __future__ import annotations

import importlib
from typing import Any


def import_object(spec: str, form: str = "package.module:name") -> Any:
    """Import the object ``"package.module:name"`` names (`name` may be dotted: ``Class.method``).

    Raises
    ------
    ValueError
        One line saying why `spec` names nothing (`form` is how the message
        spells the expected shape).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f'not of the form "{form}"')
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:    # any failure of the user's module is a config problem
        raise ValueError(f"cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attr}") from None
    return target
