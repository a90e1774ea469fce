"""``daqd simulate``: send a reference workload to a network target or a file."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from daqd import _spead
from daqd.errors import UsageProblem
from daqd.recv.bug_compat import parse_bug_compat
from daqd.recv.uri import parse_uri
from daqd.recv.workloads import WORKLOADS, connect, send, workload
from daqd.sinks.pcap import DEFAULT_UDP_PORT
from daqd.tools.progress import Progress
from daqd.tools.progress import options as progress_options


def simulate(
    target: str, workload_name: str, *, rate: float, heaps: int, stop: bool,
    port: int = DEFAULT_UDP_PORT, progress: str = "off", progress_interval: float = 10.0,
    descriptors: bool = False, bug_compat: int = 0,
) -> dict[str, Any]:
    """Send `heaps` heaps of a workload to `target`; returns what was sent.

    Targets: ``udp://HOST:PORT`` (UDP GSO, or sendmmsg batches where the
    kernel refuses it: the same datagrams either way), ``tcp://HOST:PORT``,
    ``file:PATH`` (packets back to back; ``file:-`` is standard output) and
    ``pcap:PATH`` or any path ending in ``.pcap`` (a classic pcap file of
    UDP frames to `port`, or to the target's ``?port=P``).  A stop heap
    follows unless `stop` is False.  With `descriptors` (or a `bug_compat`
    mask) a heap of the workload's descriptors goes first, written as spead2
    writes them in a stream with those bugs (`Workload.descriptor_packet`).
    `progress` (``daqd.tools.progress.MODES``) reports bytes, heaps, rate and
    ETA while sending.
    """
    try:
        w = workload(workload_name)
    except UsageProblem as exc:
        raise UsageProblem(f"--workload: {exc}") from None
    if target.endswith(".pcap") and not target.startswith(("file:", "pcap:")):
        target = "pcap:" + target
    uri = parse_uri(target, ("udp", "tcp", "file", "pcap"))
    if uri.scheme == "pcap" and uri.udp_port is not None:
        port = uri.udp_port
    batch = w.udp_batch() if uri.scheme == "udp" else 64
    source = _spead.SimReader(w.name, heaps=heaps, rate=rate, batch=batch)
    closer: Any = None
    if uri.listens:
        sock = connect(target)
        fd, mode, closer = sock.fileno(), ("udp" if uri.scheme == "udp" else "stream"), sock
    else:
        if not heaps:
            raise UsageProblem(f"{target}: --heaps is required when writing a file")
        if uri.path == "-" and uri.scheme == "file":
            fd, mode = sys.stdout.fileno(), "stream"
        else:
            if os.path.exists(uri.path):
                raise UsageProblem(f"{target}: {uri.path} exists; daqd never overwrites a file")
            try:
                closer = open(uri.path, "xb")
            except OSError as exc:
                raise UsageProblem(f"{target}: cannot create: {exc.strerror}") from None
            fd, mode = closer.fileno(), uri.scheme if uri.scheme == "pcap" else "stream"
            if mode == "pcap":
                closer.write(_spead.PCAP_FILE_HEADER)
                closer.flush()
    started = time.monotonic()
    heap_size = source.packet_size * source.packets_per_heap
    if descriptors or bug_compat:
        first = w.descriptor_packet(source.first_cnt - 1, bug_compat)
        _spead.send(_spead.ByteListReader([first]), fd, mode, port=port)
    try:
        with Progress("simulate", source.progress, lambda: source.progress()[0] // heap_size,
                      mode=progress, interval=progress_interval):
            packets, nbytes, dropped = send(source, fd, mode, heaps=heaps, stop=stop,
                                            port=port)
    finally:
        if closer is not None:
            closer.close()
    seconds = time.monotonic() - started
    return {
        "target": target,
        "workload": w.name,
        "heaps": heaps,
        "packets": packets,
        "bytes": nbytes,
        "send_dropped": dropped,
        "seconds": round(seconds, 3),
        "gbit_per_s": round(nbytes * 8 / seconds / 1e9, 3) if seconds > 0 else None,
    }


def _bug_compat(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_bug_compat(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("simulate")
@click.argument("target")
@click.option("--workload", type=click.Choice(list(WORKLOADS)), default="W1", show_default=True)
@click.option("--rate", type=click.FloatRange(min=0), default=0.0,
              help="Bytes per second of whole packets; 0 sends as fast as possible.")
@click.option("--heaps", type=click.IntRange(min=0), default=0,
              help="Heaps to send (0: until interrupted; required for files).")
@click.option("--stop/--no-stop", default=True, show_default=True,
              help="End with a stream-control stop heap.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_UDP_PORT, show_default=True,
              help="UDP destination port written into pcap frames.")
@click.option("--descriptors", is_flag=True,
              help="Send a heap of the workload's descriptors first.")
@click.option("--bug-compat", default="", callback=_bug_compat, metavar="FLAGS",
              help="Write the descriptors with spead2's bug_compat (implies --descriptors): "
                   "pyspead-0.5.2, or BUG_COMPAT_* names joined with |.")
@progress_options
def command(target: str, workload: str, rate: float, heaps: int, stop: bool, port: int,
            descriptors: bool, bug_compat: int, progress: str, progress_interval: float) -> None:
    """Send a reference workload to TARGET (udp://, tcp://, file:PATH, pcap:PATH)."""
    try:
        result = simulate(target, workload, rate=rate, heaps=heaps, stop=stop, port=port,
                          progress=progress, progress_interval=progress_interval,
                          descriptors=descriptors, bug_compat=bug_compat)
    except KeyboardInterrupt:
        return
    click.echo(json.dumps(result), err=True)
