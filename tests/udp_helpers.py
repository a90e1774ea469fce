"""What the kernel offers for UDP offloads, and a workload's packets back to back."""

from __future__ import annotations

import os
import socket
import tempfile

from daqd import _spead

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104


def kernel_has_gso() -> bool:
    """Whether UDP sockets have the UDP_SEGMENT option (Linux >= 4.18)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        except OSError:
            return False
    return True


def kernel_has_gro() -> bool:
    """Whether UDP sockets take the UDP_GRO option (Linux >= 5.0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            return False
    return True


HAVE_GSO = kernel_has_gso()
HAVE_GRO = kernel_has_gro()


def workload_stream(workload: str, heaps: int) -> bytearray:
    """The workload's packets back to back, as ``send(..., "stream")`` writes them."""
    with tempfile.TemporaryFile() as f:
        _spead.send(_spead.SimReader(workload, heaps=heaps), f.fileno(), "stream")
        f.seek(0)
        return bytearray(os.read(f.fileno(), 1 << 24))
