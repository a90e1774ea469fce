"""daqd.recv.uri: the one reading of a source URI, as the configuration and the sources use it."""

from __future__ import annotations

import pytest

from daqd.errors import SourceError
from daqd.recv.uri import parse_uri, stream_udp_port


@pytest.mark.parametrize("text, fields", [
    ("udp://127.0.0.1:7148", {"scheme": "udp", "host": "127.0.0.1", "port": 7148}),
    ("udp://239.1.2.3:7148?interface=10.0.0.1&gro=0",
     {"scheme": "udp", "host": "239.1.2.3", "options": {"interface": "10.0.0.1", "gro": "0"}}),
    ("tcp://localhost:7149", {"scheme": "tcp", "host": "localhost", "port": 7149}),
    ("tcp://localhost:7149?once=1", {"scheme": "tcp", "options": {"once": "1"}}),
    ("tcp://localhost:7149", {"idle_timeout": 60.0}),
    ("tcp://localhost:7149?idle_timeout=0", {"idle_timeout": 0.0}),
    ("tcp://localhost:7149?idle_timeout=2.5", {"idle_timeout": 2.5}),
    ("pcap:in.pcap?port=7200", {"scheme": "pcap", "path": "in.pcap", "udp_port": 7200}),
    ("pcap://in.pcap", {"scheme": "pcap", "path": "in.pcap", "udp_port": None}),
    ("file:-", {"scheme": "file", "path": "-"}),
    ("sim:W2?heaps=1e3&rate=1e6", {"scheme": "sim", "path": "W2"}),
])
def test_parses(text, fields):
    uri = parse_uri(text)
    for name, value in fields.items():
        assert getattr(uri, name) == value, name
    assert uri.text == text


@pytest.mark.parametrize("text, words", [
    ("udp:7148", "expected udp://HOST:PORT"),
    ("udp://127.0.0.1", "expected udp://HOST:PORT"),
    ("udp://127.0.0.1:99999", "bad port"),
    ("udp://127.0.0.1:7148?gro=maybe", "gro='maybe' must be 1 or 0"),
    ("tcp://127.0.0.1:7148?interface=x",
     "unknown option 'interface' (expected: idle_timeout, once)"),
    ("tcp://127.0.0.1:7148?idle_timeout=-1", "idle_timeout='-1' must be 0 to 604800"),
    ("tcp://127.0.0.1:7148?idle_timeout=x", "idle_timeout='x' is not a number"),
    ("tcp://127.0.0.1:7148?once=2", "once='2' must be 1 or 0"),
    ("file:x?once=1", "unknown option 'once' (expected: none)"),
    ("pcap:in.pcap?port=x", "port='x' is not a whole number"),
    ("pcap:in.pcap?port=inf", "port='inf' is not a whole number"),
    ("pcap:in.pcap?port=7200.5", "port='7200.5' is not a whole number"),
    ("pcap:in.pcap?port=70000", "port='70000' must be 0 to 65535"),
    ("sim:W1?rate=nan", "rate='nan' is not a finite number"),
    ("udp://[::1]:7148", "expected an IPv4 address or a host name"),
    ("pcap:", "no path given"),
    ("sim:W9", "unknown workload 'W9'"),
    ("sim:W1?heaps=0", "heaps='0' must be >= 1"),
    ("http://x:1", "not a source URI"),
])
def test_refuses_in_one_line(text, words):
    with pytest.raises(SourceError) as err:
        parse_uri(text)
    message = str(err.value)
    assert message.startswith(f"{text}: ") and words in message and "\n" not in message


def test_a_stream_s_udp_port_is_the_first_source_that_names_one():
    assert stream_udp_port(["sim:W1", "udp://127.0.0.1:7150"]) == 7150
    assert stream_udp_port(["pcap:x.pcap?port=7200", "udp://127.0.0.1:7150"]) == 7200
    assert stream_udp_port(["file:x", "tcp://127.0.0.1:7151"]) == 7151
    assert stream_udp_port(["sim:W1"]) is None
