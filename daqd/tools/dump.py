"""``daqd dump``: decode a source and write one JSON line per heap."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import click

from daqd import _spead
from daqd.recv.bug_compat import parse_bug_compat
from daqd.recv.descriptors import DESCRIPTOR_ID, decode_descriptors
from daqd.recv.heap_records import PACKET_STRUCTURE_IDS
from daqd.recv.sources import DEFAULT_MAX_PACKET_SIZE, Source, open_source
from daqd.tools.progress import Progress
from daqd.tools.progress import options as progress_options

# Packet-structure items and descriptors are not printed as items (INTERFACES.md).
STRUCTURE_IDS = PACKET_STRUCTURE_IDS | {DESCRIPTOR_ID}


def heap_record(heap: Any, bug_compat: int = 0) -> dict[str, Any]:
    """Build the JSON object INTERFACES.md specifies for one heap.

    `bug_compat` is the mask its descriptors are read with (`daqd.recv.bug_compat`).
    """
    record: dict[str, Any] = {
        "cnt": heap.cnt,
        "complete": heap.complete,
        "start": heap.is_start,
        "stop": heap.is_stop,
    }
    if not heap.complete:
        record["received"] = heap.received
        record["length"] = heap.length
        record["payload_ranges"] = [list(r) for r in heap.payload_ranges]
        return record
    record["items"] = [
        {"id": item.id, "immediate": True, "value": item.value}
        if item.immediate
        else {"id": item.id, "immediate": False, "hex": item.value.hex()}
        for item in heap.items
        if item.id not in STRUCTURE_IDS
    ]
    descriptors = decode_descriptors(heap, bug_compat)
    if descriptors:
        record["descriptors"] = descriptors
    return record


def receive_heaps(
    source: Source, stream: Any, should_stop: Callable[[], bool] = lambda: False
) -> Iterator[Any]:
    """Yield heaps from `source` through `stream` until it ends, stops or is told to."""
    reader = source.reader
    while True:
        done = stream.process(reader) < 0 or stream.stopped
        yield from stream.pop_ready()
        if done or should_stop():
            break
    yield from stream.flush()


def run_dump(
    source: Source,
    *,
    max_heaps: int,
    allow_out_of_order: bool,
    incomplete: bool,
    heap_windows: int = 1,
    stop_on_stop_item: bool,
    max_heap_size: int,
    count: int | None,
    out: TextIO,
    err: TextIO,
    max_live_heap_bytes: int = _spead.DEFAULT_MAX_LIVE_HEAP_BYTES,
    progress: str = "off",
    progress_interval: float = 10.0,
    bug_compat: int = 0,
    allow_unsized_heaps: bool = True,
    memcpy: str = "auto",
) -> dict[str, int]:
    """Print heaps as JSON lines; returns the stream's counters.

    SIGINT and SIGTERM end the dump cleanly: the partial heaps still live are
    flushed (and printed with ``--incomplete``) and the counters summarised.
    `progress` (``daqd.tools.progress.MODES``) reports how far a finite source
    (``file:``, ``pcap:``, ``sim:`` with heaps) has been read; a network source
    has no size, so none.  `bug_compat` is spead2's mask for descriptors;
    `allow_unsized_heaps` and `memcpy` are the stream's (``HeapStream``).
    """
    stream = _spead.HeapStream(
        max_heaps=max_heaps,
        heap_windows=heap_windows,
        allow_out_of_order=allow_out_of_order,
        max_heap_size=max_heap_size,
        stop_on_stop_item=stop_on_stop_item,
        max_live_heap_bytes=max_live_heap_bytes,
        allow_unsized_heaps=allow_unsized_heaps,
        memcpy=memcpy,
    )
    interrupted = [False]

    def on_signal(signum: int, frame: Any) -> None:
        interrupted[0] = True
        source.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    printed = 0
    decoded = [0]
    started = time.monotonic()
    reader = source.reader
    report = Progress("dump", reader.progress, lambda: decoded[0],
                      mode=progress if source.finite else "off", interval=progress_interval)
    try:
        for heap in receive_heaps(source, stream, lambda: interrupted[0]):
            decoded[0] += 1
            if not heap.complete and not incomplete:
                continue
            if count is not None and printed >= count:
                interrupted[0] = True
                source.stop()
                continue
            out.write(json.dumps(heap_record(heap, bug_compat), separators=(", ", ": ")) + "\n")
            printed += 1
        out.flush()
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): not an error.
        sys.stdout = None  # type: ignore[assignment]
    finally:
        report.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if source.reader is not None:
            stream.poll_source(source.reader)   # the kernel's drops up to now
        source.close()
    counters = stream.stats()
    summary = {
        "counters": counters,
        "heaps_printed": printed,
        "seconds": round(time.monotonic() - started, 3),
    }
    err.write(json.dumps(summary) + "\n")
    return counters


INT = click.IntRange


def _bug_compat(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_bug_compat(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("dump")
@click.argument("source")
@click.option("--max-heaps", type=INT(min=1), default=_spead.DEFAULT_MAX_HEAPS,
              show_default=True, help="Partial heaps alive at once (per heap window).")
@click.option("--heap-windows", type=INT(min=1, max=_spead.MAX_HEAP_WINDOWS), default=1,
              show_default=True,
              help="Windows of --max-heaps live heaps, a heap in window heap_cnt %% N "
                   "(spead2's substreams).")
@click.option("--allow-out-of-order", is_flag=True,
              help="Accept the packets of a heap in any order.")
@click.option("--incomplete", is_flag=True,
              help="Print incomplete heaps too (received and length instead of items).")
@click.option("--stop-on-stop-item/--no-stop-on-stop-item", default=True, show_default=True,
              help="End at a stream-control stop heap (else print it).")
@click.option("--max-packet-size", type=INT(min=8), default=DEFAULT_MAX_PACKET_SIZE,
              show_default=True)
@click.option("--max-heap-size", type=INT(min=0), default=_spead.DEFAULT_MAX_HEAP_SIZE,
              show_default=True,
              help="Larger heaps are rejected and counted.")
@click.option("--max-live-heap-bytes", type=INT(min=_spead.MIN_MAX_LIVE_HEAP_BYTES),
              default=_spead.DEFAULT_MAX_LIVE_HEAP_BYTES, show_default=True,
              help="Payload bytes the partial heaps may hold together (else the oldest "
                   "are evicted; a heap larger on its own is refused and counted).")
@click.option("--bug-compat", default="", callback=_bug_compat, metavar="FLAGS",
              help="spead2's bug_compat for descriptors: pyspead-0.5.2, or BUG_COMPAT_* "
                   "names joined with |.")
@click.option("--allow-unsized-heaps/--no-allow-unsized-heaps", default=True,
              show_default=True, help="Take packets without HEAP_SIZE (spead2's default).")
@click.option("--memcpy", type=click.Choice(_spead.MEMCPY_MODES), default="auto",
              show_default=True, help="The payload copy (auto: standard in heap mode).")
@click.option("--count", type=INT(min=0), default=None, help="Stop after printing this many heaps.")
@progress_options
def command(source: str, max_heaps: int, heap_windows: int, allow_out_of_order: bool,
            incomplete: bool, stop_on_stop_item: bool, max_packet_size: int,
            max_heap_size: int, max_live_heap_bytes: int, bug_compat: int,
            allow_unsized_heaps: bool, memcpy: str, count: int | None, progress: str,
            progress_interval: float) -> None:
    """Decode SOURCE and print one JSON line per heap; counters go to stderr.

    SOURCE is udp://HOST:PORT, tcp://HOST:PORT, pcap:PATH, file:PATH (file:- for
    stdin) or sim:W1 (W2, W3; ?heaps=N&rate=BPS).
    """
    src = open_source(source, max_packet_size=max_packet_size)
    for warning in src.warnings:
        click.echo(f"daqd: warning: {warning}", err=True)
    run_dump(src, max_heaps=max_heaps, heap_windows=heap_windows,
             allow_out_of_order=allow_out_of_order,
             incomplete=incomplete, stop_on_stop_item=stop_on_stop_item,
             max_heap_size=max_heap_size, count=count, out=sys.stdout, err=sys.stderr,
             max_live_heap_bytes=max_live_heap_bytes, progress=progress,
             progress_interval=progress_interval, bug_compat=bug_compat,
             allow_unsized_heaps=allow_unsized_heaps, memcpy=memcpy)
