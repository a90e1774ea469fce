"""Type stubs for the compiled module ``daqd._spead2compat`` (cython_ext/spead2_compat.pyx).

Checked against the compiled module both ways by tests/test_stubs.py.
"""

from collections.abc import Sequence
from typing import Any

class Spead2Placement:
    def __init__(
        self,
        *,
        timestamp_item: int = 0x1600,
        timestamp_step: int = 8192,
        heaps_per_chunk: int = 64,
        heap_bytes: int = 8192,
        substream_item: int | None = None,
        substreams: int = 1,
        extra_items: Sequence[int] = (),
        packet_presence: int = 0,
    ) -> None: ...
    @property
    def items(self) -> list[int]: ...
    @property
    def place(self) -> Any: ...
    @property
    def max_heap_extra(self) -> int: ...
