"""Flush policies, and the flusher thread that applies them.

A `FlushPolicy` decides when a buffer's records go to its sinks: by record
count, by bytes, by age since the last flush, by custom predicates, combined
with ``any`` (the default) or ``all``.  Its counters count what was accepted
since the last flush; every flush resets them, whatever caused it.

A `Flusher` owns the consumer side of one buffer: a thread that flushes when
the policy says so, when the age timer runs out (on the monotonic clock, so an
idle stream is still flushed on time), and when asked from another thread, a
signal handler or Python.  Sinks are only ever called from that thread.
"""

from __future__ import annotations

import collections
import inspect
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from daqd.user_code import import_object

if TYPE_CHECKING:
    from daqd.config import BufferConfig

log = structlog.get_logger("daqd.buffer")

#: A custom flush predicate: called with the buffer, True when a flush is due.
Predicate = Callable[[Any], bool]

COMBINATIONS = ("any", "all")


def resolve_predicate(spec: str) -> Predicate:
    """Import the callable a ``"module:function"`` string names.

    Parameters
    ----------
    spec : str
        ``"package.module:function"``; the function part may be dotted
        (``"module:Class.method"``).

    Returns
    -------
    callable
        The predicate, called later with the buffer.

    Raises
    ------
    ValueError
        One line saying why `spec` names no callable.
    """
    target: Any = import_object(spec, "module:function")
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    check_predicate(target, spec)
    return target


def check_predicate(target: Any, spec: str) -> None:
    """Check, without calling it, that `target` can be called as ``target(buffer)``.

    It must be a Python function or method (or an object with a Python
    ``__call__``) whose parameters take the buffer as their one positional
    argument.  A built-in or C function is refused: what it accepts cannot be
    inspected (``os:system`` has one parameter too, a shell command).

    Raises
    ------
    ValueError
        One line saying why.
    """
    if isinstance(target, type):
        raise ValueError(f"{spec} is a class; name a function f(buffer) -> bool")
    call = inspect.getattr_static(type(target), "__call__", None)
    python = inspect.isfunction(target) or inspect.isfunction(call) or (
        inspect.ismethod(target) and inspect.isfunction(target.__func__))
    if not python:
        raise ValueError(f"{spec} is a built-in or C function, whose parameters cannot be "
                         "checked; name a Python function f(buffer) -> bool")
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        raise ValueError(f"{spec}: its parameters cannot be read; name a Python function "
                         "f(buffer) -> bool") from None
    try:
        signature.bind(None)
    except TypeError:
        raise ValueError(f"{spec}{signature} cannot be called with the buffer as its one "
                         "argument; name a function f(buffer) -> bool") from None


# Seconds between checks for files to rotate by age on an idle stream.
IDLE_ROTATE_PERIOD = 1.0

class FlushPolicy:
    """When a buffer should be flushed.

    Conditions are evaluated in a fixed order with short-circuiting: the
    custom predicates in the order given, then count, bytes and age.  With
    ``any`` the first true condition decides (later ones are not called); with
    ``all`` the first false one does.  A threshold of 0 is off and takes no
    part; a policy with no condition never asks for a flush (forced flushes
    still happen).

    Parameters
    ----------
    count : int
        Flush once this many records were accepted since the last flush.
    nbytes : int
        Flush once this many payload bytes were accepted since the last flush.
    interval : float
        Flush when this many seconds have passed since the last flush and the
        buffer holds records.
    custom : sequence
        Predicates ``f(buffer) -> bool``, or ``(name, f)`` pairs; the name
        appears in the flush reason (``custom:name``).
    when : str
        ``"any"`` or ``"all"``.
    clock : callable
        Monotonic seconds (injected by tests).
    """

    def __init__(self, count: int = 0, nbytes: int = 0, interval: float = 0.0,
                 custom: Sequence[Predicate | tuple[str, Predicate]] = (), when: str = "any",
                 clock: Callable[[], float] = time.monotonic):
        if when not in COMBINATIONS:
            raise ValueError(f"when: {when!r} is not one of {', '.join(COMBINATIONS)}")
        if count < 0 or nbytes < 0 or interval < 0:
            raise ValueError("count, nbytes and interval must not be negative")
        self.count = count
        self.nbytes = nbytes
        self.interval = interval
        self.when = when
        self.clock = clock
        self.records = 0        # accepted since the last flush
        self.bytes = 0
        self.last_flush = clock()
        self._conditions: list[tuple[str, Callable[[Any], bool]]] = []
        for entry in custom:
            name, predicate = entry if isinstance(entry, tuple) else (
                getattr(entry, "__qualname__", repr(entry)), entry)
            self._conditions.append((f"custom:{name}", predicate))
        if count:
            self._conditions.append(("count", lambda _: self.records >= self.count))
        if nbytes:
            self._conditions.append(("bytes", lambda _: self.bytes >= self.nbytes))
        if interval:
            self._conditions.append(("age", self._age_due))

    @classmethod
    def from_config(cls, config: BufferConfig,
                    clock: Callable[[], float] = time.monotonic) -> FlushPolicy:
        """Build the policy a ``[stream.buffer]`` table describes (predicates imported here)."""
        custom = [(spec, resolve_predicate(spec)) for spec in config.flush_custom]
        return cls(config.flush_count, config.flush_bytes, config.flush_interval, custom,
                   config.flush_when, clock)

    def added(self, nbytes: int) -> None:
        """Count one accepted record of `nbytes` payload bytes."""
        self.records += 1
        self.bytes += nbytes

    def reset(self) -> None:
        """Zero the counters and restart the age timer: a flush happened."""
        self.records = 0
        self.bytes = 0
        self.last_flush = self.clock()

    def age(self) -> float:
        """Seconds since the last flush (monotonic)."""
        return self.clock() - self.last_flush

    def next_deadline(self) -> float | None:
        """Monotonic time at which the age condition comes due (None: no age condition)."""
        return self.last_flush + self.interval if self.interval else None

    def due(self, buffer: Any) -> str | None:
        """Why a flush is due now (``count``, ``age``, ``custom:NAME``, ...), or None.

        With ``all`` the reason names every condition, joined by ``+``.
        """
        if not self._conditions:
            return None
        if self.when == "any":
            for name, test in self._conditions:
                if test(buffer):
                    return name
            return None
        for _, test in self._conditions:
            if not test(buffer):
                return None
        return "+".join(name for name, _ in self._conditions)

    def _age_due(self, buffer: Any) -> bool:
        # An empty buffer has nothing to age; held-back records (a failing
        # sink) do, so the timer also paces retries.
        return self.clock() - self.last_flush >= self.interval and buffer.size() > 0


class _Outcome:
    """A requested flush the requester waits for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.flushed = 0


class Flusher:
    """The thread that flushes one buffer.

    It flushes when the buffer's policy is due (the producer wakes it), when
    the age timer runs out, and when asked: `request_flush`,
    `request_trigger` and `request_reopen` only append to a queue and write a
    byte to a pipe, so a signal handler may call them; `flush` and `trigger`
    ask and wait.  `stop`
    makes a final flush (reason ``stop``) and joins the thread.

    Parameters
    ----------
    buffer : Buffer
        The buffer to flush; it sends all its sink calls to this thread while
        the thread runs.
    poll : float
        Longest sleep between policy checks when no timer is due (custom
        predicates that depend on time are checked this often).
    """

    def __init__(self, buffer: Any, *, poll: float = 0.25):
        self.buffer = buffer
        self.poll = poll
        # (kind, reason, outcome); a "reopen" carries the capture block whose files
        # to finish in place of its reason (None: every file, SIGHUP).
        self._requests: collections.deque[tuple[str, Any, _Outcome | None]] = collections.deque()
        self._due_reason: str | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # The pipe stays open as long as this object lives: a late request
        # from another thread must never write to a reused descriptor.
        weakref.finalize(self, _close_pipe, self._wake_r, self._wake_w)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.flushes = 0
        # Loop iterations, idle ones included: the systemd watchdog's life sign
        # (it stops when a sink call or a predicate never returns).
        self.heartbeat = 0
        self.error: BaseException | None = None

    # -- any thread, signal handlers included --------------------------------

    def request_flush(self, reason: str = "request") -> None:
        """Ask for a flush and return at once (safe in a signal handler)."""
        self._requests.append(("flush", reason, None))
        self._wake()

    def request_trigger(self) -> None:
        """Ask for a trigger (dump the buffer's content) and return at once."""
        self._requests.append(("trigger", "trigger", None))
        self._wake()

    def request_reopen(self, block: Any = None) -> None:
        """Ask the sinks to finish their current files (SIGHUP) and return at once.

        `block`: only files of that capture block (its stop has passed); a file
        the next block's records have begun already is left to go on.  Served
        in order with flushes: what was put before the request is written first.
        """
        self._requests.append(("reopen", block, None))
        self._wake()

    def wake_due(self, reason: str) -> None:
        """Flush soon with `reason`: the producer saw the policy come due."""
        self._due_reason = reason
        self._wake()

    @property
    def due_pending(self) -> bool:
        """A policy flush was asked for and has not started yet."""
        return self._due_reason is not None

    # -- other threads -------------------------------------------------------

    @property
    def ident(self) -> int | None:
        """The flusher thread's identifier (None before `start`)."""
        return self._thread.ident if self._thread is not None else None

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Flusher:
        """Start the thread; the buffer's sink calls go through it from now on."""
        if self._thread is not None:
            raise RuntimeError("the flusher has already been started")
        self.buffer.attach_flusher(self)
        self._thread = threading.Thread(target=self._run, name="daqd-flusher", daemon=True)
        self._thread.start()
        return self

    def flush(self, reason: str = "request", timeout: float = 30.0) -> int | None:
        """Flush and wait; the records that left the buffer, or None on timeout."""
        return self._ask("flush", reason, timeout)

    def trigger(self, timeout: float = 30.0) -> int | None:
        """Dump the buffer's content to the sinks and wait (see `Buffer.trigger`)."""
        return self._ask("trigger", "trigger", timeout)

    def stop(self, timeout: float = 30.0) -> bool:
        """Make a final flush (reason ``stop``) and join; False if the thread did not end."""
        if self._thread is None:
            self.buffer.flush("stop")
            return True
        self._stopping = True
        self._requests.append(("stop", "stop", None))
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("flusher did not stop", timeout=timeout)
            return False
        self.buffer.detach_flusher(self)
        return True

    # -- the thread ----------------------------------------------------------

    def _ask(self, kind: str, reason: str, timeout: float) -> int | None:
        if threading.get_ident() == self.ident:
            return self.buffer.flush_now(reason, trigger=kind == "trigger")
        if not self.running:
            raise RuntimeError("the flusher is not running")
        outcome = _Outcome()
        self._requests.append((kind, reason, outcome))
        self._wake()
        return outcome.flushed if outcome.done.wait(timeout) else None

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass                    # the pipe is full of wake-ups already

    def _sleep(self) -> None:
        """Wait for a wake-up or until the age timer (at most `poll`) runs out."""
        timeout = self.poll
        deadline = self.buffer.policy.next_deadline()
        if deadline is not None:
            left = deadline - self.buffer.policy.clock()
            if left > 0:
                timeout = min(timeout, left)
        readable, _, _ = select.select([self._wake_r], [], [], timeout)
        if readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _run(self) -> None:
        buffer = self.buffer
        idle_check = time.monotonic()
        try:
            while True:
                self.heartbeat += 1
                if not self._requests and self._due_reason is None:
                    self._sleep()
                stop = False
                while self._requests:
                    kind, reason, outcome = self._requests.popleft()
                    if kind == "stop":
                        stop = True
                        continue
                    if kind == "reopen":
                        buffer.reopen_sinks(reason)     # (the block, see _requests)
                        continue
                    flushed = buffer.flush_now(reason, trigger=kind == "trigger")
                    self.flushes += 1
                    if outcome is not None:
                        outcome.flushed = flushed
                        outcome.done.set()
                if stop:
                    buffer.flush_now("stop")
                    self.flushes += 1
                    return
                # Clear before flushing: a put that comes due meanwhile asks again.
                reason, self._due_reason = self._due_reason, None
                if reason is None:
                    reason = buffer.policy.due(buffer)
                if reason is not None:
                    buffer.flush_now(reason, due=True)
                    self.flushes += 1
                elif time.monotonic() - idle_check >= IDLE_ROTATE_PERIOD:
                    idle_check = time.monotonic()
                    buffer.rotate_idle()
                buffer.summarise_errors()       # repeating errors: one summary per interval
        except BaseException as exc:
            self.error = exc
            log.exception("flusher thread failed; the buffer is no longer flushed")
            raise
        finally:
            # Release anyone waiting on a request that will never be served.
            while self._requests:
                _, _, outcome = self._requests.popleft()
                if outcome is not None:
                    outcome.done.set()


def _close_pipe(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
