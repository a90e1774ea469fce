#!/usr/bin/env python3
"""Write W1 as a file of SPEAD packets with chosen heaps left out: input for ``daqd plot``.

    python examples/plot/lossy_w1.py /tmp/daqd-plot/lossy.spead

The packets are daqd's own reference workload (``_spead.SimReader``, one
packet per W1 heap); 64 chunks of 64 heaps, of which these are left out:
every 97th heap, a burst of 300 heaps (one of 4096 on the wire for ~5 chunks),
and heap slot 17 of chunks 40 to 49 (a sender that keeps missing one slot).
"""

from __future__ import annotations

import sys
from pathlib import Path

from daqd import _spead

HEAPS_PER_CHUNK = 64
CHUNKS = 64


def dropped(i: int) -> bool:
    """Whether W1 heap `i` (record i // 64, slot i % 64) is left out."""
    chunk, slot = divmod(i, HEAPS_PER_CHUNK)
    return (i % 97 == 50 or 1000 <= i < 1300
            or (40 <= chunk < 50 and slot == 17))


def main() -> None:
    """Write the file named on the command line."""
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    reader = _spead.SimReader("W1", heaps=HEAPS_PER_CHUNK * CHUNKS)
    i = 0
    with out.open("xb") as f:
        while (batch := reader.read_batch()) is not None:
            for packet in batch[0]:
                if not dropped(i):
                    f.write(packet)
                i += 1


if __name__ == "__main__":
    main()
