"""`daqd.recv.sources.open_sources`: one socket per receive thread of a ``udp://`` source."""

from __future__ import annotations

import socket

import pytest

from daqd.errors import SourceError
from daqd.recv.sources import open_sources


@pytest.mark.network
def test_each_thread_has_its_own_reuse_port_socket_on_the_first_ones_port():
    sources = open_sources("udp://127.0.0.1:0", 3, socket_buffer=1 << 16)
    try:
        ports = {s.address[1] for s in sources}
        assert len(sources) == 3 and len(ports) == 1 and 0 not in ports
        assert len({s.sock.fileno() for s in sources}) == 3
        assert all(s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sources)
        assert len({id(s.reader) for s in sources}) == 3
    finally:
        for s in sources:
            s.close()


@pytest.mark.network
def test_one_thread_binds_without_reuse_port():
    (source,) = open_sources("udp://127.0.0.1:0", 1)
    try:
        assert not source.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        with pytest.raises(SourceError, match="cannot listen"):
            open_sources(f"udp://127.0.0.1:{source.address[1]}", 2)    # the port is taken
    finally:
        source.close()


@pytest.mark.parametrize(("uri", "problem"), [
    ("file:/dev/null", "a file source is one stream of packets"),
    ("sim:W1", "a sim source is one stream of packets"),
    ("udp://239.9.9.9:7148", "multicast group"),
])
def test_sources_that_cannot_be_split_are_refused(uri, problem):
    with pytest.raises(SourceError, match=problem):
        open_sources(uri, 2)
