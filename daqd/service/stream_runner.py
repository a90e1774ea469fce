"""One configured `[[stream]]` at run time: sources, receive threads, buffer, sinks.

Threads of a stream (each loop polls with a short timeout, so none can hang
the shutdown):

- one receive thread per source: ``process(reader)`` batches with the GIL
  released inside; heap mode turns complete heaps into `HeapRecord`s here;
  a packet tap (when a pcap sink is configured) is emptied here into
  `PacketRecord`s; a ``tcp://`` listener's connections are logged here;
- chunk mode: one consumer thread taking completed chunks from the group's
  data ring into the buffer as `ChunkRecord`s (no copy), every chunk ready
  at once (`ChunkGroup.get_batch`: one lock of the group, one of the gate,
  one of the buffer and one wake-up of the flusher per batch); with
  ``[stream.process]`` it runs the processing step on each first
  (`daqd.pipeline.process`), and the sinks, the trigger's event files and the
  data time follow the step's record layout;
- one flusher thread per buffer (daqd.pipeline.flush), the only caller of the sinks;
- with ``[stream.trigger]``: one writer thread per triggered event
  (`daqd.pipeline.events`), fed from the retention the receive side (heap
  mode) or the consumer (chunk mode) adds every record to, capturing or not.

A stop heap is a capture boundary unless ``exit_on_stop_heap``: the compiled
stream hands over what it holds (heaps; chunk mode: its open chunks, once
every source of the chunk group has had its stop heap or ended) and goes on;
once those records are in the buffer (heap mode: at once; chunk mode: when the
consumer has emptied the data ring) the buffer is flushed and the sinks finish
their files, so a capture's records are in files of their own; but a boundary
within BOUNDARY_REOPEN_INTERVAL of the last one that started new files only
flushes (a sender of stop heap after stop heap must not make a file each).

Capture blocks (`daqd.pipeline.capture`): every chunk and heap record passes
the stream's `CaptureGate` on its way into the buffer; the records of the
capture block carry it, the others are released and counted by reason.  When
a block's stop has passed, the buffer is flushed and the sinks finish their
files, as for a stop heap (but always: a person asked for it).

What network input can repeat at will (TCP connections, capture boundaries)
is logged through `RepeatedErrors`: the first few lines of each kind, then a
summary per statistics interval; the counters carry the exact numbers.

Shutdown (`stop`): readers are told to stop (a UDP reader first hands over
what its socket held at the stop) and joined, each stream finishes
(live heaps flushed, open chunks closed), the consumer drains the data ring,
the flushers write what is buffered and the sinks finalise their files; the
kernel's drop counts are read a last time before the sockets close.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from daqd.config import Config, StreamConfig
from daqd.logs import RepeatedErrors
from daqd.pipeline.buffers import build_buffer
from daqd.pipeline.capture import CaptureGate
from daqd.pipeline.datatime import CaptureBlock, Instant
from daqd.pipeline.events import Triggers, build_triggers
from daqd.pipeline.flush import Flusher
from daqd.pipeline.process import build_process
from daqd.pipeline.records import PacketRecord
from daqd.recv.builder import Receiver, build_receiver
from daqd.recv.counters import MAXIMA
from daqd.recv.heap_records import build_recorder
from daqd.recv.sources import Source
from daqd.sinks import build_event_sink, build_sinks, recover_sink

# Packet tap (pcap sinks): room between two takes, and how often it is taken.
TAP_BYTES = 64 << 20
TAP_PACKETS = 1 << 16
TAP_PERIOD = 0.05
# Poll period of the threads' loops (seconds): bounds how long a stop takes.
POLL = 0.2
# A receive thread's process() call goes on from batch to batch for up to
# this long (it returns earlier when it has something for this thread), so
# the thread takes the GIL about a thousand times a second, not once per
# batch: every take may wait behind the consumer's and flusher's Python code.
RECEIVE_BUDGET = 0.001
# Seconds after a boundary that started new files during which another boundary
# flushes but goes on writing the same files.
BOUNDARY_REOPEN_INTERVAL = 1.0
# Lines of one kind of TCP connection event (or capture boundary) logged as they
# come, per source, before they are summarised once per statistics interval.
EVENT_LINES = 3
# Per-source counters in the statistics (every counter is in the stream's sums).
SOURCE_COUNTERS = ("packets", "bytes", "heaps", "batches", "packets_dropped_socket_buffer",
                   "incomplete_heaps_evicted", "chunk_heaps_too_old", "stop_heaps")
# ... and a tcp:// listener's (besides "peers", its open connections' bytes).
TCP_SOURCE_COUNTERS = ("tcp_connections_accepted", "tcp_connections_closed",
                       "tcp_connections_refused", "tcp_connections_evicted",
                       "tcp_connections_idle_closed", "tcp_bytes_received",
                       "tcp_bytes_truncated")
# Gauges, not sums: never reset, never turned into rates.
GAUGE_COUNTERS = frozenset(name.name.lower() for name in MAXIMA)

log = structlog.get_logger("daqd.stream")


class StreamRunner:
    """Sources, threads, buffer and sinks of one stream.

    Parameters
    ----------
    config : StreamConfig
        The stream's validated configuration.
    whole : Config
        The whole configuration (its text goes into file headers).
    started : float, optional
        Unix seconds of the daemon's start: the id of the capture block open
        from the start (`daqd.pipeline.capture`); default now.
    """

    def __init__(self, config: StreamConfig, whole: Config, started: float | None = None):
        self.config = config
        self.name = config.name
        self.whole = whole
        # [stream.process]: the step, and the stream as its records are written
        # (the sinks', the event files' and the data time's layout).
        self.process = build_process(config, whole.zmq.interval)
        self.written = config if self.process is None else self.process.stream(config)
        self.receiver = Receiver(config)       # built (pool allocated) by open()
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.heartbeats: list[int] = []     # per source: receive loop iterations (watchdog)
        self.ended_sources = 0
        self.errors: list[str] = []
        # The errors that are a thread's failure (not a sink's, which is counted):
        # they end the run and make its exit status 1.
        self.failures: list[str] = []
        self.recorder = build_recorder(config)   # heap mode: heaps into records
        self.baseline: dict[str, int] = {}
        self.buffer: Any = None
        self.flusher: Any = None
        self.packet_buffer: Any = None
        self.packet_flusher: Any = None
        self.sinks: list[Any] = []
        self.packet_sinks: list[Any] = []
        # Connection events and capture boundaries: a few lines, then summaries.
        self.events = RepeatedErrors(log, whole.zmq.interval, first=EVENT_LINES)
        self.boundary_lock = threading.Lock()
        self.last_boundary_reopen: float | None = None
        self.boundary_reopens_skipped = 0
        # Data time ([stream.time]): each record's span; capture blocks admit records
        # by it, and note the newest (`gate.newest`).
        self.timeline = self.written.timeline
        # [stream.trigger]: the records retained for triggers, and the events.
        self.triggers: Triggers | None = None
        self.gate = CaptureGate(self.timeline, started=started)
        # Records enter the buffer one at a time, so a start in the past puts the
        # retained records in before any newer one (files in data-time order).
        self.admission = threading.Lock()

    # ------------------------------------------------------------------
    # startup: allocate, bind, start

    def open(self) -> list[str]:
        """Allocate the pool and buffers, open sinks, then bind every source.

        A write-ahead log replays while the sources are still closed.  Each
        layer is built from its own sections: the receive side from the
        ``[[stream]]`` section, the sinks from ``[[stream.sinks]]``, the
        buffers from ``[stream.buffer]``.  Returns the warnings an operator
        should hear about.
        """
        c = self.config
        self.receiver = build_receiver(c)
        written = self.written
        if c.trigger is not None:
            trigger = c.trigger

            def event_sink(number: int, label: str, start: int, end: int) -> tuple[Any, str]:
                return build_event_sink(written, trigger, number, label, (start, end),
                                        self.whole.text,
                                        descriptors=self.recorder.known_descriptors)

            self.triggers = build_triggers(trigger, self.timeline, event_sink, self.name)
        # Files describe the stream's items with the descriptors received so far.
        self.sinks, self.packet_sinks = build_sinks(written, self.whole.text,
                                                    self.receiver.udp_port,
                                                    self.recorder.known_descriptors)

        def recover(sink: Any, state: dict[str, Any]) -> None:
            recover_sink(sink.context, state)

        # A repeating error (a full disk) is summarised once per statistics interval.
        every = self.whole.zmq.interval
        if self.sinks:
            # Chunk records hold pool chunks until written: flush by what the pool can spare.
            self.buffer = build_buffer(c.buffer, self.sinks, name=self.name, recover=recover,
                                       error_interval=every,
                                       flush_at_most=self.receiver.chunks_to_spare)
            self.flusher = Flusher(self.buffer)
        if self.packet_sinks:
            # Raw packets get a buffer of their own (no WAL: pcap is a diagnostic copy).
            self.packet_buffer = build_buffer(c.buffer, self.packet_sinks,
                                              name=self.name + ".packets", wal=False,
                                              error_interval=every)
            self.packet_flusher = Flusher(self.packet_buffer)
        return self.receiver.open()

    @property
    def sources(self) -> list[Source]:
        """The stream's opened sources."""
        return self.receiver.sources

    @property
    def streams(self) -> list[Any]:
        """The compiled stream of each source."""
        return self.receiver.streams

    @property
    def group(self) -> Any:
        """Chunk mode: the chunk group of the stream's sources; None in heap mode."""
        return self.receiver.group

    def start(self) -> None:
        """Start the flushers, the receive threads and (chunk mode) the consumer."""
        for flusher in (self.flusher, self.packet_flusher):
            if flusher is not None:
                flusher.start()
        self.heartbeats = [0] * len(self.sources)
        for i, (source, stream) in enumerate(zip(self.sources, self.streams, strict=True)):
            self._thread(f"{self.name}:{source.thread}", self._receive, i, source, stream)
        if self.group is not None:
            self._thread(f"{self.name}:chunks", self._consume_chunks)

    def _thread(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, *args), name=name,
                                  daemon=True)
        self.threads.append(thread)
        thread.start()

    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # a thread must report, never vanish silently
            message = f"{threading.current_thread().name}: {type(exc).__name__}: {exc}"
            self.failures.append(message)
            self.errors.append(message)
            log.error("thread failed", stream=self.name, error=message, exc_info=True)

    # ------------------------------------------------------------------
    # the threads

    def _receive(self, index: int, source: Source, stream: Any) -> None:
        source.pin_thread()         # its CPU, if the stream's section names one
        reader = source.reader
        if self.packet_sinks:
            reader.enable_tap(TAP_BYTES, TAP_PACKETS)
        heap_mode = self.group is None
        last_tap = time.monotonic()
        stop_heaps = stream.stop_heaps
        serves = source.serves_connections
        while not self.receiver.wait_start(POLL):   # bound; packets wait in the source
            self.heartbeats[index] += 1
            if self.stopping.is_set():
                self._finish(source, stream)
                return
        while True:
            if self.stopping.is_set():
                # The reader hands over what its source held at the stop, then ends.
                reader.stop()
            rc = stream.process(reader, RECEIVE_BUDGET)
            self.heartbeats[index] += 1
            if heap_mode:
                self._put_heaps(stream.pop_ready())
            elif stream.descriptor_bytes:       # descriptor heaps fit no chunk: kept aside
                self.recorder.add_descriptor_packets(stream.take_descriptor_packets())
            if self.packet_sinks and time.monotonic() - last_tap >= TAP_PERIOD:
                self._put_tap(reader)
                last_tap = time.monotonic()
            if serves:
                self._log_connections(source)
            if stream.stop_heaps != stop_heaps and not stream.stopped:
                stop_heaps = stream.stop_heaps
                self._capture_boundary(source, stop_heaps, heap_mode)
            if rc < 0 or stream.stopped:
                break
        if serves:
            self._log_connections(source)
        self._finish(source, stream)

    def _capture_boundary(self, source: Source, stop_heaps: int, heap_mode: bool) -> None:
        """Have what a stop heap closed written (it has been handed over already)."""
        self.events.info(f"boundary:{source.uri}", "capture boundary", stream=self.name,
                         source=source.uri, stop_heaps=stop_heaps)
        if heap_mode:
            self._close_capture()
        # Chunk mode: the group closes the capture once every source is at a
        # boundary (ChunkGroup.boundaries); the consumer then writes it.

    def _close_capture(self) -> None:
        """Write what the buffer holds, then finish the sinks' files (in that order).

        Within BOUNDARY_REOPEN_INTERVAL of the last boundary that started new
        files, only the flush (counted in ``boundary_reopens_skipped``).
        """
        self.flush("stop heap")
        now = time.monotonic()
        with self.boundary_lock:
            last = self.last_boundary_reopen
            if last is not None and now - last < BOUNDARY_REOPEN_INTERVAL:
                self.boundary_reopens_skipped += 1
                return
            self.last_boundary_reopen = now
        self.reopen()

    def _log_connections(self, source: Source) -> None:
        for event, peer, received in source.reader.take_events():
            # peer None: `received` more events the reader counted but did not keep
            for _ in range(1 if peer is not None else received):
                self.events.info(f"tcp peer {event}:{source.uri}", f"tcp peer {event}",
                                 stream=self.name, source=source.uri, peer=peer,
                                 bytes=received if peer is not None else None)

    def summarise_logs(self) -> None:
        """Write the summaries of repeated events that are due (the daemon calls it often)."""
        self.events.summarise()
        if self.process is not None:
            self.process.errors.summarise()

    def _finish(self, source: Source, stream: Any) -> None:
        if self.group is not None:
            stream.finish()
            self.recorder.add_descriptor_packets(stream.take_descriptor_packets())
        else:
            self._put_heaps(stream.flush())
        if source.reader is not None and self.packet_sinks:
            self._put_tap(source.reader)
        truncation = source.truncation
        if truncation is not None:
            log.warning("file truncated while being read", stream=self.name, source=source.uri,
                        size_at_open=truncation[0], size_read=truncation[1],
                        bytes_lost=truncation[0] - truncation[1])
        self.ended_sources += 1
        log.info("source ended", stream=self.name, source=source.uri,
                 stopped_by_item=bool(stream.stopped))

    def _put_heaps(self, heaps: list[Any]) -> None:
        """Make the heaps' records and keep them as chunk records are (`_keep_many`).

        The whole list at once: retained and decided on under one admission
        lock (`CaptureGate.admit_many`), put with one `Buffer.put_many`.
        """
        if self.buffer is None and self.triggers is None:
            return                  # nothing keeps records: none are made (nor decoded)
        self._keep_many(list(self.recorder.records(heaps)))

    def _put_tap(self, reader: Any) -> None:
        taken = reader.take_tap()
        if taken is None:
            return
        record = PacketRecord(*taken)
        if self.gate.admit_packets():
            self.packet_buffer.put(record)
        else:
            record.release()

    def _end_block(self, block: CaptureBlock) -> None:
        """Write what is buffered, then finish `block`'s files: its stop has passed.

        Only files of `block` are finished: a next block's records, back to
        back, start files of their own in-band and go on in them.
        """
        log.info("capture block ended", stream=self.name, **_block_fields(self, block))
        self.flush("capture stop")
        if self.flusher is not None:
            self.flusher.request_reopen(block)
        if self.packet_flusher is not None:     # raw packets have no block: a new file now
            self.packet_flusher.request_reopen()

    def _consume_chunks(self) -> None:
        """Take completed chunks from the group in batches into the buffer, in order.

        Each batch is every chunk ready in the data ring (`ChunkGroup.get_batch`,
        one lock of the group); its records are made together, go one by one
        through the processing step, then are noted, retained and admitted
        together (`_keep_many`).
        """
        closed = self.group.boundaries
        pending = False
        while True:
            if self.group.boundaries != closed:
                # Every source of the group had its stop heap (or ended): the
                # group completed the capture's chunks, into the data ring.
                closed = self.group.boundaries
                pending = True
            if pending and self.group.capture_untaken == 0:
                # Every chunk of the capture is in the buffer now (and what
                # a processing step held of it), also those a receive thread
                # inside a batch at the boundary held until its batch ended;
                # a batch never mixes two captures' chunks (capture_untaken).
                pending = False
                self._finish_step()
                self._close_capture()
            try:
                chunks = self.group.get_batch(0, POLL)
            except TimeoutError:
                continue
            if not chunks:                      # every stream finished, ring drained
                self._finish_step()
                return
            records = self.receiver.chunk_records(chunks)
            if self.process is not None:
                # One record at a time: the pool chunk released once used.
                records = [out for out in map(self.process, records) if out is not None]
            self._keep_many(records)

    def _finish_step(self) -> None:
        """Keep what the processing step holds (a capture boundary, the stream's end)."""
        if self.process is not None:
            last = self.process.finish()
            if last is not None:
                self._keep_many([last])

    def _keep_many(self, records: list[Any]) -> None:
        """Note records' data time, retain them for triggers and buffer them, in order.

        With a buffer, the records are retained, noted and admitted under one
        admission lock (so a capture start in the past, which takes the
        retained records under it, never takes one the gate has yet to decide
        on), the gate deciding on the whole list under one lock of its own
        (`CaptureGate.admit_many`), and put with one `Buffer.put_many`.  What
        the gate refuses is released (and counted by it); a block whose stop a
        record shows has passed has its files finished (`_end_block`) once the
        list is in the buffer.
        """
        if not records:
            return
        retention = self.triggers.retention if self.triggers is not None else None
        if self.buffer is None:
            self.gate.observe_many(records)
            for record in records:
                if retention is not None:
                    retention.add(record)       # a hold of its own
                record.release()
            return
        with self.admission:
            if retention is not None:
                for record in records:
                    retention.add(record)       # a hold of its own
            decisions = self.gate.admit_many(records)
            self.buffer.put_many([record for record, (admitted, _)
                                  in zip(records, decisions, strict=True) if admitted])
        for record, (admitted, ended) in zip(records, decisions, strict=True):
            if not admitted:
                record.release()
            if ended is not None:
                self._end_block(ended)

    # ------------------------------------------------------------------
    # control

    def live_heartbeats(self) -> dict[str, int]:
        """Loop counters of the stream's threads still running, by thread name (watchdog).

        ``STREAM:SOURCE_URI`` for a receive thread (``STREAM:SOURCE_URI#k`` for
        each of a source's several), ``STREAM:flusher`` (and
        ``STREAM:packet-flusher``) for the flusher of the buffer (of raw packets).
        """
        out = {thread.name: count for count, thread in zip(self.heartbeats, self.threads,
                                                          strict=False) if thread.is_alive()}
        for label, flusher in (("flusher", self.flusher), ("packet-flusher", self.packet_flusher)):
            if flusher is not None and flusher.running:
                out[f"{self.name}:{label}"] = flusher.heartbeat
        return out

    @property
    def failed(self) -> bool:
        """A thread of the stream failed (its error logged), or a flusher did."""
        return bool(self.failures) or any(
            f is not None and f.error is not None for f in (self.flusher, self.packet_flusher))

    @property
    def ended(self) -> bool:
        """Every source has ended (finite sources, stop items)."""
        return self.ended_sources >= len(self.sources)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop receiving, drain, flush and finalise (see the module comment)."""
        self.stopping.set()
        for source in self.sources:
            source.stop()
        if self.group is not None:
            self.group.stop_waiting_for_chunks()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.failures.append(f"{thread.name}: did not stop within {timeout} s")
                self.errors.append(self.failures[-1])
                log.error("thread did not stop", stream=self.name, thread=thread.name)
        for flusher in (self.flusher, self.packet_flusher):
            if flusher is not None:
                if not flusher.stop():
                    self.failures.append(f"flusher: did not stop within {timeout} s")
                    self.errors.append(self.failures[-1])
                if flusher.error is not None:
                    self.failures.append(f"flusher: {type(flusher.error).__name__}: "
                                         f"{flusher.error}")
                    self.errors.append(self.failures[-1])
        if self.triggers is not None:
            # Events still waiting for data end ("stream stopped"), then every hold goes.
            self.errors.extend(self.triggers.close())
            self.triggers.retention.close()
        # What a failing sink never wrote is counted and released here (with a
        # WAL it is written at the next start); the WAL is closed.
        for buffer in (self.buffer, self.packet_buffer):
            if buffer is not None:
                buffer.close()
        for sink in self.sinks + self.packet_sinks:
            try:
                sink.close()
            except OSError as exc:
                self.errors.append(f"{sink.name}: close failed: {exc}")
                log.error("sink close failed", stream=self.name, sink=sink.name,
                          error=str(exc))
        # The kernel's drops until now, read while the sockets are open: the
        # final statistics and log line have them.
        self.receiver.poll_sources()
        self.receiver.close()
        self.events.close()
        if self.process is not None:
            self.process.errors.close()

    @property
    def capturing(self) -> bool:
        """A capture block is open (``capturing`` or ``stop-pending``)."""
        return self.gate.state in ("capturing", "stop-pending")

    @property
    def newest_timestamp(self) -> int | None:
        """The start of the newest record's data time (ticks), None before the first."""
        return self.gate.newest

    def capture_ticks(self, at: Instant | None) -> int | None:
        """Resolve a request's ``at`` in the stream's data time (`TimeError`: no clock for UTC)."""
        return None if at is None else self.timeline.ticks(at, "at")

    def capture_start(self, at: int | None, block_id: str | None = None,
                      now: float | None = None) -> dict[str, Any]:
        """Start a capture block at data time `at` (None: now); return the gate's status.

        A start before the newest data time starts at the oldest record still
        held: the records `retained_since` gives that no block took already
        are admitted (counted in the reply's ``retained``).  While a stop is
        pending, a start at or after it is the next block, back to back
        (`CaptureGate.start`).  Raises `CaptureError` while a block is open
        otherwise.
        """
        retained = 0
        with self.admission:                # no newer record overtakes the retained ones
            block = self.gate.start(at, block_id, now)
            past = [] if at is None or block is not self.gate.block \
                else self.retained_since(at)            # (a next block has none)
            for record in past:
                # One the last block wrote stays its own (its file; and it may still
                # be in the buffer with it): the new block takes what no block took.
                admitted = self.buffer is not None and record.capture_block is None \
                    and self.gate.admit(record)[0]
                if admitted:
                    self.buffer.put(record)
                    retained += 1
                else:
                    record.release()
        log.info("capture block scheduled" if at is not None else "capture block started",
                 stream=self.name, retained=retained, **_block_fields(self, block))
        return {**self.gate.status(), "retained": retained}

    def capture_stop(self, at: int | None) -> dict[str, Any]:
        """Stop the capture block at data time `at` (None: now); return the gate's status.

        A stop that has passed already finishes the block's files at once.
        Raises `CaptureError` for a stop not after the block's start.
        """
        block, passed = self.gate.stop(at)
        if block is not None:
            log.info("capture stop scheduled", stream=self.name, passed=passed,
                     **_block_fields(self, block))
        if passed:
            assert block is not None
            self._end_block(block)
        return self.gate.status()

    def flush(self, reason: str) -> None:
        """Ask the flushers for a flush (thread-safe, returns at once)."""
        for flusher in (self.flusher, self.packet_flusher):
            if flusher is not None:
                flusher.request_flush(reason)

    def reopen(self) -> None:
        """SIGHUP: finalise the sinks' current files; writing goes on in new ones."""
        for flusher in (self.flusher, self.packet_flusher):
            if flusher is not None:
                flusher.request_reopen()

    def reset_counters(self) -> None:
        """Report counters from zero again (the compiled counters stay monotonic)."""
        self.baseline = self.raw_counters()

    # ------------------------------------------------------------------
    # statistics

    def raw_counters(self, per_source: list[dict[str, int]] | None = None) -> dict[str, int]:
        """Sum the counters of the stream's sources (maxima: the maximum), unreset.

        `per_source`: the sources' counters if already read (Receiver.source_stats).
        """
        total: dict[str, int] = {}
        for stats in self.receiver.source_stats() if per_source is None else per_source:
            for name, value in stats.items():
                if name in GAUGE_COUNTERS:
                    total[name] = max(total.get(name, 0), value)
                else:
                    total[name] = total.get(name, 0) + value
        total.update(self.gate.counters())
        total["boundary_reopens_skipped"] = self.boundary_reopens_skipped
        if self.triggers is not None:
            total.update(self.triggers.counters())
        if self.process is not None:
            total.update(self.process.counters())
        total.update(self.recorder.counters())
        return total

    def source_counters(self, per_source: list[dict[str, int]]) -> dict[str, dict[str, Any]]:
        """Each source's own headline counters (the stream's are their sums).

        A source with several receive threads has the sums of its threads'
        counters, and each thread's own under ``threads`` (a list, thread k
        first at k).
        """
        out: dict[str, dict[str, Any]] = {}
        for source, c in zip(self.sources, per_source, strict=True):
            mine: dict[str, Any] = {name: c[name] for name in SOURCE_COUNTERS}
            mine["packets_rejected"] = sum(
                v for k, v in c.items() if k.startswith("packets_rejected_"))
            if source.serves_connections:
                mine.update({name: c[name] for name in TCP_SOURCE_COUNTERS})
                mine["peers"] = source.reader.peers()
            if source.thread == source.uri:
                out[source.uri] = mine
                continue
            total = out.setdefault(source.uri, {"threads": []})
            total["threads"].append(mine)
            for name, value in mine.items():
                total[name] = total.get(name, 0) + value
        return out

    def data_time(self) -> dict[str, Any]:
        """``newest_timestamp`` (ticks) and, with a clock, ``newest_utc`` (Unix seconds)."""
        newest = self.gate.newest
        if newest is None:
            return {"newest_timestamp": None}
        out: dict[str, Any] = {"newest_timestamp": newest}
        utc = self.timeline.utc(newest)
        if utc is not None:
            out["newest_utc"] = utc
        return out

    def retained_since(self, ticks: int) -> list[Any]:
        """Return the retained records whose data time starts at or after `ticks`, oldest first.

        Each carries one extra hold for the caller to release (a capture block
        starting in the past).  Empty without ``[stream.trigger]``.
        """
        if self.triggers is None:
            return []
        return self.triggers.retention.retained_since(ticks)

    def pool_figures(self) -> dict[str, int]:
        """Chunk mode: ``pool`` and ``pool_free`` (the free ring); empty in heap mode."""
        if self.group is None:
            return {}
        gauges = self.receiver.gauges()
        return {"pool": gauges["pool"], "pool_free": gauges["free_ring"]}

    def snapshot(self) -> dict[str, Any]:
        """Build the stream's part of a statistics message (JSON-able)."""
        per_source = self.receiver.source_stats()
        raw = self.raw_counters(per_source)
        counters = {name: value - self.baseline.get(name, 0) if name not in GAUGE_COUNTERS
                    else value for name, value in raw.items()}
        gauges: dict[str, Any] = {name: counters.pop(name) for name in GAUGE_COUNTERS
                                  if name in counters}
        out: dict[str, Any] = {"counters": counters, "gauges": gauges,
                               "sources": self.source_counters(per_source),
                               "capturing": self.capturing, "capture": self.gate.status(),
                               "waiting_for_start": self.receiver.waiting_for_start}
        out.update(self.data_time())
        if self.triggers is not None:
            out["retained"] = self.triggers.retention.status()
            out["events"] = self.triggers.in_flight()
        # Data time as gauges (Prometheus): the newest record's, and how far it lags UTC.
        if out["newest_timestamp"] is not None:
            gauges["newest_timestamp"] = out["newest_timestamp"]
        if out.get("newest_utc") is not None:
            gauges["data_time_lag_seconds"] = round(time.time() - out["newest_utc"], 6)
        gauges.update(self.receiver.gauges())
        if self.receiver.chunk_mode:
            out["heaps_missing_per_substream"] = self.receiver.heaps_missing_per_substream()
        replay = self.receiver.replay_progress()
        if replay:                      # file: and pcap: sources: bytes read of their size
            out["replay"] = {uri: {"done_bytes": d, "total_bytes": t}
                             for uri, (d, t) in replay.items()}
        if self.buffer is not None:
            out["buffer"] = self.buffer.stats()
            gauges["buffer_fill"] = self.buffer.size()
        if self.packet_buffer is not None:
            out["packet_buffer"] = self.packet_buffer.stats()
        out["sinks"] = [dict(sink.stats(), name=sink.name)
                        for sink in self.sinks + self.packet_sinks]
        if self.errors:
            out["errors"] = list(self.errors)
        return out


def _block_fields(runner: StreamRunner, block: CaptureBlock | None) -> dict[str, Any]:
    """Return a capture block's id, start and stop (ticks; UTC with a clock) for a log line."""
    if block is None:
        return {}
    out: dict[str, Any] = {"block": block.id}
    for name in ("start", "stop"):
        ticks = getattr(block, name)
        if ticks is not None:
            out.update({f"{name}_{k}" if k == "utc" else name: v
                        for k, v in runner.timeline.describe(ticks).items()})
    return out
