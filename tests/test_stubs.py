"""The type stubs of the compiled modules match the modules, both ways.

``daqd/_spead.pyi`` and ``daqd/_spead2compat.pyi`` are what mypy (and a
user's editor) sees of ``daqd._spead`` and ``daqd._spead2compat``.  Read
with `ast` and compared with the imported modules: every public name a stub
declares exists in the module (a class's members in the class), every public
class, function and constant of the module, and every public member of its
classes, is in the stub, with the same bases and, where the compiled code
tells its signature, the same parameter names.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import types
from pathlib import Path

import pytest

DAQD = Path(__file__).resolve().parent.parent / "daqd"
MODULES = ["_spead", "_spead2compat"]


def _public(name: str) -> bool:
    return not name.startswith("_")


def _stub(name: str) -> ast.Module:
    return ast.parse((DAQD / f"{name}.pyi").read_text())


def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
    return out


def _members(cls: ast.ClassDef) -> dict[str, ast.AST]:
    """Members a stub class declares itself: methods, properties, attributes, enum values."""
    out: dict[str, ast.AST] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return out


def _runtime_public(module: types.ModuleType) -> set[str]:
    """The module's own public names (not the modules it imports, e.g. ``np``)."""
    return {n for n in dir(module) if _public(n)
            and not isinstance(getattr(module, n), types.ModuleType)}


def _parameter_names(node: ast.FunctionDef) -> list[str]:
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [f"*{a.vararg.arg}"] if a.vararg else []
    names += [f"**{a.kwarg.arg}"] if a.kwarg else []
    return names


def _runtime_parameter_names(obj: object) -> list[str] | None:
    """Parameter names of a compiled callable, or None when it does not tell them."""
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in sig.parameters.values()}
    if {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds:
        return None     # a cdef class's slot wrapper: (self, /, *args, **kwargs)
    prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [prefix.get(p.kind, "") + p.name for p in sig.parameters.values()]


@pytest.mark.parametrize("name", MODULES)
def test_every_stub_name_is_in_the_module(name):
    module = importlib.import_module(f"daqd.{name}")
    for top, node in _top_level(_stub(name)).items():
        assert hasattr(module, top), f"daqd.{name}.{top} is in the stub, not the module"
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, top)
            for member in _members(node):
                assert hasattr(cls, member), f"daqd.{name}.{top}.{member}: not in the module"


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_of_the_module_is_in_the_stub(name):
    module = importlib.import_module(f"daqd.{name}")
    stub = _top_level(_stub(name))
    missing = sorted(_runtime_public(module) - set(stub))
    assert not missing, f"daqd.{name}: not in {name}.pyi: {missing}"


def _declared(classes: dict[str, ast.ClassDef], name: str) -> set[str]:
    """Members of stub class `name` and of the stub classes it derives from."""
    node = classes[name]
    out = set(_members(node))
    for base in node.bases:
        if ast.unparse(base) in classes:
            out |= _declared(classes, ast.unparse(base))
    return out


@pytest.mark.parametrize("name", MODULES)
def test_every_public_member_of_a_class_is_in_the_stub(name):
    """Members a class defines itself (``vars``), in its stub class or a stub base."""
    module = importlib.import_module(f"daqd.{name}")
    classes = {k: v for k, v in _top_level(_stub(name)).items() if isinstance(v, ast.ClassDef)}
    for top in classes:
        cls = getattr(module, top)
        declared = _declared(classes, top)
        own = {m for m in vars(cls) if _public(m)}
        if issubclass(cls, enum.Enum):
            own = set(cls.__members__)
        assert not own - declared, f"daqd.{name}.{top}: not in the stub: {sorted(own - declared)}"


@pytest.mark.parametrize("name", MODULES)
def test_stub_classes_have_the_module_bases(name):
    """A stub base is a base of the class; a base the module defines is in the stub."""
    module = importlib.import_module(f"daqd.{name}")
    for top, node in _top_level(_stub(name)).items():
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, top)
            stub_bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
            mro = {c.__name__ for c in cls.__mro__[1:]}
            own = {b.__name__ for b in cls.__bases__
                   if b.__module__ == module.__name__ and _public(b.__name__)}
            assert stub_bases <= mro, f"daqd.{name}.{top}: {stub_bases} not in {mro}"
            assert own <= stub_bases, f"daqd.{name}.{top}: bases {own} not in the stub"


@pytest.mark.parametrize("name", MODULES)
def test_signatures_name_the_module_parameters(name):
    """Where the compiled code tells a callable's parameters, the stub names the same."""
    module = importlib.import_module(f"daqd.{name}")
    checked = 0
    for top, node in _top_level(_stub(name)).items():
        pairs = []
        if isinstance(node, ast.FunctionDef):
            pairs.append((f"{top}", node, getattr(module, top)))
        elif isinstance(node, ast.ClassDef):
            cls = getattr(module, top)
            for member, sub in _members(node).items():
                if isinstance(sub, ast.FunctionDef) and not any(
                        ast.unparse(d) == "property" for d in sub.decorator_list):
                    pairs.append((f"{top}.{member}", sub, vars(cls).get(member)))
        for where, stub_node, obj in pairs:
            runtime = None if obj is None else _runtime_parameter_names(obj)
            if runtime is None:
                continue
            assert _parameter_names(stub_node) == runtime, f"daqd.{name}.{where}"
            checked += 1
    assert checked or name == "_spead2compat"


def test_stat_index_members_are_the_module_ones():
    from daqd import _spead

    stub = next(n for n in _stub("_spead").body
                if isinstance(n, ast.ClassDef) and n.name == "StatIndex")
    assert set(_members(stub)) == set(_spead.StatIndex.__members__)
