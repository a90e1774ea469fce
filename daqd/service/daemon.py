"""The daemon: streams, statistics, control and lifecycle (``daqd run``).

Startup order (DESIGN.md, "Process"): the configuration is already
validated; every chunk pool and buffer is allocated and every sink and
source opened (sockets bound), then the receive threads start, then the
ZeroMQ sockets, then the built-in simulators; READY=1 goes to systemd last.

Shutdown on SIGTERM/SIGINT, a ``stop`` request, ``--duration`` or the end of
every finite source: STOPPING=1; readers stop, open chunks are closed,
buffers flush, files are finalised, a last status ("stopped") is published,
exit 0.  A second SIGTERM/SIGINT during the drain exits at once (status 1)
after counting what it discards (`Daemon.discarded`): a last status
("interrupted") on the statistics socket, the pidfile removed, and a last log
line with the counts.  SIGHUP reopens sink files; SIGUSR1 forces a flush.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from daqd import __version__
from daqd.config import Config
from daqd.pipeline.capture import check_id
from daqd.pipeline.datatime import parse_instant
from daqd.pipeline.events import ARGUMENTS as TRIGGER_ARGUMENTS
from daqd.recv.counters import LOSS_COUNTERS
from daqd.recv.workloads import WorkloadSender
from daqd.service.control import COMMANDS, ControlServer
from daqd.service.metrics import MetricsServer
from daqd.service.pidfile import PidFile
from daqd.service.request_args import RequestArgumentError, check_names, pick_streams
from daqd.service.sdnotify import Notifier, Watchdog, watchdog_interval
from daqd.service.stats_publisher import StatsPublisher
from daqd.service.stream_runner import StreamRunner
from daqd.service.zmq_security import Security

log = structlog.get_logger("daqd.daemon")

# Exit status when a second signal cuts the drain short.
EXIT_INTERRUPTED = 1
#: A stream's thread failed (or did not stop) during the run: drained, but not cleanly.
EXIT_FAILED = 1
# Seconds the drain may take per stream before it is reported as stuck.
DRAIN_TIMEOUT = 60.0
# Seconds a second signal gives the last status message to leave before the exit.
FINAL_STATUS_TIMEOUT = 3.0
# The counters of the log line each stream gets per interval.
LOG_COUNTERS = ("packets", "heaps", "chunks_completed", "chunk_heaps_too_old",
                "packets_tap_dropped", "packets_dropped_socket_buffer")


class Daemon:
    """One daqd process: its streams and the sockets that watch and steer it.

    Parameters
    ----------
    config : Config
        The validated configuration.
    pidfile : PidFile, optional
        The pidfile the caller holds; a second signal removes it before
        exiting (the normal exit leaves that to the caller).
    """

    def __init__(self, config: Config, pidfile: PidFile | None = None):
        self.config = config
        self.pidfile = pidfile
        self.discarded: dict[str, dict[str, int]] | None = None
        self.name = config.daemon.name
        self.state = "starting"
        self.started = time.monotonic()
        # The capture block open from the start is named after this (daqd.pipeline.capture).
        started = time.time()
        self.runners = [StreamRunner(s, config, started) for s in config.streams]
        self.simulators = [WorkloadSender(s) for s in config.simulate]
        self.stop_requested = threading.Event()
        self.stop_reason = ""
        self.notifier = Notifier()
        self.context: zmq.Context | None = None
        self.security: Security | None = None
        self.publisher: StatsPublisher | None = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.watchdog: Watchdog | None = None
        self.signals_seen = 0
        self.log = log.bind(daemon=self.name)
        self._replay = ReplayProgress()

    # ------------------------------------------------------------------
    # lifecycle

    def start(self) -> None:
        """Allocate, bind and start everything; tell systemd we are ready."""
        for runner in self.runners:
            for warning in runner.open():
                self.log.warning("source warning", stream=runner.name, warning=warning)
        for runner in self.runners:
            runner.start()
        z = self.config.zmq
        if z.stats or z.control:
            self.context = zmq.Context()
            self.security = Security.from_config(self.context, z)
        if z.stats:
            assert self.context is not None
            self.publisher = StatsPublisher(self.context, z.stats, z.interval, self.snapshot,
                                            self.name, self.security, sndhwm=z.stats_hwm,
                                            nodrop=z.stats_nodrop)
            self.publisher.start()
        if z.control:
            handlers = {name: getattr(self, "on_" + name.replace("-", "_")) for name in COMMANDS}
            assert self.context is not None
            self.control = ControlServer(self.context, z.control, handlers, self.security)
            self.control.start()
        if self.config.daemon.prometheus:
            self.metrics = MetricsServer(self.config.daemon.prometheus, self.snapshot,
                                         daemon=self.name)
            self.metrics.start()
        for simulator in self.simulators:
            simulator.start()
        interval = watchdog_interval()
        if interval:
            self.watchdog = Watchdog(self.notifier, interval, self.heartbeat)
            self.watchdog.start()
        self.state = "running"
        self.notifier.ready(f"receiving {len(self.runners)} stream(s)")
        self.log.info("ready", version=__version__, config=self.config.path,
                      streams=[r.name for r in self.runners],
                      stats=self.publisher.endpoint if self.publisher else "",
                      control=self.control.endpoint if self.control else "")

    def wait(self, duration: float | None = None) -> None:
        """Block until a stop is asked for, `duration` passes or every source ends."""
        deadline = None if duration is None else time.monotonic() + duration
        last_log = time.monotonic()
        interval = max(self.config.zmq.interval, 1.0)
        while not self.stop_requested.wait(0.1):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.stop_reason = "duration"
                break
            failed = [r.name for r in self.runners if r.failed]
            if failed:
                # A stream without its thread would only fill its pool and drop:
                # drain what it has, then exit 1 (systemd restarts it).
                self.stop_reason = "thread failed: " + ", ".join(failed)
                break
            if all(r.ended for r in self.runners) and not any(
                    s.running for s in self.simulators):
                self.stop_reason = "sources ended"
                break
            for runner in self.runners:
                runner.summarise_logs()
            if now - last_log >= interval:
                last_log = now
                self._log_interval()

    def _log_interval(self) -> None:
        """One log line per interval: the headline counters of each stream."""
        for runner in self.runners:
            fields = _figures(runner, LOG_COUNTERS)
            replay = self._replay.report(runner.name, runner.receiver.replay_progress())
            if replay:
                fields["replay"] = replay
            self.log.info("stats", stream=runner.name, **fields)
        if self.watchdog is not None and self.watchdog.stalled:
            # Repeated each interval, so the last line before systemd's kill names them.
            self.log.error("watchdog withheld: threads stalled", stalled=self.watchdog.stalled,
                           withheld=self.watchdog.withheld)
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        parts = []
        for runner in self.runners:
            c = runner.raw_counters()
            parts.append(f"{runner.name}: {c.get('packets', 0)} packets, "
                         f"{c.get('heaps', 0)} heaps")
        return f"{self.state}; " + "; ".join(parts)

    def shutdown(self) -> int:
        """Drain and finalise everything; returns the exit status."""
        self.state = "draining"
        self.notifier.stopping("draining")
        self.log.info("draining", reason=self.stop_reason or "stop")
        for simulator in self.simulators:
            simulator.stop()
        if self.watchdog is not None:
            self.watchdog.stop()
        for runner in self.runners:
            runner.stop(DRAIN_TIMEOUT)
        errors = [e for r in self.runners for e in r.errors]
        failures = [e for r in self.runners for e in r.failures]
        if self.control is not None:
            self.control.stop()
        self.state = "stopped"
        if self.publisher is not None:
            self.publisher.stop(final=True)
        if self.metrics is not None:
            self.metrics.stop()
        if self.security is not None:
            self.security.close()
        if self.context is not None:
            self.context.term()
        self.log.info("stopped", errors=len(errors),
                      **{r.name: _summary(r) for r in self.runners})
        if failures:
            # A thread that failed (or never stopped) may have left data unwritten:
            # not a clean drain, so systemd's Restart=on-failure sees it.  (A
            # failing sink's losses are counted; the drain itself went well.)
            self.log.error("stopped after a thread failed", failures=failures)
            return EXIT_FAILED
        return 0

    # ------------------------------------------------------------------
    # signals (installed by run(); handlers run in the main thread)

    def install_signal_handlers(self) -> None:
        """Route SIGTERM/SIGINT (drain), SIGHUP (reopen) and SIGUSR1 (flush) to the daemon."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, lambda *_: self.on_reopen({}))
        signal.signal(signal.SIGUSR1, lambda *_: self.on_flush({"reason": "signal"}))

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.signals_seen += 1
        if self.signals_seen == 2:
            self._exit_interrupted(signal.Signals(signum).name)
        elif self.signals_seen == 1:
            self.stop_reason = signal.Signals(signum).name
            self.stop_requested.set()
        # a third signal while the second one's exit runs: that exit is bounded

    def count_discarded(self) -> dict[str, dict[str, int]]:
        """Count what exiting now would discard, per stream (read without taking any lock).

        ``records``: records the stream's buffer accepted that not every sink
        has written (waiting, being written, or kept for a failing sink);
        ``packet_records``: the same for the raw-packet buffer of pcap sinks;
        ``chunks``: chunk mode, completed chunks in the data ring that never
        reached the buffer; ``trigger_events``: triggered events cut short
        before their file was finished.  Open chunks and live partial heaps
        are not counted.
        """
        out = {}
        for runner in self.runners:
            counts = {"records": runner.buffer.size() if runner.buffer is not None else 0}
            if runner.packet_buffer is not None:
                counts["packet_records"] = runner.packet_buffer.size()
            if runner.group is not None:
                counts["chunks"] = runner.group.data_ring_size
            if runner.triggers is not None:
                counts["trigger_events"] = runner.triggers.writing
            out[runner.name] = counts
        return out

    def _exit_interrupted(self, signame: str) -> None:
        """Exit on a second signal: count what is discarded, say so, remove the pidfile.

        The last status message (state ``interrupted``, with ``discarded``) is
        published from a helper thread given `FINAL_STATUS_TIMEOUT` seconds, so
        that a lock held where the signal interrupted the main thread cannot
        hold up the exit.
        """
        try:
            self.state = "interrupted"
            self.discarded = self.count_discarded()
            helper = threading.Thread(target=self._close_sockets, name="daqd-final-status",
                                      daemon=True)
            helper.start()
            helper.join(FINAL_STATUS_TIMEOUT)
            if self.pidfile is not None:
                self.pidfile.release()
            total = sum(sum(counts.values()) for counts in self.discarded.values())
            final = "none (no statistics socket)" if self.publisher is None else \
                "timed out" if helper.is_alive() else "published"
            self.log.error("second signal: exiting without draining; buffered data discarded",
                           signal=signame, discarded_total=total, discarded=self.discarded,
                           pidfile_removed=self.pidfile is not None, final_status=final)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        finally:
            os._exit(EXIT_INTERRUPTED)      # whatever failed above, the exit happens

    def _close_sockets(self) -> None:
        """Publish the last status and let the ZeroMQ sockets deliver it (second signal)."""
        try:
            if self.control is not None:
                self.control.stop()
            if self.publisher is not None:
                self.publisher.stop(final=True)
            if self.security is not None:
                self.security.close()
            if self.context is not None:
                self.context.term()         # waits for the last status to leave (linger)
        except Exception as exc:  # the exit goes on; the last log line says it was not sent
            self.log.warning("last status not sent", error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------
    # control requests (ControlServer thread) and their signal twins

    def on_status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control ``status``: state, uptime, every stream's counters, the publisher's."""
        snap = self.snapshot()
        reply = {"state": snap["state"], "uptime": snap["uptime"], "daemon": self.name,
                 "pid": os.getpid(), "version": __version__, "streams": snap["streams"]}
        if self.publisher is not None:
            reply["publisher"] = self.publisher.stats()
        if "discarded" in snap:             # answered while a second signal exits
            reply["discarded"] = snap["discarded"]
        return reply

    def on_flush(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control ``flush`` (and SIGUSR1): every buffer writes what it holds."""
        reason = str(args.get("reason", "control"))
        for runner in self.runners:
            runner.flush(reason)
        self.log.info("flush requested", reason=reason)
        return {"flushing": [r.name for r in self.runners]}

    def on_trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control ``trigger``: write a window of data time to an event file per stream.

        Arguments (`daqd.pipeline.events.Triggers.window`): ``start`` and
        ``end``, or ``pre`` and ``post``, or neither (what is retained now);
        ``label``; ``stream`` (default: every stream with ``[stream.trigger]``).
        Every stream's window is checked before any event starts.  The reply:
        ``streams`` (per stream: ``event``, ``path``, the window, the records
        retained and already missing), and with one stream its entry at the top.
        """
        check_names(args, (*TRIGGER_ARGUMENTS, "stream"))
        args = dict(args)
        streams = self._trigger_streams(args.pop("stream", None))
        windows = [(runner, runner.triggers.window(args)) for runner in streams
                   if runner.triggers is not None]
        replies = {}
        for runner, window in windows:
            assert runner.triggers is not None
            replies[runner.name] = runner.triggers.start(*window)
        out: dict[str, Any] = {"streams": replies}
        if len(replies) == 1:
            name, reply = next(iter(replies.items()))
            out.update(reply, stream=name)
        return out

    def _trigger_streams(self, name: Any) -> list[StreamRunner]:
        """Return the streams a trigger is for: `name`, or every one with ``[stream.trigger]``."""
        streams = pick_streams(self.runners, name)
        if name is not None and streams[0].triggers is None:
            raise RequestArgumentError(f"stream {name!r} has no [stream.trigger] table: it "
                                       "retains no data for triggers")
        streams = [r for r in streams if r.triggers is not None]
        if not streams:
            raise RequestArgumentError("no stream has a [stream.trigger] table: nothing "
                                       "retains data for triggers")
        return streams

    def on_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control ``stop``: drain and exit, as on SIGTERM."""
        self.stop_reason = "control"
        self.stop_requested.set()
        return {"state": "draining"}

    def on_capture_start(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control ``capture-start``: a capture block from data time ``at`` (default: now).

        Arguments: ``at`` (ticks, or UTC with the stream's clock), ``id`` (a
        capture-block id; default generated, see `daqd.pipeline.capture`),
        ``stream`` (default: every stream).  Every stream is checked before
        any starts; the reply gives each stream's block (``capture``).
        """
        check_names(args, ("at", "id", "stream"))
        runners = pick_streams(self.runners, args.get("stream"))
        at = None if args.get("at") is None else parse_instant(args["at"], "at")
        block_id = args.get("id")
        if block_id is not None:
            check_id(block_id)
        plan = [(runner, runner.capture_ticks(at)) for runner in runners]
        for runner, ticks in plan:
            runner.gate.check_start(block_id, ticks)
        now = time.time()
        capture = {runner.name: runner.capture_start(ticks, block_id, now)
                   for runner, ticks in plan}
        return {"capture": capture}

    def on_capture_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control ``capture-stop``: end the capture block at data time ``at`` (default: now).

        Arguments: ``at``, ``stream`` (default: every stream).  Receiving goes
        on; records after the stop are counted (``records_after_capture``).
        A stream already stopped is left so.
        """
        check_names(args, ("at", "stream"))
        runners = pick_streams(self.runners, args.get("stream"))
        at = None if args.get("at") is None else parse_instant(args["at"], "at")
        plan = [(runner, runner.capture_ticks(at)) for runner in runners]
        for runner, ticks in plan:
            runner.gate.check_stop(ticks)
        return {"capture": {runner.name: runner.capture_stop(ticks) for runner, ticks in plan}}

    def on_start_receiving(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control ``start-receiving``: streams waiting for a start take packets from now on.

        Arguments: ``stream`` (default: every stream).  The reply's ``started``
        says, per stream, whether it was waiting (False: it was receiving already).
        """
        check_names(args, ("stream",))
        runners = pick_streams(self.runners, args.get("stream"))
        started = {runner.name: runner.receiver.start() for runner in runners}
        self.log.info("receiving started", streams=[n for n, s in started.items() if s])
        return {"started": started}

    def on_reset_counters(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control ``reset-counters``: counters start from zero again."""
        for runner in self.runners:
            runner.reset_counters()
        if self.publisher is not None:
            self.publisher.reset_counters()
        self.log.info("counters reset")
        return {"reset": [r.name for r in self.runners]}

    def on_reopen(self, args: dict[str, Any]) -> dict[str, Any]:
        """SIGHUP: finalise the sinks' current files and start new ones."""
        for runner in self.runners:
            runner.reopen()
        self.log.info("reopening sink files")
        return {"reopened": [r.name for r in self.runners]}

    # ------------------------------------------------------------------
    # statistics

    def heartbeat(self) -> dict[str, int]:
        """One counter per receive thread and flusher, by thread name (systemd watchdog).

        Each loop of the thread advances it.  A source that has ended stops
        its counter; it is left out, so a daemon draining after the end of a
        finite source is not reported as wedged.
        """
        return {name: count for r in self.runners for name, count in r.live_heartbeats().items()}

    def snapshot(self) -> dict[str, Any]:
        """Collect the daemon's state for statistics, status and Prometheus (thread-safe)."""
        streams = {r.name: r.snapshot() for r in self.runners}
        return {
            "state": self.state,
            "uptime": round(time.monotonic() - self.started, 3),
            "streams": streams,
            "buffers": {name: s["buffer"] for name, s in streams.items() if "buffer" in s},
            "sinks": {name: s["sinks"] for name, s in streams.items() if s.get("sinks")},
            "errors": {name: s["errors"] for name, s in streams.items() if s.get("errors")},
            **({"discarded": self.discarded} if self.discarded is not None else {}),
        }


def _summary(runner: StreamRunner) -> dict[str, Any]:
    """Return the figures of the last log line: what came, what was written, every loss."""
    out = _figures(runner, ("packets", "heaps", "chunks_completed",
                            "packets_dropped_socket_buffer", "file_bytes_truncated"))
    out.update(runner.pool_figures())
    if runner.buffer is not None:       # how long each sink spent writing (the disk's share)
        out["write_seconds"] = {name: round(account["write_seconds"], 3)
                                for name, account in runner.buffer.stats()["sinks"].items()}
    if runner.process is not None:      # [stream.process]: its calls, errors, time
        out["process"] = runner.process.counters()
    return out


def _figures(runner: StreamRunner, counters: tuple[str, ...]) -> dict[str, Any]:
    """Return a stream's `counters`, its buffer's records written and dropped, and losses.

    ``lost`` holds every loss counter (`LOSS_COUNTERS`) that is not zero since
    start, by name.
    """
    c = runner.raw_counters()
    out: dict[str, Any] = {k: c.get(k, 0) for k in counters}
    if runner.buffer is not None:
        b = runner.buffer.stats()
        out["records_flushed"] = b.get("records_flushed", 0)
        out["records_dropped"] = b.get("records_dropped", 0)
    out["lost"] = {k: int(c[k]) for k in LOSS_COUNTERS if c.get(k)}
    return out


class ReplayProgress:
    """Progress of finite sources (``file:``, ``pcap:``) for the interval log line.

    Each report gives, per source, the bytes read and in all, the percentage,
    the rate since the previous report and, from it, the seconds still to go.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.last: dict[tuple[str, str], tuple[float, int]] = {}

    def report(self, stream: str, progress: dict[str, tuple[int, int]]
               ) -> dict[str, dict[str, Any]]:
        """Return ``{uri: {done_bytes, total_bytes, percent[, rate_bytes_s, eta_s]}}``."""
        now = self.clock()
        out: dict[str, dict[str, Any]] = {}
        for uri, (done, total) in progress.items():
            entry: dict[str, Any] = {"done_bytes": done, "total_bytes": total,
                                     "percent": round(100 * done / total, 1)}
            before = self.last.get((stream, uri))
            if before is not None and now > before[0] and done >= before[1]:
                rate = (done - before[1]) / (now - before[0])
                entry["rate_bytes_s"] = round(rate)
                if rate > 0 and done < total:
                    entry["eta_s"] = round((total - done) / rate, 1)
            self.last[(stream, uri)] = (now, done)
            out[uri] = entry
        return out


def run(config: Config, duration: float | None = None, pidfile: PidFile | None = None) -> int:
    """``daqd run``: start, wait, drain; returns the exit status."""
    daemon = Daemon(config, pidfile)
    daemon.install_signal_handlers()
    try:
        daemon.start()
        daemon.wait(duration)
    except BaseException:
        daemon.stop_reason = "error"
        daemon.shutdown()
        raise
    return daemon.shutdown()
