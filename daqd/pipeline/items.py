"""Item values decoded against their descriptors, as spead2's ItemGroup decodes them.

Descriptors are read off the wire by `daqd.recv.descriptors`; a heap record
keeps the ones current when its heap arrived and decodes its values here.
`ItemDecoder` turns one item's raw value into what ``spead2.ItemGroup.update``
gives for it (spead2's ``Item.set_from_raw``):

- a numpy ``dtype`` descriptor (the ``.npy`` header text), or a ``format``
  whose fields are all numpy-able (``u``/``i`` of 8, 16, 32, 64 bits, ``f``
  of 32 or 64, ``b`` and ``c`` of 8; big-endian), gives a numpy array of that
  dtype in native byte order (read-only: a view of the record's bytes when no
  swap is needed), reshaped to ``shape`` (C or Fortran order); at most one
  variable dimension, sized from the value's length; extra bytes are ignored;
- other formats (``u``/``i`` of any width, ``b`` of other widths, mixed
  fields) are read bit by bit, most significant first, into Python ints (in
  an object array, or records of fields);
- an immediate item is its ``address_bits // 8`` big-endian bytes, padded at
  the head: a value takes the last bytes it needs;
- a scalar (shape ``()``) comes out as a numpy scalar, a Python int (formats
  spead2 reads bit by bit), or a ``numpy.void`` (several fields); a 1-D
  ``c``-of-8 item as a `str` (ASCII, NUL bytes dropped, as spead2 does).

A value too short for its shape (or a string that is not ASCII, or a
descriptor spead2 would refuse) raises `ValueError`: the caller keeps the raw
value.  `ItemDescriptors` is an immutable set of decoders by id, updated as
spead2's ItemGroup is (a new descriptor replaces those with its id or its
name; an identical one changes nothing), so that records can share the one
that was current when their heap arrived.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# A descriptor's numpy header is short; a longer one is refused before parsing.
_MAX_HEADER = 4096
_NUMPY_CODES = {("u", 8), ("u", 16), ("u", 32), ("u", 64), ("i", 8), ("i", 16), ("i", 32),
                ("i", 64), ("f", 32), ("f", 64), ("b", 8), ("c", 8)}


def _field_dtype(code: str, bits: int) -> str:
    """spead2's ``Descriptor._parse_format`` for one field."""
    if bits <= 0:
        raise ValueError(f"field ({code!r}, {bits}) has no length")
    if (code, bits) in _NUMPY_CODES:
        return {"b": "?", "c": "S1"}.get(code, f">{code}{bits // 8}")
    if code not in ("u", "i", "b"):
        raise ValueError(f"illegal format ({code!r}, {bits})")
    return "O"


def _numpy_header(header: str) -> tuple[tuple[int, ...], Literal["C", "F"], np.dtype]:
    """Shape, order and dtype of a ``.npy`` header (spead2's ``_parse_numpy_header``)."""
    if len(header) > _MAX_HEADER:
        raise ValueError(f"numpy header of {len(header)} characters (at most {_MAX_HEADER})")
    try:
        d = ast.literal_eval(header)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(f"cannot parse the numpy header {header!r}") from exc
    if not isinstance(d, dict) or sorted(d) != ["descr", "fortran_order", "shape"]:
        raise ValueError(f"numpy header {header!r} is not a dict of descr, fortran_order, "
                         "shape")
    shape = d["shape"]
    if not isinstance(shape, tuple) or not all(
            isinstance(x, int) and x >= 0 for x in shape):
        raise ValueError(f"numpy header shape {shape!r} is not valid")
    if not isinstance(d["fortran_order"], bool):
        raise ValueError(f"numpy header fortran_order {d['fortran_order']!r} is not a bool")
    try:
        dtype = np.dtype(d["descr"])
    except Exception as exc:  # numpy raises TypeError, ValueError, KeyError, ... on bad ones
        raise ValueError(f"numpy header descr {d['descr']!r} is not a dtype") from exc
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"numpy header dtype {dtype} holds objects or has no size")
    return tuple(int(x) for x in shape), "F" if d["fortran_order"] else "C", dtype


def numpy_header_shape(header: str) -> tuple[int, ...]:
    """Return the shape a ``.npy`` header declares.

    Raises
    ------
    ValueError
        `header` is not a numpy header spead2 accepts.
    """
    return _numpy_header(header)[0]


def swapped_numpy_header(header: str) -> str:
    """Return `header` (a ``.npy`` header) with its dtype's byte order swapped.

    What spead2's ``Descriptor.from_raw`` does to the numpy header of a
    stream with ``BUG_COMPAT_SWAP_ENDIAN`` (``dtype.newbyteorder()``), written
    back as spead2 writes a header.

    Raises
    ------
    ValueError
        `header` is not a numpy header spead2 accepts.
    """
    shape, order, dtype = _numpy_header(header)
    return repr({"descr": np.lib.format.dtype_to_descr(dtype.newbyteorder()),
                 "fortran_order": order == "F", "shape": shape})


def _bit_fields(data: bytes, elements: int, fields: tuple[tuple[str, int], ...]
                ) -> list[list[Any]]:
    """Read `elements` records of `fields` from `data`, most significant bit first.

    Returns one list of Python values per field (spead2's ``_load_recursive``).
    """
    width = sum(bits for _, bits in fields)
    need = (elements * width + 7) // 8
    table = np.unpackbits(np.frombuffer(data, np.uint8, need))[:elements * width]
    table = table.reshape(elements, width)
    out = []
    offset = 0
    for code, bits in fields:
        column = table[:, offset:offset + bits]
        offset += bits
        # Left-pad each field to whole bytes, then pack: big-endian bytes per value.
        padded = np.concatenate([np.zeros((elements, -bits % 8), np.uint8), column], axis=1)
        packed = np.packbits(padded, axis=1)
        raw = None
        if bits <= 64:
            raw = np.zeros(elements, np.uint64)
            for k in range(packed.shape[1]):
                raw = (raw << np.uint64(8)) | packed[:, k]
            values: list[Any] = raw.tolist()
        else:
            values = [int.from_bytes(row.tobytes(), "big") for row in packed]
        if code == "i":
            top = 1 << (bits - 1)
            values = [v - 2 * top if v >= top else v for v in values]
        elif code == "b":
            values = [bool(v) for v in values]
        elif code == "c":
            values = [bytes([v]) for v in values]
        elif code == "f":
            assert raw is not None
            values = list(raw.astype(f"u{bits // 8}").view(f"f{bits // 8}"))
        out.append(values)
    return out


class ItemDecoder:
    """Decodes one item's raw values against its descriptor, as spead2's ItemGroup does.

    Built once per descriptor (see `decoder_for`); a descriptor spead2 would
    refuse still makes a decoder, whose `decode` raises.

    Parameters
    ----------
    descriptor : mapping
        One of `decode_descriptors`' dicts: ``id``, ``name``, ``description``,
        ``shape`` (None for a variable dimension), ``format`` ([code, bits]
        pairs) and ``dtype`` (a numpy header, or None).

    Attributes
    ----------
    id : int
    name : str
    descriptor : dict
        The descriptor it was built from.
    shape : tuple
        The descriptor's shape (None: variable), from the numpy header if any.
    dtype : numpy.dtype or None
        Element dtype of the numpy path (big-endian for formats); None when
        the value is read bit by bit.
    error : str
        Why the descriptor cannot be used ("" when it can).
    """

    __slots__ = ("id", "name", "descriptor", "shape", "order", "dtype", "native", "fields",
                 "internal", "string", "_immediate_int", "error")

    def __init__(self, descriptor: Mapping[str, Any]):
        self.descriptor = dict(descriptor)
        self.id = int(descriptor["id"])
        self.name = str(descriptor.get("name", ""))
        self.shape: tuple[int | None, ...] = ()
        self.order: Literal["C", "F"] = "C"
        self.dtype: np.dtype | None = None
        self.native: np.dtype | None = None
        self.fields: tuple[tuple[str, int], ...] = ()
        self.internal: np.dtype | None = None
        self.string = False
        self._immediate_int = False
        self.error = ""
        try:
            self._build(descriptor)
        except (ValueError, TypeError) as exc:
            self.error = f"descriptor of {self.name!r} ({self.id:#x}): {exc}"

    def _build(self, d: Mapping[str, Any]) -> None:
        if d.get("dtype"):
            self.shape, self.order, self.dtype = _numpy_header(str(d["dtype"]))
        else:
            self.shape = tuple(None if x is None or int(x) < 0 else int(x)
                               for x in d.get("shape") or ())
            self.fields = tuple((str(code), int(bits)) for code, bits in d.get("format") or ())
            if not self.fields:
                raise ValueError("empty format")
            self.internal = np.dtype(",".join(_field_dtype(c, b) for c, b in self.fields))
            if not self.internal.hasobject:
                self.dtype = self.internal
            self.string = len(self.shape) == 1 and self.fields == (("c", 8),)
            (code, bits), = self.fields if len(self.fields) == 1 else (("", 0),)
            self._immediate_int = not self.shape and code in ("u", "i") and bits % 8 == 0 \
                and self.dtype is None
        if sum(x is None for x in self.shape) > 1:
            raise ValueError("more than one variable dimension")
        if self.dtype is not None:
            self.native = self.dtype.newbyteorder("=")

    def _dynamic_shape(self, max_elements: int) -> tuple[int, ...]:
        known = 1
        for x in self.shape:
            if x is not None:
                known *= x
        fill = 0 if known == 0 else max_elements // known
        return tuple(fill if x is None else x for x in self.shape)

    def decode(self, raw: int | bytes, address_bits: int = 48) -> Any:
        """Return the value spead2 would give for this raw item value.

        Parameters
        ----------
        raw : int or bytes
            An immediate item's value (int) or an addressed item's bytes.
        address_bits : int
            The heap's flavour (an immediate holds ``address_bits // 8`` bytes).

        Raises
        ------
        ValueError
            The descriptor is not usable, the value is too short for its
            shape, or a string is not ASCII.
        """
        if self.error:
            raise ValueError(self.error)
        immediate = isinstance(raw, int)
        if immediate:
            size = address_bits // 8
            if self._immediate_int:         # spead2's immediate fast path (u48, i40, ...)
                code, bits = self.fields[0]
                if bits > 8 * size:
                    raise ValueError(f"{self.name!r}: {bits} bits do not fit an immediate "
                                     f"of {8 * size}")
                value = int(raw) & ((1 << bits) - 1)
                if code == "i" and value >> (bits - 1):
                    value -= 1 << bits
                return value
            data = int(raw).to_bytes(size, "big")
        else:
            data = bytes(raw)
        if self.dtype is not None:
            return self._decode_numpy(data, immediate)
        return self._decode_bits(data, immediate)

    def _too_short(self, length: int, shape: tuple[int, ...]) -> ValueError:
        return ValueError(f"{self.name!r}: {length} bytes are too few for shape {shape}")

    def _decode_numpy(self, data: bytes, immediate: bool) -> Any:
        assert self.dtype is not None and self.native is not None
        itemsize = self.dtype.itemsize
        shape = self._dynamic_shape(len(data) // itemsize)
        elements = math.prod(shape)
        size = elements * itemsize
        if size > len(data):
            raise self._too_short(len(data), shape)
        start = len(data) - size if immediate else 0
        array = np.frombuffer(data, self.dtype, elements, start)
        array = array.astype(self.native, casting="equiv", copy=False)
        value = array.reshape(shape, order=self.order)
        if not self.shape:
            return value[()]
        if self.string:
            try:
                return value.tobytes().replace(b"\0", b"").decode("ascii")
            except UnicodeDecodeError:
                raise ValueError(f"{self.name!r}: not an ASCII string") from None
        return value

    def _decode_bits(self, data: bytes, immediate: bool) -> Any:
        assert self.internal is not None
        width = sum(bits for _, bits in self.fields)
        shape = self._dynamic_shape(len(data) * 8 // width)
        elements = math.prod(shape)
        if elements * width > len(data) * 8:
            raise self._too_short(len(data), shape)
        if immediate:
            data = data[len(data) - (elements * width + 7) // 8:]
        columns = _bit_fields(data, elements, self.fields)
        flat = np.empty(elements, self.internal)
        flat[:] = columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))
        value = flat.reshape(shape)
        return value[()] if not self.shape else value


_DECODERS: dict[str, ItemDecoder] = {}
_DECODERS_MAX = 1024


def _descriptor_key(descriptor: Mapping[str, Any]) -> str:
    return json.dumps(descriptor, sort_keys=True, separators=(",", ":"))


def decoder_for(descriptor: Mapping[str, Any]) -> ItemDecoder:
    """Return the decoder of `descriptor`, built once (a bounded cache shares it)."""
    key = _descriptor_key(descriptor)
    decoder = _DECODERS.get(key)
    if decoder is None:
        if len(_DECODERS) >= _DECODERS_MAX:
            _DECODERS.clear()
        decoder = _DECODERS[key] = ItemDecoder(descriptor)
    return decoder


@dataclass(frozen=True)
class DecodedItems:
    """A heap's items decoded against descriptors.

    Attributes
    ----------
    values : dict
        Every item by id, in id order: its decoded value, or its raw one (int,
        or bytes) when it has no descriptor or does not fit it.
    names : dict
        Id -> name of the items that have a descriptor.
    ids : dict
        Name -> id of the same items.
    undescribed : int
        Items without a descriptor (they stay raw).
    failed : dict
        Id -> reason, for the items whose value does not fit their
        descriptor (they stay raw).
    """

    values: dict[int, Any] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    undescribed: int = 0
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def by_name(self) -> dict[str, Any]:
        """Name -> value of the items that have a descriptor, in id order."""
        return {name: self.values[i] for i, name in self.names.items()}


class ItemDescriptors(Mapping[int, ItemDecoder]):
    """An immutable set of item decoders by id (what a stream knew at one time).

    `updated` returns a new set (or this one, when nothing changed), so a
    record can keep the set that was current when its heap arrived.
    """

    __slots__ = ("_by_id", "_encoded")

    def __init__(self, decoders: Iterable[ItemDecoder] = ()):
        self._by_id: dict[int, ItemDecoder] = {d.id: d for d in decoders}
        self._encoded: dict[frozenset[int], bytes] = {}

    @classmethod
    def from_dicts(cls, descriptors: Iterable[Mapping[str, Any]]) -> ItemDescriptors:
        """Build a set from `decode_descriptors` dicts, in order (later ones win)."""
        return EMPTY_DESCRIPTORS.updated(descriptors)

    def __getitem__(self, item_id: int) -> ItemDecoder:
        return self._by_id[item_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        names = ", ".join(f"{i:#x}={d.name!r}" for i, d in sorted(self._by_id.items()))
        return f"ItemDescriptors({names})"

    def updated(self, descriptors: Iterable[Mapping[str, Any]]) -> ItemDescriptors:
        """Add `descriptors` as spead2's ``ItemGroup.update`` does.

        A descriptor identical to the one held for its id changes nothing;
        otherwise it replaces the descriptors with its id or its name.
        """
        by_id: dict[int, ItemDecoder] | None = None
        for d in descriptors:
            current = by_id if by_id is not None else self._by_id
            old = current.get(int(d["id"]))
            if old is not None and _descriptor_key(old.descriptor) == _descriptor_key(d):
                continue
            if by_id is None:
                by_id = dict(self._by_id)
            decoder = decoder_for(d)
            for other in [i for i, o in by_id.items() if o.name == decoder.name]:
                del by_id[other]
            by_id[decoder.id] = decoder
        if by_id is None:
            return self
        return ItemDescriptors(by_id.values())

    def descriptors(self, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Return the descriptor dicts held (only those of `ids` if given), by id."""
        wanted = self._by_id.keys() if ids is None else set(ids) & self._by_id.keys()
        return [self._by_id[i].descriptor for i in sorted(wanted)]

    def encode(self, ids: Iterable[int]) -> bytes:
        """JSON of the descriptors of `ids` (b"" if none), cached per set of ids."""
        key = frozenset(i for i in ids if i in self._by_id)
        blob = self._encoded.get(key)
        if blob is None:
            found = self.descriptors(key)
            blob = json.dumps(found, separators=(",", ":")).encode() if found else b""
            if len(self._encoded) < 64:
                self._encoded[key] = blob
        return blob

    @classmethod
    def decode(cls, blob: bytes) -> ItemDescriptors:
        """Invert `encode` (cached: the records of a log share their descriptors).

        Raises
        ------
        ValueError
            `blob` is not a JSON list of descriptor dicts.
        """
        found = _DECODED_SETS.get(blob)
        if found is None:
            try:
                dicts = json.loads(blob) if blob else []
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"descriptors are not JSON: {exc}") from None
            if not isinstance(dicts, list) or not all(
                    isinstance(d, dict) and isinstance(d.get("id"), int) for d in dicts):
                raise ValueError("descriptors are not a list of descriptor objects")
            found = cls.from_dicts(dicts)
            if len(_DECODED_SETS) >= 64:
                _DECODED_SETS.clear()
            _DECODED_SETS[bytes(blob)] = found
        return found

    def decode_items(self, items: Mapping[int, int | bytes], address_bits: int = 48
                     ) -> DecodedItems:
        """Decode a heap's items (id -> raw value); never raises.

        Items without a descriptor, and those whose value does not fit theirs,
        keep their raw value (counted in `DecodedItems`).
        """
        values: dict[int, Any] = {}
        names: dict[int, str] = {}
        failed: dict[int, str] = {}
        for item_id in sorted(items):
            raw = values[item_id] = items[item_id]
            decoder = self._by_id.get(item_id)
            if decoder is None:
                continue
            names[item_id] = decoder.name
            try:
                values[item_id] = decoder.decode(raw, address_bits)
            except Exception as exc:  # ValueError, or anything odd: raw kept, counted
                failed[item_id] = str(exc) or type(exc).__name__
        return DecodedItems(values, names, {n: i for i, n in names.items()},
                            len(values) - len(names), failed)


EMPTY_DESCRIPTORS = ItemDescriptors()
_DECODED_SETS: dict[bytes, ItemDescriptors] = {}
