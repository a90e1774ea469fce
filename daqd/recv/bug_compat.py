"""spead2's ``bug_compat`` flags: the protocol bugs of old senders a stream expects.

The one definition of the flags (spead2's values and names), and of their
text form, which the ``bug_compat`` key of a ``[[stream]]``, ``daqd dump
--bug-compat`` and ``daqd simulate --bug-compat`` take:
``"pyspead-0.5.2"`` (all three bugs of PySPEAD 0.5.2, spead2's
``BUG_COMPAT_PYSPEAD_0_5_2``), or spead2's flag names joined with ``|``, e.g.
``"BUG_COMPAT_DESCRIPTOR_WIDTHS|BUG_COMPAT_SHAPE_BIT_1"``; ``""`` is none.

What they change is spead2's too (``recv_heap.cpp``, ``Descriptor.from_raw``):
only descriptors.  ``DESCRIPTOR_WIDTHS``: a descriptor's format fields are 4
bytes (code and 24 bits) and its shape fields 8, whatever the flavour;
``SHAPE_BIT_1``: bit 1, not bit 0, of a shape field's first byte marks a
variable dimension; ``SWAP_ENDIAN``: a numpy header's byte order is swapped.
Packets and item values are decoded as without them.
"""

from __future__ import annotations

BUG_COMPAT_DESCRIPTOR_WIDTHS = 1 << 0
BUG_COMPAT_SHAPE_BIT_1 = 1 << 1
BUG_COMPAT_SWAP_ENDIAN = 1 << 2
BUG_COMPAT_PYSPEAD_0_5_2 = 0x7

#: Every name the text form accepts, and its mask.
NAMES: dict[str, int] = {
    "pyspead-0.5.2": BUG_COMPAT_PYSPEAD_0_5_2,
    "BUG_COMPAT_DESCRIPTOR_WIDTHS": BUG_COMPAT_DESCRIPTOR_WIDTHS,
    "BUG_COMPAT_SHAPE_BIT_1": BUG_COMPAT_SHAPE_BIT_1,
    "BUG_COMPAT_SWAP_ENDIAN": BUG_COMPAT_SWAP_ENDIAN,
    "BUG_COMPAT_PYSPEAD_0_5_2": BUG_COMPAT_PYSPEAD_0_5_2,
}


def parse_bug_compat(text: str) -> int:
    """Return the mask of a ``bug_compat`` text (``""``: 0).

    Raises
    ------
    ValueError
        A name that is not one of `NAMES` (the message lists them).
    """
    mask = 0
    for part in text.split("|") if text.strip() else []:
        name = part.strip()
        if name not in NAMES:
            raise ValueError(f"{name!r} is not a bug_compat flag: expected \"\" or one or more "
                             f"of {', '.join(NAMES)} joined with |")
        mask |= NAMES[name]
    return mask
