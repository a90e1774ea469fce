"""Buffers: the bounded hand-off from the receive side to the sinks.

Producers (receive threads) put records; one consumer (the flusher thread,
see daqd/pipeline/flush.py) writes them to every sink.  Puts from several threads are
serialised (a stream may have a receive thread per source).  The contracts are in
docs/dev-pipeline.md ("Buffers"); in short:

- Every record gets a sequence number when it is accepted.  Each sink has a
  cursor (the next sequence number it writes); a record leaves the buffer,
  and is released, once every sink has written it.
- Capacity is a hard bound on the records held, so on each sink's backlog.
  When full, the oldest record gives way for the sinks behind if some sink has
  written it (it is held only for sinks that fall behind, e.g. a failing
  disk): dropped for those sinks alone, counted per sink as
  ``backlog_overflow``, also while a flush runs.  Only when no sink has
  written the oldest record (the healthy sinks cannot keep up, or every sink
  fails) does `when_full` decide: ``block`` (wait up to `block_timeout`, then
  drop), ``drop-newest`` or ``overwrite-oldest``.
- Records being written by a flush are never released or overwritten under
  the sink's feet: a flush moves everything waiting into the held part, which
  only the flush and backlog overflows touch until it ends.  A record that
  overflows a backlog while a sink write runs is released after that write;
  if the sink being written was behind on it, its outcome decides whether the
  record counts as written or lost for it.
- With a write-ahead log the record's bytes are in the log before `put()`
  returns True, and `recover()` must run once before the first `put()`.
- Sinks publish files only when told to (`commit()`): after a flush (or a
  reopen), once the log's done mark covering what they wrote is appended;
  without a log, after every flush.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import operator
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from daqd.errors import UsageProblem
from daqd.logs import RepeatedErrors
from daqd.pipeline.flush import Flusher, FlushPolicy
from daqd.pipeline.records import Record, decode_record, release_records
from daqd.pipeline.wal import DoneMark, WalFormatError, WalFull, WriteAheadLog

if TYPE_CHECKING:
    from daqd.config import BufferConfig

log = structlog.get_logger("daqd.buffer")

KINDS = ("fifo", "circular")
WHEN_FULL = ("block", "drop-newest", "overwrite-oldest")

#: Seconds a failing sink waits before a flush the policy asked for retries it
#: (a forced flush always does): its retries must not take the flusher's time
#: from the healthy sinks.
FAILING_SINK_RETRY = 0.2

#: Why a record a sink never wrote is lost for that sink (``lost_by_reason``):
#: its backlog passed the capacity while it fell behind (other sinks wrote it);
#: ``when_full = "overwrite-oldest"`` overwrote it; ``clear()``; still held at
#: ``close()``; a replayed record that found the buffer full at recovery.
SINK_LOSS_REASONS = ("backlog_overflow", "overwrite_oldest", "cleared", "unwritten_at_close",
                     "recover_overflow")

#: ``recover(sink, checkpoint)``: bring a sink's output back to a checkpoint it
#: gave before a crash (daqd.sinks.recover_sink with the sink's context bound);
#: what it returns (e.g. recover_sink's report) is logged.
RecoverSink = Callable[[Any, dict[str, Any]], Any]

Entry = tuple[int, Record]          # (sequence number, record)
_entry_seq = operator.itemgetter(0)     # an entry's sequence number (bisect key)


def _slice_size(left: int, flush_slice: int) -> int:
    """Return how many records the next slice of a flush takes.

    That is `flush_slice`, or all that is `left` when what would remain is
    less than half a slice (it joins this one): a slice may hold up to 1.5
    times `flush_slice`.  Each slice costs its sinks a write call (and the
    flusher the system calls that give the GIL up and wait for it back): a
    flush of 31 records in slices of 30 is one write of 31, not 30 and then 1.
    """
    return left if left < flush_slice + (flush_slice + 1) // 2 else flush_slice


class _Queue:
    """Entries in a deque that grows as needed (`fifo`; the bound is the buffer's)."""

    def __init__(self, capacity: int):
        self._entries: collections.deque[Entry] = collections.deque()

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, entry: Entry) -> None:
        self._entries.append(entry)

    def popleft(self) -> Entry:
        return self._entries.popleft()

    def first_seq(self) -> int:
        return self._entries[0][0]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    # The flush side, a slice at a time (a Python call per slice, not per entry).

    def snapshot(self) -> list[Entry]:
        """Return the entries, oldest first."""
        return list(self._entries)

    def take(self, n: int) -> list[Entry]:
        """Remove and return the `n` oldest entries."""
        pop = self._entries.popleft
        return [pop() for _ in range(n)]

    def extend(self, entries: list[Entry]) -> None:
        """Append `entries` in order."""
        self._entries.extend(entries)

    def take_below(self, seq: int) -> list[Entry]:
        """Remove and return the oldest entries whose sequence number is below `seq`."""
        entries = self._entries
        n = 0
        for entry in entries:
            if entry[0] >= seq:
                break
            n += 1
        return self.take(n)


class _Ring:
    """Entries in a ring of `capacity` slots allocated once (`circular`)."""

    def __init__(self, capacity: int):
        self._slots: list[Entry | None] = [None] * capacity
        self._head = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, entry: Entry) -> None:
        size = len(self._slots)
        if self._count == size:
            raise OverflowError("ring full")        # the buffer checks room first
        self._slots[(self._head + self._count) % size] = entry
        self._count += 1

    def popleft(self) -> Entry:
        if not self._count:
            raise IndexError("pop from an empty ring")
        entry = self._slots[self._head]
        self._slots[self._head] = None
        self._head = (self._head + 1) % len(self._slots)
        self._count -= 1
        assert entry is not None
        return entry

    def first_seq(self) -> int:
        entry = self._slots[self._head]
        if not self._count or entry is None:
            raise IndexError("empty ring")
        return entry[0]

    def __iter__(self) -> Iterator[Entry]:
        size = len(self._slots)
        for i in range(self._count):
            entry = self._slots[(self._head + i) % size]
            assert entry is not None
            yield entry

    def clear(self) -> None:
        self._slots = [None] * len(self._slots)
        self._head = self._count = 0

    # The flush side, a slice at a time (a Python call per slice, not per entry).

    def _first(self, n: int) -> list[Entry]:
        """Return the `n` oldest entries (two slices of the slots at most)."""
        slots, head = self._slots, self._head
        end = head + n
        taken = slots[head:end] if end <= len(slots) else slots[head:] + slots[:end - len(slots)]
        return taken  # type: ignore[return-value]     # (the first `count` slots are set)

    def snapshot(self) -> list[Entry]:
        """Return the entries, oldest first."""
        return self._first(self._count)

    def take(self, n: int) -> list[Entry]:
        """Remove and return the `n` oldest entries."""
        if not 0 <= n <= self._count:
            raise IndexError(f"take {n} of {self._count} entries")
        taken = self._first(n)
        slots, head, size = self._slots, self._head, len(self._slots)
        end = head + n
        if end <= size:
            slots[head:end] = [None] * n
        else:
            slots[head:] = [None] * (size - head)
            slots[:end - size] = [None] * (end - size)
        self._head = end % size
        self._count -= n
        return taken

    def extend(self, entries: list[Entry]) -> None:
        """Append `entries` in order."""
        for entry in entries:
            self.append(entry)

    def take_below(self, seq: int) -> list[Entry]:
        """Remove and return the oldest entries whose sequence number is below `seq`."""
        n = 0
        for entry in self._first(self._count):
            if entry[0] >= seq:
                break
            n += 1
        return self.take(n)


@dataclass
class _SinkState:
    """One sink and where it stands."""

    sink: Any
    name: str
    cursor: int                 # sequence number of the next record it writes
    primary: bool = False
    written: int = 0
    bytes: int = 0
    errors: int = 0
    sync_errors: int = 0
    failing: bool = False
    failed_flushes: int = 0
    last_error: str = ""
    unsynced: bool = False      # wrote since its last sync()
    lost_by: collections.Counter[str] = field(default_factory=collections.Counter)
    # While its write runs: the end of its batch, and how many of the batch's
    # records overflowed its backlog meanwhile (lost only if the write fails).
    writing_end: int = -1
    overflowed_in_write: int = 0
    retry_at: float = 0.0       # failing: monotonic time of the next policy-driven retry
    write_seconds: float = 0.0  # time spent in its write() calls (is the disk the bottleneck?)

    @property
    def lost(self) -> int:
        return sum(self.lost_by.values())

    def lose(self, seq: int, reason: str) -> None:
        """Record `seq`, not written by this sink, will never be: count it (lock held)."""
        assert reason in SINK_LOSS_REASONS, reason
        if reason == "backlog_overflow" and seq < self.writing_end:
            self.overflowed_in_write += 1       # settled when the write returns
        else:
            self.lost_by[reason] += 1

    def stats(self, backlog: int) -> dict[str, Any]:
        return {"written": self.written, "bytes": self.bytes, "errors": self.errors,
                "lost": self.lost, "backlog": backlog,
                "lost_by_reason": {r: self.lost_by[r] for r in SINK_LOSS_REASONS},
                "sync_errors": self.sync_errors, "failing": self.failing,
                "last_error": self.last_error, "write_seconds": self.write_seconds}


def _call_each(sinks: list[_SinkState], method: str, failure: type[Exception],
               _repeated: RepeatedErrors) -> None:
    """Call `method` of every sink that has one; a `failure` is counted and logged."""
    for state in sinks:
        call = getattr(state.sink, method, None)
        if call is None:
            continue
        try:
            call()
        except failure as exc:
            state.errors += 1
            state.last_error = f"{method}: {type(exc).__name__}: {exc}"
            _repeated.warning(f"{method}:{state.name}", f"sink {method} failed",
                              sink=state.name, error=str(exc),
                              exc_info=not isinstance(exc, OSError))


class Buffer:
    """A bounded buffer of records between producers and one consumer.

    Parameters
    ----------
    kind : str
        ``"fifo"`` (storage grows as needed, up to `capacity`) or
        ``"circular"`` (`capacity` slots allocated at once).  Both hold at
        most `capacity` records and put and pop in constant time.
    capacity : int
        Most records held, including those kept for a failing sink.
    when_full : str
        ``"block"``, ``"drop-newest"`` or ``"overwrite-oldest"``.
    policy : FlushPolicy, optional
        When to flush (default: never on its own; forced flushes only).
    wal : WriteAheadLog, optional
        Log records before accepting them; call `recover` before `put`.
    block_timeout : float
        Longest wait of a blocked `put` (``block``), after which the record is
        dropped and counted.
    error_interval : float
        Seconds between the summaries of an error that repeats (a WAL or sink
        on a full disk): logged once, then summarised (`RepeatedErrors`).
    flush_slice : int, optional
        Records a flush writes before it releases them and goes on with the
        next ones (default: all at once; a last slice under half a slice
        joins the one before); see `flush_now`.
    """

    def __init__(self, kind: str = "circular", capacity: int = 64, when_full: str = "block",
                 policy: FlushPolicy | None = None, wal: WriteAheadLog | None = None,
                 block_timeout: float = 1.0, error_interval: float = 10.0,
                 flush_slice: int | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full: {when_full!r} is not one of {', '.join(WHEN_FULL)}")
        if capacity < 1:
            raise ValueError(f"capacity: {capacity} is not at least 1")
        if block_timeout < 0:
            raise ValueError(f"block_timeout: {block_timeout} is negative")
        if flush_slice is not None and flush_slice < 1:
            raise ValueError(f"flush_slice: {flush_slice} is not at least 1")
        self.kind = kind
        self.capacity = capacity
        self.when_full = when_full
        self.policy = policy if policy is not None else FlushPolicy()
        self.wal = wal
        self.block_timeout = block_timeout
        self.flush_slice = flush_slice
        storage = _Ring if kind == "circular" else _Queue
        # `held`: taken by a flush (being written, or kept for a failing sink);
        # only the flush touches it while one runs.  `waiting`: not yet taken.
        # Sequence numbers increase from the front of held to the back of waiting.
        self._held = storage(capacity)
        self._waiting = storage(capacity)
        self._lock = threading.Lock()
        self._put_lock = threading.Lock()
        self._changed = threading.Condition(self._lock)     # room made, flush ended
        self._flushing = False
        self._sinks: list[_SinkState] = []
        self._next_seq = wal.next_seq if wal is not None else 0
        self._ready = wal is None           # with a WAL, recover() first
        self._marking = False               # done marks may be logged (recover() has begun)
        self._closed = False
        self._flusher: Flusher | None = None
        self._marked: dict[str, DoneMark] = {}
        self._logged_drops: set[str] = set()
        self._accepted = self._flushed = self._bytes_flushed = self._popped = 0
        self._recovered = self._triggers = self._lagging_evictions = 0
        self._block_waits = self._block_timeouts = self._wal_errors = 0
        self._flush_ends = 0                # flushes completed, for waiters
        self._flushes: collections.Counter[str] = collections.Counter()
        self._dropped: collections.Counter[str] = collections.Counter()
        # Evicted while a sink write may still read them: released after it.
        self._deferred: list[Entry] = []
        self._written_early: list[Entry] = []  # written by every sink, taken before the flush ended
        self._errors = RepeatedErrors(log, error_interval)

    # -- sinks ---------------------------------------------------------------

    def set_primary_sink(self, sink: Any) -> None:
        """Make `sink` the primary sink (replacing any), written first at each flush."""
        with self._lock:
            if self._sinks and self._sinks[0].primary:
                self._sinks.pop(0)
            state = self._new_sink_locked(sink)
            state.primary = True
            self._sinks.insert(0, state)

    def add_custom_sink(self, sink: Any) -> None:
        """Add a further sink; every flush writes to it too."""
        with self._lock:
            self._sinks.append(self._new_sink_locked(sink))

    @property
    def sinks(self) -> list[Any]:
        """The sinks, primary first."""
        return [s.sink for s in self._sinks]

    def _new_sink_locked(self, sink: Any) -> _SinkState:
        name = str(getattr(sink, "name", type(sink).__name__))
        if any(s.name == name for s in self._sinks):
            raise ValueError(f"a sink named {name!r} is already attached (names key the WAL)")
        # A sink added late starts at the oldest record still held.
        return _SinkState(sink, name, self._head_seq_locked())

    def _head_seq_locked(self) -> int:
        if len(self._held):
            return self._held.first_seq()
        if len(self._waiting):
            return self._waiting.first_seq()
        return self._next_seq

    # -- producer ------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number the next accepted record gets."""
        return self._next_seq

    def put(self, record: Record) -> bool:
        """Accept `record`, or drop it under the `when_full` policy (counted).

        Returns
        -------
        bool
            True if accepted (and, with a WAL, logged).  A dropped record has
            been released.
        """
        if not self._ready:
            raise RuntimeError("the buffer has a write-ahead log: call recover() first")
        # One put at a time: room and a sequence number are reserved here and
        # used after the (unlocked) WAL append.
        with self._put_lock:
            return self._put(record)

    def put_many(self, records: Sequence[Record]) -> int:
        """Accept `records` in order, each as `put` would, telling the flusher once.

        Without a write-ahead log, the records the buffer has room for are
        accepted under one lock and the flush policy is asked once, after
        them; the rest, if any, go through `put` one at a time (they wait or
        are dropped under `when_full`, counted).  With a log, every record is
        logged by `put`.

        Returns
        -------
        int
            The records accepted; a dropped record has been released.
        """
        if not self._ready:
            raise RuntimeError("the buffer has a write-ahead log: call recover() first")
        accepted = 0
        with self._put_lock:
            if self.wal is None:
                with self._lock:
                    room = self.capacity - len(self._held) - len(self._waiting)
                    accepted = max(0, min(room, len(records)))
                    self._append_locked(records[:accepted])
                if accepted:
                    self._maybe_wake()
            for record in records[accepted:]:
                accepted += self._put(record)
        return accepted

    def _put(self, record: Record) -> bool:
        evicted: list[Entry] = []
        with self._lock:
            reason = self._make_room_locked(evicted)
            if reason == "wait":
                reason = self._wait_for_room_locked(evicted)
            seq = self._next_seq
        self._after_evictions(evicted)
        if reason is None and self.wal is not None:
            reason = self._log(seq, record)
        if reason is not None:
            self._drop(record, reason)
            return False
        with self._lock:
            self._append_locked((record,))      # numbered `seq` (puts are one at a time)
        self._maybe_wake()
        return True

    def _append_locked(self, records: Sequence[Record]) -> None:
        """Append accepted `records` to the waiting queue, numbered in order (lock held)."""
        seq, added = self._next_seq, self.policy.added
        for record in records:
            self._waiting.append((seq, record))
            seq += 1
            added(record.nbytes)
        self._next_seq = seq
        self._accepted += len(records)

    def _make_room_locked(self, evicted: list[Entry]) -> str | None:
        """Room for one more record (None), or why not: a drop reason, or "wait"."""
        if len(self._held) + len(self._waiting) < self.capacity:
            return None
        if self._evict_lagging_locked(evicted):
            return None
        if self.when_full == "overwrite-oldest":
            if self._evict_oldest_locked(evicted, "overwrite_oldest"):
                return None
            return "in_flight"          # everything is being written: nothing to overwrite
        if self.when_full == "drop-newest":
            self._ask_flush("full")
            return "drop_newest"
        return "wait"

    def _evict_lagging_locked(self, evicted: list[Entry]) -> bool:
        """Make room from a record kept only for sinks that fell behind (some sink wrote it).

        The backlog of the sinks behind overflows: the oldest record is dropped
        for them alone.  Allowed during a flush: the record then waits in
        `_deferred` until the sink write that may be reading it returns.
        """
        if not len(self._held) or not self._sinks:
            return False
        seq = self._held.first_seq()
        if seq >= max(s.cursor for s in self._sinks):
            return False                # no sink has written it: when_full decides
        entry = self._held.popleft()
        if min(s.cursor for s in self._sinks) > seq:
            # Every sink has written it (a flush is ending): it leaves as flushed.
            self._written_early.append(entry)
            return True
        (self._deferred if self._flushing else evicted).append(entry)
        self._lagging_evictions += 1
        for s in self._sinks:
            if s.cursor <= seq:
                s.lose(seq, "backlog_overflow")
                s.cursor = seq + 1      # gone for it: its WAL done mark moves past
        return True

    def _evict_oldest_locked(self, evicted: list[Entry], reason: str) -> bool:
        """Overwrite the oldest record not being written by a flush."""
        if not self._flushing and len(self._held):
            entry = self._held.popleft()        # every sink failing: nobody wrote it
        elif len(self._waiting):
            entry = self._waiting.popleft()
        else:
            return False
        evicted.append(entry)
        self._dropped[reason] += 1
        for s in self._sinks:
            if s.cursor <= entry[0]:
                s.lose(entry[0], reason)
        return True

    def _wait_for_room_locked(self, evicted: list[Entry]) -> str | None:
        """``block``: wait for a flush to make room, up to `block_timeout`."""
        self._block_waits += 1
        deadline = time.monotonic() + self.block_timeout
        self._ask_flush("full")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._block_timeouts += 1
                return "block_timeout"
            self._changed.wait(left)
            reason = self._make_room_locked(evicted)
            if reason != "wait":
                return reason

    def _log(self, seq: int, record: Record) -> str | None:
        """Append `record` to the WAL; None when logged, else the drop reason."""
        assert self.wal is not None
        payload = record.encode_parts()     # views of the record's data: no copy
        deadline = None
        while True:
            try:
                self.wal.append(seq, payload)
                return None
            except WalFull:
                with self._lock:
                    flushes_seen = self._flush_ends
                self._ask_flush("wal_full")     # done marks let the log compact
                if self.when_full == "overwrite-oldest":
                    evicted: list[Entry] = []
                    with self._lock:
                        made = self._evict_oldest_locked(evicted, "overwrite_oldest")
                    self._after_evictions(evicted)
                    if made:
                        continue
                    return "wal_full"
                if self.when_full == "drop-newest":
                    return "wal_full"
                if deadline is None:
                    self._block_waits += 1
                    deadline = time.monotonic() + self.block_timeout
                with self._lock:        # until a flush asked for after the failure ends
                    while self._flush_ends == flushes_seen:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self._block_timeouts += 1
                            return "wal_full"
                        self._changed.wait(left)
            except OSError as exc:
                self._wal_errors += 1
                self._errors.error("wal_append", "write-ahead log append failed; record dropped",
                                   wal=str(self.wal.path), error=str(exc),
                                   wal_errors=self._wal_errors)
                return "wal_error"

    def _after_evictions(self, evicted: list[Entry]) -> None:
        """Release evicted records and tell the WAL they will never be written."""
        if not evicted:
            return
        release_records([record for _, record in evicted])
        skipped = [seq for seq, _ in evicted]
        if self.wal is not None:
            try:
                self.wal.skip(skipped)
            except OSError as exc:      # harmless: they would be replayed after a crash
                self._wal_errors += 1
                self._errors.warning("wal_skip", "write-ahead log skip mark failed",
                                     error=str(exc), wal_errors=self._wal_errors)

    def _drop(self, record: Record, reason: str) -> None:
        record.release()
        with self._lock:
            self._dropped[reason] += 1
            first = reason not in self._logged_drops
            self._logged_drops.add(reason)
        if first:
            log.warning("buffer dropping records (counted; logged once per reason)",
                        reason=reason, capacity=self.capacity, when_full=self.when_full)

    def _maybe_wake(self) -> None:
        flusher = self._flusher
        if flusher is not None and not flusher.due_pending:
            reason = self.policy.due(self)
            if reason is not None:
                flusher.wake_due(reason)

    def _ask_flush(self, reason: str) -> None:
        flusher = self._flusher
        if flusher is not None and not flusher.due_pending:
            flusher.wake_due(reason)

    # -- consumer ------------------------------------------------------------

    def flush(self, reason: str = "request") -> int:
        """Write every record to every sink that has not written it.

        With a `Flusher` running, a call from another thread is handed to it
        (and waited for), so sinks are only called from one thread.

        Returns
        -------
        int
            Records that left the buffer (written by every sink).
        """
        flusher = self._flusher
        if flusher is not None and flusher.running and threading.get_ident() != flusher.ident:
            done = flusher.flush(reason)
            return done if done is not None else 0
        return self.flush_now(reason)

    def trigger(self) -> int:
        """Dump the buffer's content to the sinks now (transient capture).

        A circular ``overwrite-oldest`` buffer with no flush conditions keeps
        the last `capacity` records; a trigger writes exactly those.
        """
        flusher = self._flusher
        if flusher is not None and flusher.running and threading.get_ident() != flusher.ident:
            done = flusher.trigger()
            return done if done is not None else 0
        return self.flush_now("trigger", trigger=True)

    def flush_now(self, reason: str, trigger: bool = False, due: bool = False) -> int:
        """Flush in this thread (the flusher's, or the only consumer's).

        `due`: the policy asked for it; a failing sink is then retried only
        every `FAILING_SINK_RETRY` seconds.  The records waiting when it
        starts are written in slices of `flush_slice` (if set; `_slice_size`), each
        released once every sink has written it: a flush that took every
        chunk record at once would leave the receive side no pool chunk
        while it writes them all.  Records put meanwhile wait for the next.
        """
        with self._lock:
            if self._flushing:
                return 0                # re-entered (e.g. from a sink): nothing to add
            self._flushing = True
            left = len(self._waiting)
            sinks = list(self._sinks)
            self.policy.reset()
            self._flushes[reason] += 1
            if trigger:
                self._triggers += 1
        released = 0
        failed: set[int] = set()        # sinks whose write failed in an earlier slice
        try:
            first = True
            while first or left:
                take = left if self.flush_slice is None else _slice_size(left, self.flush_slice)
                released += self._flush_slice(take, due, failed, sync_wal=first)
                left -= take
                first = False
            # One done mark (a sync of each sink) and one commit per flush,
            # however many slices: a slice's records only needed writing.
            self._commit(self._mark_done(sinks) if self.wal is not None else sinks)
        finally:
            with self._lock:
                self._flushing = False
                self._flush_ends += 1
                self._changed.notify_all()
        return released

    def _flush_slice(self, take: int, due: bool, failed: set[int], sync_wal: bool) -> int:
        """Write `take` more waiting records, and the held ones of lagging sinks.

        Releases what every sink has written (its done mark and commit come
        at the end of the flush: the write-ahead log still holds it).
        `_flushing` is set throughout; a record evicted from the waiting ones
        meanwhile is not waited for.  A sink whose write fails is added to
        `failed` (ids) and not tried again in the same flush.
        """
        with self._lock:
            self._held.extend(self._waiting.take(min(take, len(self._waiting))))
            entries = self._held.snapshot()
            sinks = list(self._sinks)
        # While `_flushing` is set the producer only takes the oldest held
        # records of sinks that fell behind (backlog overflow; released after
        # the sink write in progress) and moves their cursors, so the sinks
        # are written (and synced) without the lock.
        released: list[Entry] = []
        try:
            if self.wal is not None and sync_wal:
                self._sync_wal()
            # Each record's size once per slice: a sink's batch is a tail of `entries`.
            sizes = [record.nbytes for _, record in entries]
            now = time.monotonic()
            for state in sinks:
                if id(state) in failed or (due and state.failing and now < state.retry_at):
                    continue            # falls behind; its backlog overflows if need be
                with self._lock:
                    first = bisect.bisect_left(entries, state.cursor, key=_entry_seq)
                    batch = entries[first:]
                    if batch:
                        state.writing_end = batch[-1][0] + 1
                if batch:
                    written = self._write(state, batch, sum(sizes[first:]))
                    if not written:
                        failed.add(id(state))
                    with self._lock:
                        self._settle_write_locked(state, written)
                        deferred, self._deferred = self._deferred, []
                    self._after_evictions(deferred)
        finally:
            with self._lock:
                for state in sinks:
                    self._settle_write_locked(state, False)     # a write that raised
                deferred, self._deferred = self._deferred, []
                released, self._written_early = self._written_early, []
                if self._sinks:
                    released += self._held.take_below(min(s.cursor for s in self._sinks))
                self._flushed += len(released)
                self._bytes_flushed += sum(r.nbytes for _, r in released)
                self._changed.notify_all()      # room made (a put may wait for it)
            self._after_evictions(deferred)
            release_records([record for _, record in released])
        return len(released)

    @staticmethod
    def _settle_write_locked(state: _SinkState, written: bool) -> None:
        """Settle a sink write that returned: its cursor, what overflowed meanwhile."""
        if state.writing_end < 0:
            return
        if written:
            state.cursor = max(state.cursor, state.writing_end)
        elif state.overflowed_in_write:
            state.lost_by["backlog_overflow"] += state.overflowed_in_write
        state.writing_end = -1
        state.overflowed_in_write = 0

    def rotate_idle(self) -> None:
        """Let sinks finish files older than their ``rotate_seconds`` on an idle stream.

        A file is otherwise only rotated by age when a record arrives; the
        flusher calls this about once a second while the buffer is empty.  Not
        counted as a flush.
        """
        with self._lock:
            if self._flushing or len(self._waiting) or len(self._held):
                return                  # a flush is due or running: it rotates itself
            self._flushing = True
            sinks = list(self._sinks)
        try:
            timed = [s for s in sinks
                     if getattr(getattr(s.sink, "config", None), "rotate_seconds", 0)]
            for state in timed:
                self._write(state, [])
            if timed:
                self._commit(self._mark_done(sinks) if self.wal is not None else sinks)
        finally:
            with self._lock:
                self._flushing = False
                self._changed.notify_all()

    def _write(self, state: _SinkState, batch: list[Entry], nbytes: int | None = None) -> bool:
        """Write `batch` to one sink; whether it was written (a failure is counted).

        `nbytes`: the records' payload bytes, when the caller has them.
        """
        records = [record for _, record in batch]
        start = time.perf_counter()
        try:
            state.sink.write(records)
        except Exception as exc:
            state.write_seconds += time.perf_counter() - start
            # The protocol says OSError after rollback; anything else is a bug
            # in the sink, counted and logged the same way (with a traceback)
            # so that one sink cannot stop the others.
            state.errors += 1
            state.failed_flushes += 1
            state.last_error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, OSError):
                self._errors.error(f"write:{state.name}", "sink raised a non-OSError; counted "
                                   "as a failed write", sink=state.name, exc_info=True,
                                   errors=state.errors)
            else:
                self._errors.warning(f"write:{state.name}", "sink write failed; its records "
                                     "stay buffered until its backlog passes the capacity",
                                     sink=state.name, error=state.last_error,
                                     records=len(records), errors=state.errors)
            state.failing = True
            state.retry_at = time.monotonic() + FAILING_SINK_RETRY
            return False
        state.write_seconds += time.perf_counter() - start
        if state.failing:
            log.info("sink writing again", sink=state.name, failed_flushes=state.failed_flushes)
            state.failing = False
            state.failed_flushes = 0
        state.written += len(records)
        state.bytes += sum(r.nbytes for r in records) if nbytes is None else nbytes
        state.unsynced = True
        return True

    def _sync_wal(self) -> None:
        assert self.wal is not None
        try:
            self.wal.sync_records()
        except OSError as exc:
            self._wal_errors += 1
            self._errors.error("wal_fsync", "write-ahead log fsync failed", error=str(exc),
                               wal_errors=self._wal_errors)

    def _mark_done(self, sinks: list[_SinkState]) -> list[_SinkState]:
        """Log a done mark for every sink that moved or changed (synced first).

        A sink needs a new mark when its position or its `checkpoint()` differs
        from its last logged mark (a rotation or reopen changes the checkpoint
        without writing).  Returns the sinks the log now fully covers (marked
        here, or already covered): they may `commit()`.  A sink whose sync
        fails, or every sink if the mark cannot be appended, is left out, and
        its pending files wait for a later mark.
        """
        assert self.wal is not None
        if not self._marking:
            return []                   # before recover(): a mark would skip logged records
        covered = []
        marks = {}
        for state in sinks:
            seq = state.cursor - 1
            old = self._marked.get(state.name)
            try:
                checkpoint = state.sink.checkpoint()
            except OSError as exc:
                state.last_error = f"checkpoint: {exc}"
                continue
            if old is not None and old.seq == seq and not state.unsynced \
                    and checkpoint == old.checkpoint:
                covered.append(state)
                continue
            if self.wal.fsync != "never":
                try:
                    state.sink.sync()
                except OSError as exc:
                    state.sync_errors += 1
                    state.last_error = f"sync: {exc}"
                    self._errors.warning(f"sync:{state.name}", "sink sync failed; its done "
                                         "mark stays behind", sink=state.name, error=str(exc),
                                         sync_errors=state.sync_errors)
                    continue
                try:
                    checkpoint = state.sink.checkpoint()     # a sync may drop a vanished file
                except OSError as exc:
                    state.last_error = f"checkpoint: {exc}"
                    continue
            state.unsynced = False
            marks[state.name] = DoneMark(seq, checkpoint)
        if not marks:
            return covered
        try:
            self.wal.mark_done(marks)
        except OSError as exc:
            self._wal_errors += 1
            self._errors.error("wal_done_mark", "write-ahead log done mark failed",
                               error=str(exc), wal_errors=self._wal_errors)
            return covered
        self._marked.update(marks)
        return covered + [state for state in sinks if state.name in marks]

    def _commit(self, sinks: list[_SinkState]) -> None:
        """Let `sinks` publish their pending files (`commit()`, where a sink has one)."""
        # The protocol says commit() never raises: anything it does is counted.
        _call_each(sinks, "commit", Exception, self._errors)

    def reopen_sinks(self, block: Any = None) -> None:
        """SIGHUP: every sink finishes its current file (in the flusher's thread).

        `block`: a capture block whose stop has passed; only sinks whose
        current file holds its records (``current_block``; sinks without
        files: all) finish it, so a file the next block began is not cut.
        The finished files are published once a done mark lists them (with a
        write-ahead log), or at once.
        """
        flusher = self._flusher
        if flusher is not None and flusher.running and threading.get_ident() != flusher.ident:
            flusher.request_reopen(block)
            return
        sinks = list(self._sinks)
        if block is not None:
            sinks = [s for s in sinks if getattr(s.sink, "current_block", block) is block]
        self._reopen(sinks)
        self._commit(self._mark_done(sinks) if self.wal is not None else sinks)

    def _reopen(self, sinks: list[_SinkState]) -> None:
        _call_each(sinks, "reopen", OSError, self._errors)

    def pop(self) -> Record:
        """Remove and return the oldest record; the caller now owns (and releases) it.

        Raises
        ------
        IndexError
            The buffer is empty.
        RuntimeError
            A flush is running (one consumer only).
        """
        with self._lock:
            if self._flushing:
                raise RuntimeError("pop() during a flush: a buffer has one consumer")
            store = self._held if len(self._held) else self._waiting
            if not len(store):
                raise IndexError("pop from an empty buffer")
            seq, record = store.popleft()
            for s in self._sinks:
                s.cursor = max(s.cursor, seq + 1)
            self._popped += 1
            self._changed.notify_all()
        if self.wal is not None:
            self.wal.skip([seq])
        return record

    def clear(self) -> int:
        """Drop every record held (released, counted as ``cleared``); how many."""
        with self._lock:
            if self._flushing:
                raise RuntimeError("clear() during a flush: a buffer has one consumer")
            entries = list(self._held) + list(self._waiting)
            self._held.clear()
            self._waiting.clear()
            for s in self._sinks:
                s.lost_by["cleared"] += sum(1 for seq, _ in entries if seq >= s.cursor)
                s.cursor = self._next_seq
            self._dropped["cleared"] += len(entries)
            self._changed.notify_all()
        self._after_evictions(entries)
        return len(entries)

    def close(self) -> int:
        """Let go of what is still held, after the final flush; how many records.

        Records still held are ones a failing sink never wrote: they are
        released and counted as ``unwritten_at_close`` (and lost for those
        sinks).  With a write-ahead log they stay logged, so the next start
        writes them; every sink's current file is finished (`reopen`), a last
        done mark lists it and it is published (`commit`) before the log is
        closed, so the log's last word is that no file is open.  Sinks are the
        caller's to close (with a log, nothing is left for their `close()` to
        publish).  A second call does nothing.
        """
        with self._lock:
            if self._flushing:
                raise RuntimeError("close() during a flush")
            if self._closed:
                return 0
            self._closed = True
            entries = list(self._held) + list(self._waiting)
            self._held.clear()
            self._waiting.clear()
            for s in self._sinks:
                s.lost_by["unwritten_at_close"] += sum(1 for seq, _ in entries
                                                       if seq >= s.cursor)
            if entries:
                self._dropped["unwritten_at_close"] += len(entries)
            self._ready = False
        release_records([record for _, record in entries])
        if entries:
            log.warning("buffer closed with records a sink never wrote",
                        records=len(entries), logged=self.wal is not None)
        if self.wal is not None and self._marking:
            sinks = list(self._sinks)
            self._reopen(sinks)
            covered = {s.name for s in self._mark_done(sinks)}
            self._commit([s for s in sinks if s.name in covered])
            behind = [s for s in sinks if s.name not in covered]
            if behind:
                # Their files hold records the log will replay: publishing them
                # (their close()) would write those records twice after a
                # restart, so they stay unpublished, for recovery to leave alone.
                for state in behind:
                    hold = getattr(state.sink, "hold", None)
                    if hold is not None:
                        hold()
                log.error("write-ahead log closed without a done mark covering these sinks' "
                          "files; they stay unpublished and the log replays their records "
                          "at the next start", sinks=[s.name for s in behind],
                          wal=str(self.wal.path))
        if self.wal is not None:
            self._marking = False
            self.wal.close()
        self._errors.close()
        return len(entries)

    # -- state ---------------------------------------------------------------

    def size(self) -> int:
        """Count the records held (waiting, being written, or kept for a failing sink)."""
        return len(self._held) + len(self._waiting)

    def almost_full(self) -> bool:
        """At least the policy's count threshold held (as in baldaquin), else 90 % of capacity."""
        count = self.policy.count
        high_water = count if 0 < count <= self.capacity else max(1, (9 * self.capacity) // 10)
        return self.size() >= high_water

    def time_since_last_flush(self) -> float:
        """Seconds since the last flush, on the monotonic clock."""
        return self.policy.age()

    def flush_needed(self) -> bool:
        """Whether the flush policy asks for a flush now."""
        return self.policy.due(self) is not None

    def stats(self) -> dict[str, Any]:
        """Counters: records, flushes by reason, drops by reason, blocking, per sink, fill."""
        with self._lock:
            size = len(self._held) + len(self._waiting)
            out: dict[str, Any] = {
                "kind": self.kind, "capacity": self.capacity, "when_full": self.when_full,
                "size": size, "fill": size / self.capacity,
                "records_accepted": self._accepted, "records_flushed": self._flushed,
                "bytes_flushed": self._bytes_flushed, "records_popped": self._popped,
                "records_recovered": self._recovered,
                "records_dropped": sum(self._dropped.values()),
                "dropped": dict(self._dropped),
                "flushes": sum(self._flushes.values()), "flushes_by_reason": dict(self._flushes),
                "triggers": self._triggers,
                "block_waits": self._block_waits, "block_timeouts": self._block_timeouts,
                "lagging_evictions": self._lagging_evictions,
                "wal_errors": self._wal_errors,
                "sinks": {s.name: s.stats(self._backlog_locked(s)) for s in self._sinks},
            }
        out["wal"] = self.wal.stats() if self.wal is not None else None
        return out

    def _backlog_locked(self, state: _SinkState) -> int:
        """Count the records held that `state` has neither written nor counted lost."""
        behind = 0                      # numbers increase: count from the front up to the cursor
        for store in (self._held, self._waiting):
            for seq, _ in store:
                if seq >= state.cursor:
                    return len(self._held) + len(self._waiting) - behind
                behind += 1
        return 0

    def summarise_errors(self) -> None:
        """Log the summaries of repeating errors that are due (the flusher calls this)."""
        self._errors.summarise()

    # -- flusher and recovery ------------------------------------------------

    def attach_flusher(self, flusher: Flusher) -> None:
        """From now on `flusher`'s thread makes every flush (Flusher.start calls this)."""
        if self._flusher is not None and self._flusher is not flusher:
            raise RuntimeError("the buffer already has a flusher")
        self._flusher = flusher

    def detach_flusher(self, flusher: Flusher) -> None:
        """Flush in the caller's thread again (Flusher.stop calls this)."""
        if self._flusher is flusher:
            self._flusher = None

    def recover(self, recover_sink: RecoverSink | None = None) -> int:
        """After a crash: bring sinks back to their checkpoints and write what the WAL holds.

        For every sink the log has a done mark for, `recover_sink(sink,
        checkpoint)` is called first; then the logged records after each
        sink's done mark are written to it, in order, before anything new.
        A sink the log does not know starts with the next new record.  Call
        once, after the sinks are attached and before `put` or a `Flusher`.
        Without a WAL this does nothing.

        Returns
        -------
        int
            Records replayed from the log.
        """
        if self.wal is None:
            self._ready = True
            return 0
        if self._ready:
            raise RuntimeError("recover() has already run")
        wal = self.wal
        marks = wal.done
        if marks and recover_sink is None:
            log.warning("recovering without a recover callable: sink output written after "
                        "the last done mark may be written twice", wal=str(wal.path))
        for state in self._sinks:
            mark = marks.get(state.name)
            if mark is None:
                state.cursor = wal.next_seq
                continue
            if recover_sink is not None:
                report = recover_sink(state.sink, mark.checkpoint)
                if report:
                    log.info("sink brought back to its checkpoint", sink=state.name,
                             report=report)
            state.cursor = mark.seq + 1
            self._marked[state.name] = mark
        self._marking = True
        low = min((s.cursor for s in self._sinks), default=-1)
        replayed = 0
        for seq, blob in wal.records(after=low - 1):
            if self.size() >= self.capacity:
                self.flush_now("recover")
            if self.size() >= self.capacity:
                self._dropped["recover_overflow"] += 1
                self._errors.error("recover_overflow", "recovered record dropped: sinks "
                                   "failing and the buffer full", seq=seq,
                                   dropped=self._dropped["recover_overflow"])
                for s in self._sinks:
                    if s.cursor <= seq:
                        s.lost_by["recover_overflow"] += 1
                continue
            self._waiting.append((seq, decode_record(blob)))
            replayed += 1
        self._recovered = replayed
        self._next_seq = wal.next_seq
        if self._sinks and self.size():
            self.flush_now("recover")
        # Make the log describe exactly the sinks attached now.
        with self._lock:
            state_now = {}
            for state in self._sinks:
                mark = self._marked.get(state.name)
                if mark is None:
                    mark = DoneMark(state.cursor - 1, state.sink.checkpoint())
                state_now[state.name] = mark
            wal.mark_done(state_now, replace=True)
            self._marked = dict(state_now)
        self._ready = True
        lost = wal.stats()["records_lost"]
        if replayed or marks or lost:
            log.info("recovered from the write-ahead log", wal=str(wal.path), replayed=replayed,
                     sinks=len(self._sinks), next_seq=self._next_seq, records_lost=lost)
        return replayed


class WalUnavailable(UsageProblem):
    """The write-ahead log cannot be opened (another daemon holds it, another format, ...)."""


#: Bytes one buffered record costs beside its data (slot, entry, record object).
ENTRY_BYTES = 256
#: Bytes a record's write-ahead log frame adds to its data (frame, record and item headers).
WAL_RECORD_SLACK = 4096


def memory_needs(config: BufferConfig, record_bytes: int, shares_pool: bool
                 ) -> list[tuple[str, str, int]]:
    """List what a buffer built from `config` may hold: (key, what, bytes) triples.

    Parameters
    ----------
    record_bytes : int
        Bytes of one record (its largest or expected size).
    shares_pool : bool
        The records live in memory allocated elsewhere (chunk records are the
        chunk pool's), so the buffer holds only references to them.

    A write-ahead log replays into fresh records (decoded copies, up to
    `capacity` of them) and encodes each record before appending it.
    """
    own = 0 if shares_pool else record_bytes
    needs = [("capacity", "buffer (capacity x record)", config.capacity * (ENTRY_BYTES + own))]
    if config.wal:
        replay = config.capacity * record_bytes if shares_pool else 0
        needs.append(("wal", "write-ahead log (replayed copies, a record encoded)",
                      replay + record_bytes + WAL_RECORD_SLACK))
    return needs


def build_buffer(config: BufferConfig, sinks: Sequence[Any] = (),
                 recover: RecoverSink | None = None, *, name: str = "", wal: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 error_interval: float = 10.0, flush_at_most: int | None = None) -> Buffer:
    """Build a ready buffer from a ``[stream.buffer]`` table.

    Parameters
    ----------
    config : BufferConfig
        The validated table; ``wal`` may contain ``{stream}``.
    sinks : sequence
        The first is the primary sink, the others are added after it.
    recover : callable, optional
        ``recover(sink, checkpoint)``, given to `Buffer.recover` when there is
        a write-ahead log.
    name : str
        The stream's name, for ``{stream}`` in the WAL path.
    wal : bool
        Keep the write-ahead log the table asks for (False: none, e.g. for
        the raw packets of pcap sinks, a diagnostic copy).
    clock : callable
        Monotonic seconds for the flush policy.
    error_interval : float
        Seconds between summaries of a repeating error (the daemon's
        statistics interval).
    flush_at_most : int, optional
        Flush once this many records are held, whatever ``flush_count`` says
        (when it is off or larger): chunk records hold pool chunks until
        written, and the receive side needs the pool's others.  A flush then
        writes them in slices of half that, each released once written, so
        the receive side fills one half while the other is written.

    Returns
    -------
    Buffer
        Recovered and ready for `put`; start a `Flusher` on it.

    Raises
    ------
    WalUnavailable
        The write-ahead log cannot be opened: one line naming it (e.g. another
        daemon holds it).
    """
    if flush_at_most is not None and not 0 < config.flush_count <= flush_at_most:
        config = dataclasses.replace(config, flush_count=flush_at_most)
    policy = FlushPolicy.from_config(config, clock=clock)
    write_ahead = None
    if config.wal and wal:
        path = Path(config.wal.format(stream=name))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_ahead = WriteAheadLog(path, fsync=config.wal_fsync,
                                        max_bytes=config.wal_max_bytes)
        except OSError as exc:      # e.g. in use by another daemon: one line, as a port in use
            raise WalUnavailable(f"{path}: cannot open the write-ahead log: "
                                 f"{exc.strerror or exc}") from None
        except WalFormatError as exc:
            raise WalUnavailable(str(exc)) from None
    buffer = Buffer(config.kind, config.capacity, config.when_full, policy, wal=write_ahead,
                    block_timeout=config.block_timeout, error_interval=error_interval,
                    flush_slice=None if flush_at_most is None else max(1, flush_at_most // 2))
    for i, sink in enumerate(sinks):
        if i == 0:
            buffer.set_primary_sink(sink)
        else:
            buffer.add_custom_sink(sink)
    buffer.recover(recover)
    return buffer
